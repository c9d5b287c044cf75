import json
import os
import re

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy
import pytest

from dd_prompting.data import Problem, gsm8k_problems
from dd_prompting.testing import OpenAICompatibleServer, Reply, last_user_text
from dd_prompting.distill.teach.problem_sources import generated_problems
from dd_prompting.distill.teach.teachers import DSPyTeacher, GeneratorTeacher, SocraticTeacher, collect_traces
from dd_prompting.distill.teach.traces import (
    API_ERROR,
    DUPLICATE_SAMPLE,
    UNPARSABLE,
    WRONG_ANSWER,
    filter_traces,
    read_traces,
)

SECRET = "sk-test-secret-0123456789"


@pytest.fixture(scope="module")
def problems():
    return generated_problems(6, seed=0)


def _field(text, name):
    """The value of one input field in a ChatAdapter prompt (values here never hold blank lines)."""
    _, marker, rest = text.rpartition(f"[[ ## {name} ## ]]\n")
    return rest.split("\n\n")[0].strip() if marker else None


def _output_fields(request):
    system = request["messages"][0]["content"]
    return re.findall(r"`(\w+)`", system.split("Your output fields are:")[1].split("All interactions")[0])


class ScriptedTeacher:
    """Answers DecomposedSolver's ChatAdapter prompts with the reference decomposition of each problem."""

    def __init__(self, problems, *, wrong=(), garbled=(), failing=(), variants=None):
        self.by_question = {p.question: p for p in problems}
        self.wrong, self.garbled, self.failing = set(wrong), set(garbled), dict(failing)
        self.variants = variants or {}

    def __call__(self, request):
        text = last_user_text(request)
        problem = self.by_question[_field(text, "question")]
        if problem.id in self.failing:
            reply = self.failing[problem.id]
            if isinstance(reply, list):  # fail a few times, then answer
                if reply:
                    return reply.pop(0)
            else:
                return reply
        outputs = _output_fields(request)
        if outputs == ["subquestions"]:
            return f"[[ ## subquestions ## ]]\n{json.dumps(list(problem.subquestions))}\n\n[[ ## completed ## ]]"
        if problem.id in self.garbled:
            return "I think the answer is probably something."
        steps = list(problem.steps)
        if problem.id in self.variants:
            steps = [steps[0] + self.variants[problem.id].pop(0)] + steps[1:]
        answer = str(int(problem.gold) + 1) if problem.id in self.wrong else problem.gold
        if "subanswer" in outputs:  # iterative mode: one step per call
            index = list(problem.subquestions).index(_field(text, "subquestion"))
            reply = f"[[ ## subanswer ## ]]\n{steps[index]}\n\n"
            if "answer" in outputs:
                reply += f"[[ ## answer ## ]]\n{answer}\n\n"
            return reply + "[[ ## completed ## ]]"
        return (
            f"[[ ## subanswers ## ]]\n{json.dumps(steps)}\n\n[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"
        )


def _lm(server, engine="auto", **kwargs):
    # dspy's own cache is off so that only the teacher's disk cache can save a call.
    return dspy.LM(
        "openai/gpt-4o-mini", api_base=server.base_url, api_key=SECRET, cache=False, engine=engine, num_retries=0,
        **kwargs,
    )


def _teacher(server, tmp_path, *, engine="auto", cache="cache", lm_kwargs=None, **kwargs):
    kwargs.setdefault("threads", 4)
    return DSPyTeacher(
        lm=_lm(server, engine, **(lm_kwargs or {})), cache_dir=tmp_path / cache if cache else None,
        progress=False, retry_backoff=0.0, **kwargs,
    )


def _questions_asked(server):
    return [_field(last_user_text(request), "question") for request in server.requests]


@pytest.mark.parametrize("engine", ["auto", "litellm"])
@pytest.mark.parametrize("mode", ["joint", "iterative"])
def test_dspy_teacher_over_real_http_writes_correct_traces(tmp_path, problems, engine, mode):
    with OpenAICompatibleServer(ScriptedTeacher(problems)) as server:
        teacher = _teacher(server, tmp_path, engine=engine, mode=mode)
        traces = collect_traces(teacher, problems, tmp_path / "traces.jsonl")
    expected_calls = sum(1 + (len(p.subquestions) if mode == "iterative" else 1) for p in problems)
    assert server.call_count == expected_calls
    assert sorted(t.id for t in traces) == sorted(p.id for p in problems)
    by_id = {p.id: p for p in problems}
    for trace in traces:
        assert trace.error is None and trace.correct
        assert trace.subquestions == list(by_id[trace.id].subquestions)
        assert trace.subanswers == list(by_id[trace.id].steps)
        assert trace.usage["prompt_tokens"] > 0 and trace.usage["completion_tokens"] > 0
        assert trace.cost is not None and trace.cost > 0  # gpt-4o-mini is in litellm's local price map
        assert trace.teacher == f"dspy:openai/gpt-4o-mini:{mode}"
    _, report = filter_traces(traces)
    assert report.kept == len(problems) and report.total_tokens == sum(t.usage["total_tokens"] for t in traces)


def test_no_api_key_in_traces_cache_or_logs(tmp_path, problems, caplog):
    failing = {problems[0].id: Reply(f"Incorrect API key provided: {SECRET}", status=401)}
    with OpenAICompatibleServer(ScriptedTeacher(problems, failing=failing)) as server:
        teacher = _teacher(server, tmp_path)
        traces = collect_traces(teacher, problems, tmp_path / "traces.jsonl")
        teacher.close()
    assert traces and any(t.failure == API_ERROR for t in traces)
    files = [tmp_path / "traces.jsonl", *(tmp_path / "cache").rglob("*")]
    for path in files:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text


def test_cache_hit_makes_no_second_http_call(tmp_path, problems):
    with OpenAICompatibleServer(ScriptedTeacher(problems)) as server:
        first = collect_traces(_teacher(server, tmp_path), problems, tmp_path / "a.jsonl")
        calls = server.call_count
        # A new run (new trace file) with the same cache asks the server nothing.
        second = collect_traces(_teacher(server, tmp_path), problems, tmp_path / "b.jsonl")
        assert server.call_count == calls
        # Without that cache, or at another temperature, the server is asked again.
        collect_traces(_teacher(server, tmp_path, cache="other"), problems[:1], tmp_path / "c.jsonl")
        assert server.call_count == calls + 2
        collect_traces(_teacher(server, tmp_path, temperature=0.5), problems[:1], tmp_path / "d.jsonl")
        assert server.call_count == calls + 4
    key = lambda t: (t.id, t.subanswers, t.answer, t.usage["prompt_tokens"], t.usage["completion_tokens"])  # noqa: E731
    assert sorted(map(key, first)) == sorted(map(key, second))
    assert all(t.usage["cached_calls"] == 0 for t in first) and all(t.usage["cached_calls"] == 2 for t in second)


@pytest.mark.parametrize("engine", ["auto", "litellm"])
@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried_with_backoff(tmp_path, problems, status, engine):
    flaky = problems[0].id
    failing = {flaky: [Reply("try later", status=status, headers={"Retry-After": "0"}) for _ in range(2)]}
    with OpenAICompatibleServer(ScriptedTeacher(problems, failing=failing)) as server:
        teacher = _teacher(server, tmp_path, engine=engine, retries=3)
        traces = collect_traces(teacher, problems, tmp_path / "t.jsonl")
        assert server.call_count == 2 * len(problems) + 2
    assert all(t.correct and t.error is None for t in traces)


def test_persistent_failure_is_recorded_counted_and_retried_on_resume(tmp_path, problems):
    broken = problems[1].id
    path = tmp_path / "t.jsonl"
    failing = {broken: Reply("overloaded", status=500)}
    with OpenAICompatibleServer(ScriptedTeacher(problems, failing=failing)) as server:
        traces = collect_traces(_teacher(server, tmp_path, retries=2), problems, path)
        assert _questions_asked(server).count(problems[1].question) == 3  # first try + 2 retries
    failed = [t for t in traces if t.id == broken]
    assert len(failed) == 1 and failed[0].failure == API_ERROR and "LMServerError" in failed[0].error
    kept, report = filter_traces(traces)
    assert report.dropped == {API_ERROR: 1} and report.kept == len(problems) - 1

    # The failure was not cached: a rerun asks again, only for that problem, and the new record wins.
    with OpenAICompatibleServer(ScriptedTeacher(problems)) as server:
        traces = collect_traces(_teacher(server, tmp_path), problems, path)
        assert set(_questions_asked(server)) == {problems[1].question}
    assert len(traces) == len(problems) and all(t.correct for t in traces)
    assert len(read_traces(path)) == len(problems) + 1  # the old failure stays in the log, replaced


def test_timeouts_become_failed_traces_and_the_run_continues(tmp_path, problems):
    slow = problems[2].id
    failing = {slow: Reply("[[ ## subquestions ## ]]\n[]", delay=3.0)}
    with OpenAICompatibleServer(ScriptedTeacher(problems, failing=failing)) as server:
        teacher = _teacher(server, tmp_path, retries=1, lm_kwargs={"timeout": 0.3})
        traces = collect_traces(teacher, problems, tmp_path / "t.jsonl")
    by_id = {t.id: t for t in traces}
    assert by_id[slow].failure == API_ERROR and "Timeout" in by_id[slow].error
    assert sum(t.correct for t in traces) == len(problems) - 1


def test_unparsable_output_and_wrong_answers_are_dropped_and_counted(tmp_path, problems):
    responder = ScriptedTeacher(problems, wrong=[problems[0].id], garbled=[problems[1].id])
    with OpenAICompatibleServer(responder) as server:
        traces = collect_traces(_teacher(server, tmp_path), problems, tmp_path / "t.jsonl")
    by_id = {t.id: t for t in traces}
    assert by_id[problems[1].id].failure == UNPARSABLE
    assert not by_id[problems[0].id].correct and by_id[problems[0].id].error is None
    _, report = filter_traces(traces)
    assert report.dropped == {WRONG_ANSWER: 1, UNPARSABLE: 1}
    _, lenient = filter_traces(traces, require_correct=False)
    assert lenient.dropped == {UNPARSABLE: 1}


def test_several_samples_keep_the_distinct_correct_ones(tmp_path, problems):
    target = problems[0]
    responder = ScriptedTeacher([target], variants={target.id: [" (first way)", " (second way)", " (first way)"]})
    with OpenAICompatibleServer(responder) as server:
        teacher = _teacher(server, tmp_path, samples=3, temperature=0.8, threads=1)
        traces = collect_traces(teacher, [target], tmp_path / "t.jsonl")
        assert server.call_count == 6
        assert all(request["temperature"] == 0.8 for request in server.requests)
    assert sorted(t.sample for t in traces) == [0, 1, 2]
    kept, report = filter_traces(traces)
    assert len(kept) == 2 and report.dropped == {DUPLICATE_SAMPLE: 1}


def test_samples_need_a_temperature(tmp_path):
    with pytest.raises(ValueError, match="temperature"):
        DSPyTeacher(lm=dspy.LM("openai/x", api_key="k"), samples=3)


class _KilledAfter(DSPyTeacher):
    """Stands for a run killed after `kill_after` traces reached the file."""

    kill_after = 3

    def traces(self, problems):
        for index, trace in enumerate(super().traces(problems)):
            if index == self.kill_after:
                raise KeyboardInterrupt
            yield trace


def test_killed_run_resumes_without_losing_or_duplicating_traces(tmp_path, problems):
    path = tmp_path / "t.jsonl"
    with OpenAICompatibleServer(ScriptedTeacher(problems)) as server:
        killed = _KilledAfter(lm=_lm(server), cache_dir=tmp_path / "cache", threads=1, progress=False)
        with pytest.raises(KeyboardInterrupt):
            collect_traces(killed, problems, path)
        before = read_traces(path)
        assert len(before) == 3
        with open(path, "a") as handle:
            handle.write('{"id": "gen-0-3", "question": "half a li')  # the line being written when killed
        resumed = collect_traces(_teacher(server, tmp_path, threads=1), problems, path)
        asked = _questions_asked(server)
    after = read_traces(path)
    assert after[:3] == before  # nothing written before the kill changed
    assert sorted(t.id for t in after) == sorted(p.id for p in problems)  # each problem exactly once
    assert sorted(t.id for t in resumed) == sorted(p.id for p in problems)
    for trace in before:  # finished problems were not asked again
        assert asked.count(trace.question) == 2


def test_duplicate_problem_ids_are_refused(tmp_path, problems):
    with pytest.raises(ValueError, match="unique"):
        collect_traces(SocraticTeacher(), [problems[0], problems[0]], tmp_path / "t.jsonl")


def test_socratic_teacher_reads_gsm8k_annotations():
    problems = gsm8k_problems("test_socratic", limit=30)
    traces = list(SocraticTeacher().traces(problems))
    assert len(traces) == 30
    first = traces[0]
    assert first.subquestions[0] == "How many eggs does Janet sell?"
    assert "<<" not in "".join(t for trace in traces for t in trace.subanswers)
    assert first.answer == first.gold == "18" and first.correct
    assert sum(t.correct for t in traces) >= 28


def test_socratic_teacher_records_a_problem_without_annotation_as_unparsable():
    [trace] = SocraticTeacher().traces([Problem("p", "How many?", "3")])
    assert trace.failure == UNPARSABLE and not trace.correct


def test_socratic_teacher_marks_a_last_step_that_disagrees_with_gold():
    problem = Problem("p", "Q?", "7", subquestions=("How many?",), steps=("She has 2 + 3 = 5 apples.",))
    [trace] = SocraticTeacher().traces([problem])
    assert trace.answer == "5" and not trace.correct


def test_generator_teacher_traces_are_its_problems(tmp_path):
    teacher = GeneratorTeacher()
    problems = generated_problems(20, seed=5)
    held_out = generated_problems(10, seed=6, exclude=problems)
    assert not {p.question for p in problems} & {p.question for p in held_out}
    traces = collect_traces(teacher, problems, tmp_path / "t.jsonl")
    assert len(traces) == 20 and all(t.correct and t.teacher == "generator" for t in traces)
    assert [t.subanswers for t in sorted(traces, key=lambda t: t.id)] == [
        list(p.steps) for p in sorted(problems, key=lambda p: p.id)
    ]


def _cached_calls(directory) -> int:
    import sqlite3

    path = directory / "cache.db"
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=5) as connection:
        return connection.execute("SELECT COUNT(*) FROM Cache").fetchone()[0]


def test_a_killed_teacher_run_repeats_no_finished_call(tmp_path):
    """Kill a real process mid-run (solves hang, decompositions answered), resume: no answered call is asked again.

    Before the call cache was per call, the teacher cached whole problems, so the finished decomposition of
    every problem in flight at the kill was paid for again.
    """
    import subprocess
    import sys
    import threading
    import time

    problems = generated_problems(12, seed=3)
    scripted = ScriptedTeacher(problems)
    killed = threading.Event()
    answered = []

    def responder(request):
        solving = _output_fields(request) != ["subquestions"]
        if solving and len(answered) >= 6 and not killed.is_set():
            killed.wait(60)  # the solves of the problems in flight never come back before the kill
            return Reply("too late", status=503)
        answered.append(json.dumps(request["messages"]))
        return scripted(request)

    path, cache = tmp_path / "traces.jsonl", tmp_path / "cache"
    script = (
        "import dspy, json, sys\n"
        "from dd_prompting.distill.teach.problem_sources import generated_problems\n"
        "from dd_prompting.distill.teach.teachers import DSPyTeacher, collect_traces\n"
        "lm = dspy.LM('openai/gpt-4o-mini', api_base=sys.argv[1], api_key='x', cache=False, num_retries=0)\n"
        "teacher = DSPyTeacher(lm=lm, cache_dir=sys.argv[2], threads=4, progress=False)\n"
        "collect_traces(teacher, generated_problems(12, seed=3), sys.argv[3])\n"
    )
    with OpenAICompatibleServer(responder) as server:
        process = subprocess.Popen([sys.executable, "-c", script, server.base_url, str(cache), str(path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while server.call_count < 10 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        # A reply the server sent is finished once the client has stored it; let the client catch up.
        while time.monotonic() < deadline and _cached_calls(cache) < len(answered):
            time.sleep(0.05)
        process.kill()
        process.wait()
        in_flight = server.call_count - len(answered)
        killed.set()
        assert in_flight > 0, "the kill came after the run had finished: the test proves nothing"
        first_run = list(answered)
        answered.clear()
        resumed = collect_traces(DSPyTeacher(lm=_lm(server), cache_dir=cache, threads=4, progress=False,
                                             retry_backoff=0.0), problems, path)
    assert sorted(t.id for t in resumed) == sorted(p.id for p in problems) and all(t.correct for t in resumed)
    repeated = set(first_run) & set(answered)
    assert not repeated, f"{len(repeated)} calls answered before the kill were asked again"


def test_a_dspy_teacher_starts_with_the_math_worked_examples():
    from dd_prompting.demos import WORKED_EXAMPLES

    teacher = DSPyTeacher(lm=dspy.utils.DummyLM([]))
    assert len(teacher.program.decompose.demos) == len(WORKED_EXAMPLES)
