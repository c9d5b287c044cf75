"""Where a teacher's problems come from: GSM8K, a JSONL file (both `dd_prompting.data`), or the built-in generator;
`make_problems` draws a run's training and held-out problems from its config.

A `Problem` is `dd_prompting.data.Problem`, the type the eval harness takes too. This module adds
what only distillation needs: problems from the generator, with its exact decompositions as their
reference steps. `Problem`, `gsm8k_problems`, `read_problems` and `write_problems` are imported
here from `dd_prompting.data` so that a stage finds every problem source here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dd_prompting.distill.teach.generator import GeneratorConfig, generate_problems
from dd_prompting.distill.teach.traces import Trace

from dd_prompting.config import ConfigError
from dd_prompting.data.problems import (
    Problem,
    gsm8k_problems,
    read_problems,
    write_problems,
)

if TYPE_CHECKING:
    from dd_prompting.distill.run.run_config import RunConfig

__all__ = [
    "make_problems",
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


def make_problems(config: RunConfig, *, skipped: list[str] | None = None):
    """The training and held-out problems of a run, checked to be disjoint. With the run's `skip_malformed`,
    a data file's malformed lines are skipped and listed in `skipped` as "file:line: reason"."""

    data = config.data

    def load(source: str, split: str, offset: int, limit: int | None):
        if source == "gsm8k":
            return gsm8k_problems(split, offset=offset, limit=limit)
        lines: list[tuple[int, str]] = []
        problems = read_problems(source, offset=offset, limit=limit, answer_type=data.answers,
                                 skip_malformed=config.skip_malformed, skipped=lines)
        if skipped is not None:
            skipped.extend(f"{source}:{line}: {reason}" for line, reason in lines)
        return problems

    if data.source == "generator":
        train = generated_problems(data.train_problems, seed=data.seed, config=data.generator, id_prefix="train")
    else:
        train = load(data.source, data.split, data.offset, data.train_problems)
    if data.resolved_eval_source == "generator":
        held_out = generated_problems(
            data.eval_problems, seed=data.seed + 1, config=data.eval_generator, exclude=train, id_prefix="heldout"
        )
    else:
        held_out = load(data.resolved_eval_source, data.eval_split, data.eval_offset, data.eval_problems)
    if not train or not held_out:
        raise ConfigError(f"data: got {len(train)} training and {len(held_out)} held-out problems; both must be > 0")
    overlap = {p.question for p in train} & {p.question for p in held_out}
    if overlap:
        raise ConfigError(
            f"data: {len(overlap)} held-out problems also appear among the training problems "
            f"(e.g. {next(iter(overlap))[:80]!r}); choose disjoint sources or offsets"
        )
    if config.teacher.kind == "socratic" and not any(p.subquestions for p in train):
        raise ConfigError(
            "teacher.kind = 'socratic' needs problems with annotated sub-questions: data.source = 'gsm8k' with "
            "data.split = 'test_socratic', or a JSONL file of Socratic solutions"
        )
    return train, held_out
