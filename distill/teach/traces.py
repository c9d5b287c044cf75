"""Teacher traces: one JSON line per (problem, sample), written as they arrive, filtered before training.

A trace records what a teacher did with one problem: its sub-questions, the answer sentence of
each step ("She makes 9 * 2 = 18 dollars."), the final answer, and whether that answer matches
the gold one. Failures are traces too (`error` says why), so a run's report can count them.

The file is an append log, read and written through `dd_prompting.data.jsonl`. Each line is
flushed as it is written, so a killed run loses at most the line being written; `TraceWriter`
(or `repair_partial_tail`) cuts such a half-written last line before a resumed run appends again.
When a key `(id, sample)` appears more than once (a failure retried by a later run), the last
record wins: `latest_traces` keeps only it.

Malformed lines are an error naming the file and line (`TraceFormatError`), never a silent
loss; `read_trace_file(..., skip_malformed=True)` skips them instead, logs each one and counts
them in `ReadResult.skipped`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dd_prompting.data.jsonl import (
    JsonlWriter,
    MalformedLineError,
    read_jsonl,
    repair_torn_tail,
)

__all__ = [
    "API_ERROR",
    "UNPARSABLE",
    "NO_DECOMPOSITION",
    "WRONG_ANSWER",
    "DUPLICATE_SAMPLE",
    "Trace",
    "TraceFormatError",
    "ReadResult",
    "TraceReport",
    "TraceWriter",
    "read_traces",
    "read_trace_file",
    "repair_partial_tail",
    "latest_traces",
    "filter_traces",
]

# Why a trace is not used for training. A failed trace stores "<kind>: <detail>" in `error`.
API_ERROR = "api_error"  # the teacher call failed after its retries (rate limit, server error, time-out...)
UNPARSABLE = "unparsable"  # the teacher replied, but its output could not be read as a decomposition
NO_DECOMPOSITION = "no_decomposition"  # the teacher answered without sub-questions (or their counts differ)
WRONG_ANSWER = "wrong_answer"  # parsed fine, but the final answer does not match the gold answer
DUPLICATE_SAMPLE = "duplicate_sample"  # another sample of the same problem gave the same steps
_FAILURE_KINDS = (API_ERROR, UNPARSABLE, NO_DECOMPOSITION)


@dataclass
class Trace:
    """What a teacher produced for one problem (one sample of it).

    `subanswers[i]` is the full answer sentence of `subquestions[i]`, with its equation;
    `answer` and `gold` are canonical number strings ("18", "-3.5"), or "[invalid]".
    """

    id: str
    question: str
    gold: str
    subquestions: list[str] = field(default_factory=list)
    subanswers: list[str] = field(default_factory=list)
    answer: str = "[invalid]"
    correct: bool = False
    teacher: str = ""
    usage: dict = field(default_factory=dict)
    cost: float | None = None
    error: str | None = None
    sample: int = 0

    @property
    def key(self) -> tuple[str, int]:
        """Identifies a trace in a file: the problem id and the sample index."""
        return (self.id, self.sample)

    @property
    def failure(self) -> str | None:
        """The kind of failure recorded in `error` (`API_ERROR`, `UNPARSABLE`, ...), or None."""
        if not self.error:
            return None
        kind = self.error.split(":", 1)[0].strip()
        return kind if kind in _FAILURE_KINDS else UNPARSABLE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        """Build a trace from a parsed JSON object, checking field names and types."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        missing = [name for name in ("id", "question", "gold") if name not in data]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        for name in ("id", "question", "gold", "answer", "teacher"):
            if name in data and not isinstance(data[name], str):
                raise ValueError(f"field {name!r} must be a string, got {type(data[name]).__name__}")
        for name in ("subquestions", "subanswers"):
            value = data.get(name, [])
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"field {name!r} must be a list of strings")
        if not isinstance(data.get("correct", False), bool):
            raise ValueError("field 'correct' must be true or false")
        if not isinstance(data.get("usage", {}), dict):
            raise ValueError("field 'usage' must be an object")
        cost = data.get("cost")
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float))):
            raise ValueError("field 'cost' must be a number or null")
        if data.get("error") is not None and not isinstance(data["error"], str):
            raise ValueError("field 'error' must be a string or null")
        sample = data.get("sample", 0)
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
            raise ValueError("field 'sample' must be a non-negative integer")
        return cls(**data)


class TraceFormatError(MalformedLineError):
    """A line of a trace file is not a valid trace."""

    what = "trace"


@dataclass
class ReadResult:
    """Traces read from a file, and the malformed lines that were skipped (`(line, reason)` pairs)."""

    traces: list[Trace]
    skipped: list[tuple[int, str]] = field(default_factory=list)


class TraceWriter(JsonlWriter):
    """Appends traces to a JSONL file, one line each, flushed as it is written (`dd_prompting.data.JsonlWriter`).

    A half-written last line left by a killed run is cut before the first trace is appended.
    Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, parse=Trace.from_dict)
        # The file exists once a writer is made, even if no trace comes: readers after a run expect it.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def write(self, trace: Trace) -> None:
        super().write(trace.to_dict())


def read_traces(path: str | os.PathLike, *, skip_malformed: bool = False) -> list[Trace]:
    """Read a trace file. A malformed line raises `TraceFormatError` (file and line), or is skipped and logged.

    Blank lines are ignored. A missing file is an error; an empty one gives no traces. To count
    skipped lines, use `read_trace_file`.
    """
    return read_trace_file(path, skip_malformed=skip_malformed).traces


def read_trace_file(path: str | os.PathLike, *, skip_malformed: bool = False) -> ReadResult:
    """Like `read_traces`, also returning the skipped malformed lines as `(line, reason)` pairs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Trace file not found: {path}")
    result = ReadResult(traces=[])
    try:
        lines = read_jsonl(path, parse=Trace.from_dict, skip_malformed=skip_malformed, skipped=result.skipped)
        result.traces.extend(trace for _, trace in lines)
    except MalformedLineError as err:
        raise TraceFormatError(err.path, err.line, err.reason) from None
    return result


def repair_partial_tail(path: str | os.PathLike) -> bool:
    """Cut a last line that a killed run left half-written (no final newline, not a valid trace).

    Returns True if something was cut. The cut record is not lost work: its problem has no trace
    in the file any more, so a resumed run asks the teacher again (from the cache, if it answered).
    """
    return repair_torn_tail(path, parse=Trace.from_dict)


def latest_traces(traces: Iterable[Trace]) -> list[Trace]:
    """One trace per `(id, sample)`: the last one written (a later run's retry replaces a failure)."""
    latest: dict[tuple[str, int], Trace] = {}
    for trace in traces:
        latest.pop(trace.key, None)  # re-insert so the order follows the last write
        latest[trace.key] = trace
    return list(latest.values())


@dataclass
class TraceReport:
    """How many traces were kept for training, why the others were dropped, and what the teacher cost."""

    total: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    problems: int = 0
    problems_kept: int = 0
    skipped_lines: int = 0
    skipped: list[str] = field(default_factory=list)
    replaced_records: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None
    teachers: list[str] = field(default_factory=list)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        """A small Markdown table, for `report.md`."""
        rows = [
            ("traces", self.total),
            ("kept for training", self.kept),
            *((f"dropped: {reason.replace('_', ' ')}", count) for reason, count in sorted(self.dropped.items())),
            ("problems", self.problems),
            ("problems with at least one kept trace", self.problems_kept),
        ]
        if self.skipped_lines:
            rows.append(("malformed lines skipped", self.skipped_lines))
            rows += [("skipped", f"`{entry[:200]}`") for entry in self.skipped[:20]]
        if self.replaced_records:
            rows.append(("older records replaced by a retry", self.replaced_records))
        if self.total_tokens or self.prompt_tokens or self.completion_tokens:
            rows.append(("teacher tokens (prompt / completion)", f"{self.prompt_tokens} / {self.completion_tokens}"))
        if self.cost is not None:
            rows.append(("teacher cost (USD)", f"{self.cost:.4f}"))
        lines = ["| traces | count |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in rows]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        reasons = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in sorted(self.dropped.items()))
        text = f"kept {self.kept}/{self.total} traces ({self.problems_kept}/{self.problems} problems)"
        if reasons:
            text += f"; dropped {reasons}"
        if self.total_tokens:
            text += f"; {self.total_tokens} teacher tokens"
        if self.cost is not None:
            text += f"; cost ${self.cost:.4f}"
        return text


def _drop_reason(trace: Trace, *, require_correct: bool) -> str | None:
    if trace.failure is not None:
        return trace.failure
    if not trace.subquestions or len(trace.subquestions) != len(trace.subanswers):
        return NO_DECOMPOSITION
    if require_correct and not trace.correct:
        return WRONG_ANSWER
    return None


def filter_traces(
    traces: Iterable[Trace],
    *,
    require_correct: bool = True,
    keep_duplicate_samples: bool = False,
    skipped_lines: int = 0,
    skipped: Sequence[str] = (),
) -> tuple[list[Trace], TraceReport]:
    """Keep the traces fit for training, and report why the others were dropped.

    Dropped: failures (`error` set: API errors, unparsable output), traces without a usable
    decomposition, wrong answers (unless `require_correct=False`), and samples of a problem whose
    steps repeat an earlier kept sample (unless `keep_duplicate_samples`). Records replaced by a
    later one for the same `(id, sample)` are not counted as traces. Tokens and cost are summed
    over every counted trace, kept or not: the teacher was paid for all of them.
    """
    traces = list(traces)
    latest = latest_traces(traces)
    report = TraceReport(total=len(latest), skipped_lines=max(skipped_lines, len(skipped)), skipped=list(skipped),
                         replaced_records=len(traces) - len(latest))
    dropped: Counter[str] = Counter()
    kept: list[Trace] = []
    seen_steps: set[tuple[str, tuple[str, ...], tuple[str, ...]]] = set()
    costs = [trace.cost for trace in latest if trace.cost is not None]
    report.cost = float(sum(costs)) if costs else None
    for trace in latest:
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = trace.usage.get(name, 0)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(report, name, getattr(report, name) + int(value))
        reason = _drop_reason(trace, require_correct=require_correct)
        if reason is None and not keep_duplicate_samples:
            steps = (trace.id, tuple(trace.subquestions), tuple(trace.subanswers))
            if steps in seen_steps:
                reason = DUPLICATE_SAMPLE
            seen_steps.add(steps)
        if reason is None:
            kept.append(trace)
        else:
            dropped[reason] += 1
    if not report.total_tokens:
        report.total_tokens = report.prompt_tokens + report.completion_tokens
    report.kept = len(kept)
    report.dropped = dict(dropped)
    report.problems = len({trace.id for trace in latest})
    report.problems_kept = len({trace.id for trace in kept})
    report.teachers = sorted({trace.teacher for trace in latest if trace.teacher})
    return kept, report
