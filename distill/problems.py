"""Where a teacher's problems come from: GSM8K, a JSONL file (both `dd_prompting.data`), or the built-in generator.

A `Problem` is `dd_prompting.data.Problem`, the type the eval harness takes too. This module adds
what only distillation needs: problems from the generator, with its exact decompositions as their
reference steps. `Problem`, `gsm8k_problems`, `read_problems` and `write_problems` are imported
here from `dd_prompting.data` so that `from dd_prompting.distill.problems import ...` keeps working.
"""

from __future__ import annotations

from dd_prompting.data.problems import Problem, gsm8k_problems, read_problems, write_problems
from dd_prompting.distill.generator import GeneratorConfig, generate_problems
from dd_prompting.distill.traces import Trace

__all__ = [
    "Problem",
    "generated_problems",
    "gsm8k_problems",
    "read_problems",
    "write_problems",
    "problems_from_traces",
]


def problems_from_traces(traces: list[Trace]) -> list[Problem]:
    """Problems carrying the traces' decompositions as their reference (for the generator's output)."""
    return [
        Problem(id=trace.id, question=trace.question, gold=trace.gold, subquestions=trace.subquestions,
                steps=trace.subanswers)
        for trace in traces
    ]


def generated_problems(
    n: int, *, seed: int, config: GeneratorConfig | None = None, exclude: list[Problem] = (), id_prefix: str = "gen"
) -> list[Problem]:
    """`n` generated problems with their exact decompositions, none sharing arithmetic with `exclude`."""
    excluded = [
        Trace(p.id, p.question, p.gold, list(p.subquestions or ()), list(p.steps or ())) for p in exclude
    ]
    traces = generate_problems(n, seed=seed, config=config, exclude=excluded, id_prefix=id_prefix)
    return problems_from_traces(traces)
