"""Compare prompting strategies (direct, chain of thought, decomposition, distilled students) across
models and datasets: `python -m dd_prompting.evals run CONFIG`.

The Python API mirrors the command line:

    from dd_prompting.evals import Harness, load_config
    summary = Harness(load_config("examples/evals_gsm8k.toml", overrides={"limit": 20})).run()
"""

from dd_prompting.evals.config import DatasetConfig, EvalConfig, ModelConfig, StrategyConfig, load_config
from dd_prompting.evals.harness import Harness, RunSummary
from dd_prompting.evals.report import write_report

__all__ = [
    "EvalConfig",
    "ModelConfig",
    "StrategyConfig",
    "DatasetConfig",
    "load_config",
    "Harness",
    "RunSummary",
    "write_report",
]
