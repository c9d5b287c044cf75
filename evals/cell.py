"""One (dataset, model, strategy) cell of a run, and how one problem goes through it into a result row.

A row never raises for what a model or an API does: an unparsable reply is scored wrong and marked
`unparsed` (or `no_number` / `no_option` when the answer field holds no number, yes/no or option; the
dataset's `AnswerType` reads and compares answers); an API error that outlasts the
retries is recorded in `error` and the example counts as failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import dspy

from dd_prompting.evals.config import DatasetConfig, ModelConfig, StrategyConfig
from dd_prompting.evals.datasets import Dataset, Problem
from dd_prompting.results import make_row, score_answer
from dd_prompting.models import CallCache, CallIdentity, CallLog, CallRecord, recording, redact

__all__ = ["Cell", "evaluate_example"]


@dataclass
class Cell:
    """One (dataset, model, strategy) combination and everything needed to run it."""

    dataset: Dataset
    dataset_config: DatasetConfig
    model: ModelConfig
    strategy: StrategyConfig
    program: dspy.Module | None
    prompts: list[dict[str, Any]]
    demo_source: str | None
    adapter_name: str
    fingerprint: str = ""
    lm: dspy.BaseLM | None = None
    adapter: dspy.Adapter | None = None
    memo: tuple[CallCache, CallIdentity] | None = None  # whole-prediction cache for programs without an LM

    @property
    def label(self) -> str:
        return f"{self.dataset.name} | {self.model.name} | {self.strategy.name}"

    @property
    def workers_cap(self) -> int | None:
        if self.model.kind == "student" and not self.model.servers:
            return 1  # a student pipeline decodes the problems it is given as one batch, one call at a time
        if self.model.kind == "student":
            return None  # served students: as many problems in flight as the run has threads
        return self.model.threads  # a local model's engine decodes concurrent calls together


_PREDICTION_FIELDS = ("answer", "reasoning", "subquestions", "subanswers", "fallback", "parse_failures")


def _run_program(cell: Cell, problem: Problem, log: CallLog) -> Any:
    """The program's prediction; a program with no LM (a student) is cached here as a whole."""
    if cell.lm is not None:
        with dspy.context(lm=cell.lm, adapter=cell.adapter):
            return cell.program(question=problem.question)
    memo = cell.memo
    key = memo[1].key(prompt=problem.question) if memo else None
    stored = memo[0].get(key) if memo else None
    if stored is not None:
        log.add(CallRecord(output="", prompt_tokens=0, completion_tokens=0, cost=0.0, latency_s=0.0, cached=True))
        return dspy.Prediction(**stored)
    started = time.perf_counter()
    prediction = cell.program(question=problem.question)
    log.add(CallRecord(output="", prompt_tokens=0, completion_tokens=0, cost=0.0,
                       latency_s=time.perf_counter() - started, cached=False))
    if memo:
        memo[0].put(key, {name: _field(prediction, name) for name in _PREDICTION_FIELDS})
    return prediction


def evaluate_example(cell: Cell, problem: Problem, *, secrets: list[str] = ()) -> dict[str, Any] | None:
    """Run one problem through a cell's program and score it; never raises for model or API faults.

    None when the program stopped at a call a batch will answer (a batch round): the problem has no row yet.
    """
    from dspy.utils.exceptions import AdapterParseError

    from dd_prompting.batches import is_pending

    prediction = None
    error = None
    unparsed = False
    started = time.perf_counter()
    with recording() as log:
        try:
            prediction = _run_program(cell, problem, log)
        except AdapterParseError:
            unparsed = True
        except Exception as err:  # API errors after retries, time-outs, malformed replies: recorded, not raised
            if is_pending(err):
                return None
            error = f"{type(err).__name__}: {err}"
    latency = time.perf_counter() - started
    if error is None and log.errors:
        # A call failed for good but the program carried on without it; the row still failed.
        error = log.errors[-1]

    answer_text = _field(prediction, "answer")
    stage_failures = list(_field(prediction, "parse_failures") or [])
    if prediction is not None and answer_text is None and stage_failures:
        unparsed = True
    return make_row(
        cell=cell.fingerprint,
        dataset=cell.dataset.name,
        model=cell.model.name,
        strategy=cell.strategy.name,
        example_id=problem.id,
        question=problem.question,
        gold=problem.gold,
        **score_answer(cell.dataset.answer_type, answer_text, problem.gold, unparsed=unparsed, failed=bool(error)),
        subquestions=_field(prediction, "subquestions"),
        subanswers=_field(prediction, "subanswers"),
        reasoning=_field(prediction, "reasoning"),
        fallback=_field(prediction, "fallback"),
        stage_parse_failures=stage_failures,
        raw_outputs=[redact(call.output, secrets) for call in log.calls],
        calls=len(log.calls),
        cached_calls=sum(call.cached for call in log.calls),
        retries=log.retries,
        prompt_tokens=log.prompt_tokens,
        completion_tokens=log.completion_tokens,
        cost=log.cost,
        new_cost=log.new_cost,
        latency_s=round(latency, 4),
        error=redact(error, secrets)[:2000] if error else None,
    )


def _field(prediction: Any, name: str) -> Any:
    if prediction is None:
        return None
    value = prediction.get(name) if hasattr(prediction, "get") else getattr(prediction, name, None)
    if isinstance(value, tuple):
        value = list(value)
    return value


