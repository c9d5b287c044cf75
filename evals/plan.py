"""What a config runs: its datasets loaded, each strategy's program built, models paired with strategies into
cells, and each cell's fingerprint (what its rows are keyed by, so a rerun knows what it has done)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from dd_prompting.data import Problem
from dd_prompting.evals.cell import Cell
from dd_prompting.evals.config import EvalConfig, ModelConfig, StrategyConfig
from dd_prompting.evals.datasets import Dataset, load_dataset, load_demo_pool
from dd_prompting.evals.strategies import build_program, choose_demos, describe_program, program_fingerprint
from dd_prompting.models.config import BATCH_FIELDS, SERVING_FIELDS

__all__ = ["Plan", "plan_cells", "cell_fingerprint", "all_models"]

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    """The cells of a run, the datasets they read, and the malformed input lines left out (in the order met)."""

    cells: list[Cell]
    datasets: dict[str, Dataset] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def all_models(config: EvalConfig) -> list[ModelConfig]:
    """The models that solve, and the hybrid decomposers (which only_models may have left out of them)."""
    names = {model.name for model in config.models}
    return [*config.models, *(model for name, model in config.decomposers.items() if name not in names)]


def plan_cells(config: EvalConfig) -> Plan:
    """Every runnable (dataset, model, strategy): students pair only with the student strategy."""
    strategies = list(config.strategies)
    if any(m.kind == "student" for m in config.models) and not any(s.kind == "student" for s in strategies):
        strategies.append(StrategyConfig(kind="student"))
    plan = Plan(cells=[])
    skipped: dict[str, None] = {}
    for dataset_config in config.datasets:
        dataset = load_dataset(dataset_config, limit=config.limit, seed=config.seed,
                               skip_malformed=config.skip_malformed)
        plan.datasets[dataset.name] = dataset
        skipped.update(dict.fromkeys(dataset.skipped))
        evaluated = {problem.id for problem in dataset.problems}
        for strategy in strategies:
            program, prompts, demo_source = None, [], None
            if strategy.kind != "student":
                demos: list[Problem] = []
                if isinstance(strategy.demos, int) and strategy.demos > 0:
                    pool_skipped: list[str] = []
                    pool, demo_source = load_demo_pool(dataset_config, socratic=strategy.kind == "decomposed",
                                                       exclude=evaluated, answer_type=dataset.answer_type,
                                                       skip_malformed=config.skip_malformed, skipped=pool_skipped)
                    skipped.update(dict.fromkeys(pool_skipped))
                    demos = choose_demos(pool, strategy.demos, seed=config.seed)
                elif strategy.demos == "builtin":
                    demo_source = "dd_prompting.demos.WORKED_EXAMPLES"
                program = build_program(strategy, demos, dataset.answer_type)
                prompts = describe_program(program)
            for model in config.models:
                if (model.kind == "student") != (strategy.kind == "student"):
                    continue
                cell = Cell(dataset=dataset, dataset_config=dataset_config, model=model, strategy=strategy,
                            program=program, prompts=prompts, demo_source=demo_source,
                            adapter_name=model.default_adapter)
                cell.fingerprint = cell_fingerprint(config, cell)
                plan.cells.append(cell)
    plan.skipped = list(skipped)
    unused = [s.name for s in strategies if s.kind == "student"] if not any(
        m.kind == "student" for m in config.models) else []
    if unused:
        logger.warning("Strategies %s run only on student models (kind = 'student'); none is configured.", unused)
    if not plan.cells:
        raise ValueError("No (dataset, model, strategy) combination to run: student models run only the "
                         "'student' strategy and other models only the other strategies.")
    return plan


def cell_fingerprint(config: EvalConfig, cell: Cell) -> str:
    # The name and the endpoint are part of a cell: two servers of one model string are two rows.
    model = _public_model(cell.model)
    dataset = {key: value for key, value in asdict(cell.dataset_config).items() if key not in ("name",)}
    for key, default in (("answer_type", "number"), ("choices", None)):  # keep earlier runs' fingerprints
        if dataset.get(key) == default:
            del dataset[key]
    dataset["sha256"] = cell.dataset.sha256
    strategy = program_fingerprint(cell.prompts) if cell.program is not None else asdict(cell.strategy)
    identity = {"model": model, "dataset": dataset, "strategy": strategy, "adapter": cell.adapter_name}
    if cell.strategy.decomposer is not None:
        identity["decomposer"] = _public_model(config.decomposers[cell.strategy.decomposer])
    return _hash(identity)


def _public_model(model: ModelConfig) -> dict[str, Any]:
    # What makes a model's replies what they are; not its concurrency, key variable, prices, retries, nor whether
    # its calls went through a batch API (the same requests get the same replies).
    return {key: value for key, value in model.to_public_dict().items()
            if key not in ("threads", "api_key_env", "input_cost_per_million", "output_cost_per_million",
                           "retries", "retry_backoff", "timeout", *SERVING_FIELDS, *BATCH_FIELDS)}


def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
