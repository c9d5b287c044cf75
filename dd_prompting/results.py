"""Result rows and what is computed from them: accuracy with intervals per cell, paired tests between cells.

One row per (dataset, model, strategy, example), in one schema for every producer: `dd-evals` writes
them as it evaluates, `dd-distill` as it scores its students on the held-out problems, so
`dd-evals report DIR` renders either. `score_answer` scores an answer for both (the fields a row's accuracy
comes from), `make_row` builds a row (checking its fields); `summarize`
gives each (dataset, model, strategy) its accuracy with 95% Wilson intervals; `paired_tests` runs an
exact McNemar test between every two strategies of one model on the problems both finished.
"""

from __future__ import annotations

import datetime
import itertools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from dd_prompting.stats import mcnemar_exact, paired_counts, wilson_interval

__all__ = ["ROW_FIELDS", "score_answer", "make_row", "CellSummary", "PairedTest", "summarize", "paired_tests"]

# The row schema. `cell` identifies the (dataset, model, strategy) configuration; `correct` uses flexible
# extraction and `correct_strict` strict extraction; `new_cost` is what this row spent (uncached calls).
ROW_FIELDS = {
    "cell": None, "dataset": None, "model": None, "strategy": None, "example_id": None, "question": None,
    "gold": None, "prediction": None, "prediction_strict": None, "answer_text": None, "correct": False,
    "correct_strict": False, "parse_status": "ok", "subquestions": None, "subanswers": None, "reasoning": None,
    "fallback": None, "stage_parse_failures": [], "raw_outputs": [], "calls": 0, "cached_calls": 0, "retries": 0,
    "prompt_tokens": 0, "completion_tokens": 0, "cost": None, "new_cost": 0.0, "latency_s": 0.0, "error": None,
    "timestamp": None,
}
_REQUIRED = ("cell", "dataset", "model", "strategy", "example_id", "question", "gold")
PARSE_FAILURES = ("unparsed", "no_number", "no_option")  # no_option: no yes/no or option in the answer


def score_answer(answers: Any, answer_text: Any, gold: Any, *, unparsed: bool = False,
                 failed: bool = False) -> dict[str, Any]:
    """The fields of a row that score its answer: the flexible and strict readings of `answer_text` by the
    dataset's `AnswerType`, whether each matches `gold`, and the parse status (an `unparsed` reply reads as
    nothing; a `failed` row, one that ended in an error, is wrong whatever it holds)."""
    from dd_prompting.answers import INVALID

    flexible = answers.read(answer_text) if not unparsed else INVALID
    strict = answers.read(answer_text, strict=True) if not unparsed else INVALID
    if failed:
        status = "error"
    elif unparsed:
        status = "unparsed"
    elif flexible == INVALID:
        status = answers.no_answer_status
    else:
        status = "ok"
    return {
        "prediction": flexible, "prediction_strict": strict,
        "answer_text": None if answer_text is None else str(answer_text),
        "correct": not failed and answers.matches(flexible, gold),
        "correct_strict": not failed and answers.matches(strict, gold),
        "parse_status": status,
    }


def make_row(**fields: Any) -> dict[str, Any]:
    """A result row: the given fields over the schema's defaults; unknown or missing required fields are errors."""
    unknown = sorted(set(fields) - set(ROW_FIELDS))
    if unknown:
        raise ValueError(f"make_row: unknown field(s) {unknown}; the row schema is {list(ROW_FIELDS)}")
    missing = [name for name in _REQUIRED if fields.get(name) is None]
    if missing:
        raise ValueError(f"make_row: missing field(s) {missing}")
    row = {**ROW_FIELDS, **fields}
    if row["timestamp"] is None:
        row["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return row


@dataclass
class CellSummary:
    dataset: str
    model: str
    strategy: str
    n: int
    planned: int | None
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    accuracy_strict: float
    accuracy_strict_low: float
    accuracy_strict_high: float
    parse_failure_rate: float
    failed: int
    calls_per_problem: float
    prompt_tokens_per_problem: float
    completion_tokens_per_problem: float
    cost_per_problem: float | None
    total_cost: float | None
    mean_latency_s: float
    wall_s: float | None


@dataclass
class PairedTest:
    dataset: str
    model: str
    strategy_a: str
    strategy_b: str
    n: int
    accuracy_a: float
    accuracy_b: float
    only_a: int
    only_b: int
    p_value: float


def summarize(rows: list[dict[str, Any]], run: dict[str, Any] | None = None) -> list[CellSummary]:
    """One summary per (dataset, model, strategy). Failed examples (API errors) count as wrong."""
    cells_meta = (run or {}).get("cells", {})
    planned = {name: info.get("evaluated") for name, info in (run or {}).get("datasets", {}).items()}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["cell"]].append(row)
    summaries = []
    for fingerprint, group in groups.items():
        n = len(group)
        right = sum(bool(row["correct"]) for row in group)
        right_strict = sum(bool(row["correct_strict"]) for row in group)
        low, high = wilson_interval(right, n)
        strict_low, strict_high = wilson_interval(right_strict, n)
        costs = [row.get("cost") for row in group]
        total_cost = None if any(cost is None for cost in costs) else float(sum(costs))
        first = group[0]
        summaries.append(CellSummary(
            dataset=first["dataset"], model=first["model"], strategy=first["strategy"], n=n,
            planned=planned.get(first["dataset"]),
            accuracy=right / n, accuracy_low=low, accuracy_high=high,
            accuracy_strict=right_strict / n, accuracy_strict_low=strict_low, accuracy_strict_high=strict_high,
            parse_failure_rate=sum(row["parse_status"] in PARSE_FAILURES for row in group) / n,
            failed=sum(bool(row.get("error")) for row in group),
            calls_per_problem=sum(row["calls"] for row in group) / n,
            prompt_tokens_per_problem=sum(row["prompt_tokens"] for row in group) / n,
            completion_tokens_per_problem=sum(row["completion_tokens"] for row in group) / n,
            cost_per_problem=None if total_cost is None else total_cost / n,
            total_cost=total_cost,
            mean_latency_s=sum(row["latency_s"] for row in group) / n,
            wall_s=cells_meta.get(fingerprint, {}).get("wall_s"),
        ))
    summaries.sort(key=lambda s: (s.dataset, s.model, s.strategy))
    return summaries


def paired_tests(rows: list[dict[str, Any]]) -> list[PairedTest]:
    """Exact McNemar tests between every two strategies of one model on one dataset.

    Only problems both strategies finished without an API error are paired.
    """
    outcomes: dict[tuple[str, str], dict[str, dict[str, bool]]] = defaultdict(dict)
    for row in rows:
        if row.get("error"):
            continue
        outcomes[(row["dataset"], row["model"])].setdefault(row["strategy"], {})[row["example_id"]] = bool(
            row["correct"])
    tests = []
    for (dataset, model), by_strategy in sorted(outcomes.items()):
        for a, b in itertools.combinations(sorted(by_strategy), 2):
            both, only_a, only_b, neither = paired_counts(by_strategy[a], by_strategy[b])
            n = both + only_a + only_b + neither
            if n == 0:
                continue
            tests.append(PairedTest(
                dataset=dataset, model=model, strategy_a=a, strategy_b=b, n=n,
                accuracy_a=(both + only_a) / n, accuracy_b=(both + only_b) / n,
                only_a=only_a, only_b=only_b, p_value=mcnemar_exact(only_a, only_b),
            ))
    return tests
