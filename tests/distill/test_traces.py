import json

import pytest

from dd_prompting.distill.teach.traces import (
    API_ERROR,
    DUPLICATE_SAMPLE,
    NO_DECOMPOSITION,
    UNPARSABLE,
    WRONG_ANSWER,
    Trace,
    TraceFormatError,
    TraceWriter,
    filter_traces,
    latest_traces,
    read_trace_file,
    read_traces,
    repair_partial_tail,
)


def _trace(id="p1", *, sample=0, correct=True, error=None, steps=("She has 2 + 3 = 5 cats.",), usage=None, cost=None):
    return Trace(
        id=id,
        question="Ann has 2 cats and gets 3 more. How many cats?",
        gold="5",
        subquestions=["How many cats?"] * len(steps),
        subanswers=list(steps),
        answer="5" if correct else "6",
        correct=correct,
        teacher="test",
        usage=usage or {},
        cost=cost,
        error=error,
        sample=sample,
    )


def _write(path, traces):
    with TraceWriter(path) as writer:
        for trace in traces:
            writer.write(trace)
    return writer.written


def test_write_then_read_round_trips_every_field(tmp_path):
    traces = [_trace("a", usage={"prompt_tokens": 10, "completion_tokens": 2}, cost=0.5), _trace("b", sample=1)]
    path = tmp_path / "traces.jsonl"
    assert _write(path, traces) == 2
    assert read_traces(path) == traces


def test_append_adds_one_complete_line_per_trace(tmp_path):
    path = tmp_path / "traces.jsonl"
    _write(path, [_trace("a")])
    _write(path, [_trace("b")])  # a second writer appends, as a resumed run does
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b"]
    assert path.read_text().endswith("\n")


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"id": "x", "question": "q"}', "missing field"),
        ('{"id": "x", "question": "q", "gold": "1", "subquestions": "not a list"}', "subquestions"),
        ('{"id": "x", "question": "q", "gold": "1", "colour": "red"}', "unknown field"),
        ('{"id": "x", "question": "q", "gold": "1", "correct": "yes"}', "correct"),
    ],
)
def test_malformed_line_is_an_error_naming_file_and_line(tmp_path, line, reason):
    path = tmp_path / "traces.jsonl"
    _write(path, [_trace("a")])
    with open(path, "a") as handle:
        handle.write(line + "\n")
    with pytest.raises(TraceFormatError, match=rf"traces.jsonl:2: not a valid trace: .*{reason}"):
        read_traces(path)


def test_malformed_lines_can_be_skipped_and_are_counted(tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text(json.dumps(_trace("a").to_dict()) + "\n{broken\n\n" + json.dumps(_trace("b").to_dict()) + "\n")
    result = read_trace_file(path, skip_malformed=True)
    assert [trace.id for trace in result.traces] == ["a", "b"]
    assert [line for line, _ in result.skipped] == [2]


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_traces(tmp_path / "nope.jsonl")


def test_half_written_last_line_is_cut_and_complete_lines_kept(tmp_path):
    path = tmp_path / "traces.jsonl"
    _write(path, [_trace("a"), _trace("b")])
    with open(path, "a") as handle:
        handle.write(json.dumps(_trace("c").to_dict())[:40])  # killed mid-write: no newline
    with pytest.raises(TraceFormatError, match="cut short"):
        read_traces(path)
    assert repair_partial_tail(path) is True
    assert [trace.id for trace in read_traces(path)] == ["a", "b"]
    assert repair_partial_tail(path) is False


def test_a_writer_cuts_a_half_written_last_line_before_appending(tmp_path):
    path = tmp_path / "traces.jsonl"
    _write(path, [_trace("a")])
    with open(path, "a") as handle:
        handle.write(json.dumps(_trace("b").to_dict())[:40])  # killed mid-write
    _write(path, [_trace("c")])
    assert [trace.id for trace in read_traces(path)] == ["a", "c"]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text(json.dumps(_trace("a").to_dict()))
    assert repair_partial_tail(path) is False
    assert [trace.id for trace in read_traces(path)] == ["a"]
    _write(path, [_trace("b")])
    assert [trace.id for trace in read_traces(path)] == ["a", "b"]


def test_latest_record_of_a_key_wins():
    failed = _trace("a", error=f"{API_ERROR}: LMRateLimitError: slow down", correct=False)
    retried = _trace("a")
    traces = latest_traces([failed, _trace("b"), retried, _trace("a", sample=1)])
    assert [(trace.id, trace.sample, trace.error) for trace in traces] == [("b", 0, None), ("a", 0, None), ("a", 1, None)]


def test_filter_counts_each_reason_and_sums_usage_and_cost():
    traces = [
        _trace("ok1", usage={"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}, cost=0.25),
        _trace("ok2", usage={"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}, cost=0.125),
        _trace("wrong", correct=False, cost=0.125),
        _trace("api", error=f"{API_ERROR}: LMServerError: boom", correct=False),
        _trace("garbled", error=f"{UNPARSABLE}: no number in the final answer", correct=False),
        _trace("flat", steps=(), correct=True),
        _trace("ok1", sample=1),  # same steps as sample 0 of ok1
    ]
    kept, report = filter_traces(traces)
    assert [trace.id for trace in kept] == ["ok1", "ok2"]
    assert report.dropped == {WRONG_ANSWER: 1, API_ERROR: 1, UNPARSABLE: 1, NO_DECOMPOSITION: 1, DUPLICATE_SAMPLE: 1}
    assert (report.total, report.kept, report.problems, report.problems_kept) == (7, 2, 6, 2)
    assert (report.prompt_tokens, report.completion_tokens, report.total_tokens) == (150, 25, 175)
    assert report.cost == pytest.approx(0.5)
    assert "dropped: wrong answer | 1" in report.to_markdown()


def test_filter_can_keep_wrong_answers_and_duplicate_samples():
    traces = [_trace("a"), _trace("a", sample=1), _trace("b", correct=False)]
    kept, report = filter_traces(traces, require_correct=False, keep_duplicate_samples=True)
    assert len(kept) == 3 and report.dropped == {}


def test_filter_counts_a_retried_failure_once():
    failed = _trace("a", error=f"{API_ERROR}: LMTimeoutError: late", correct=False)
    kept, report = filter_traces([failed, _trace("b"), _trace("a")])
    assert report.total == 2 and report.kept == 2 and report.replaced_records == 1 and report.dropped == {}


def test_report_has_no_cost_when_the_teacher_reports_none():
    _, report = filter_traces([_trace("a")])
    assert report.cost is None and "cost" not in report.to_markdown()
