"""Trained students on an OpenAI-compatible server (vLLM's /v1/completions fields), against in-process students.

The server is `dd_prompting.testing.CompletionsModel`: the student's own weights behind vLLM's request and reply
fields, decoding one request at a time with a 16-token-block prefix store. Answers alone would prove little (both
sides decode with this project's code), so the first tests compare every prompt's token ids with the ids the
in-process decoder fed the model.
"""

import logging

import dspy
import pytest

import dd_prompting.distill.students.pipelines as pipelines
from dd_prompting.distill import StudentModule
from dd_prompting.serving import ServerError
from dd_prompting.testing import CompletionsModel, OpenAICompatibleServer, Reply

PROBLEMS = 16  # held-out problems; every step of each is compared, token for token


@pytest.fixture(scope="module")
def questions(generator_problems):
    return [problem.question for problem in generator_problems[1][:PROBLEMS]]


def examples(questions):
    return [dspy.Example(question=q).with_inputs("question") for q in questions]


def in_process(run_dir, student, questions, monkeypatch):
    """The in-process predictions, and every prompt (token ids) the decoder fed a model, one per step."""
    prompts = []
    generate = pipelines.generate

    def recording(decoder, vocab, chunks, *, active, **settings):
        prompts.extend(tuple(decoder.history[row] + list(chunks[row]))
                       for row in range(decoder.rows) if active[row] and chunks[row])
        return generate(decoder, vocab, chunks, active=active, **settings)

    with monkeypatch.context() as patch:
        patch.setattr(pipelines, "generate", recording)
        predictions = StudentModule.from_run(run_dir, student=student).batch(examples(questions))
    return predictions, prompts


def serve(run_dir, role, **settings):
    model = CompletionsModel(run_dir / "students" / role, name=f"{role}-student", **settings)
    return OpenAICompatibleServer(completions=model, models=model.models), model


def same(a, b):
    return (a.answer, a.subquestions, a.subanswers, a.fallback) == (b.answer, b.subquestions, b.subanswers, b.fallback)


def test_served_pair_sends_the_in_process_prompts_and_gives_its_answers(distilled, questions, monkeypatch):
    expected, prompts = in_process(distilled.run_dir, "pair", questions, monkeypatch)
    (decomposer, _), (solver, solver_model) = serve(distilled.run_dir, "decomposer"), serve(distilled.run_dir, "solver")
    with decomposer, solver:
        module = StudentModule.from_run(distilled.run_dir, servers={"decomposer": decomposer.base_url,
                                                                    "solver": {"url": solver.base_url}})
        served = module.batch(examples(questions))
    sent = [tuple(request["prompt"]) for request in decomposer.requests + solver.requests]
    assert sorted(sent) == sorted(prompts)
    assert len(decomposer.requests) == PROBLEMS and len(solver.requests) > PROBLEMS  # several steps a problem
    assert all(same(a, b) for a, b in zip(served, expected))
    for request in solver.requests:  # what vLLM needs to stop and answer as in process
        assert request["temperature"] == 0.0 and request["return_token_ids"] is True
        assert 0 < request["max_tokens"] <= 48 and request["model"] == "solver-student"
    stats = module.student.stats()
    assert stats["solver"]["cached_tokens"] == solver_model.cached_tokens > 0
    assert stats["solver"]["cached_share"] > 0.5  # the problem and earlier steps come from the server's cache


def test_served_cot_student_sends_the_in_process_prompts_and_gives_its_answers(distilled, questions, monkeypatch):
    expected, prompts = in_process(distilled.run_dir, "cot", questions, monkeypatch)
    server, _ = serve(distilled.run_dir, "cot")
    with server:
        served = StudentModule.from_run(distilled.run_dir, student="cot", servers={"cot": server.base_url}).batch(
            examples(questions))
    assert sorted(tuple(request["prompt"]) for request in server.requests) == sorted(prompts)
    assert [(p.answer, p.reasoning) for p in served] == [(p.answer, p.reasoning) for p in expected]


def test_a_served_module_saves_and_loads_served(distilled, questions, tmp_path):
    (decomposer, _), (solver, _) = serve(distilled.run_dir, "decomposer"), serve(distilled.run_dir, "solver")
    with decomposer, solver:
        servers = {"decomposer": decomposer.base_url, "solver": solver.base_url}
        StudentModule.from_run(distilled.run_dir, servers=servers).save(str(tmp_path / "program.json"))
        loaded = StudentModule()
        loaded.load(str(tmp_path / "program.json"))
        assert loaded.served and {role: spec.url for role, spec in loaded.student.servers.items()} == servers
        before = len(solver.requests)
        loaded(question=questions[0])
        assert len(solver.requests) > before  # it answers from the server, not from local weights


def test_a_text_only_server_is_reached_through_text_said_once(distilled, questions, caplog):
    server, _ = serve(distilled.run_dir, "cot", token_prompts=False)  # as `transformers serve` answers
    with server, caplog.at_level(logging.WARNING, logger="dd_prompting.serving"):
        url = server.base_url
        served = StudentModule.from_run(distilled.run_dir, student="cot", servers={"cot": url}).batch(
            examples(questions[:4]))
    assert len(served) == 4
    # Problems already in flight when the first refusal came were refused too, then sent as text.
    assert sum(isinstance(request["prompt"], str) for request in server.requests) == 4
    said = [record.getMessage() for record in caplog.records if "does not take token-id prompts" in record.getMessage()]
    assert len(said) == 1 and url in said[0]


def test_a_server_that_is_down_is_named_before_any_problem(distilled):
    with OpenAICompatibleServer(completions=lambda request: {}) as gone:
        url = gone.base_url  # a port that was just free: nothing listens there once the server stops
    with pytest.raises(ServerError, match=f"Can't reach the server at {url}"):
        StudentModule.from_run(distilled.run_dir, student="cot", servers={"cot": url})


def test_a_server_serving_another_model_is_refused_naming_both(distilled):
    other = [{"id": "gpt2-xl", "object": "model", "max_model_len": 1024}]
    with OpenAICompatibleServer(completions=lambda request: {}, models=other) as server:
        with pytest.raises(ServerError, match=r"serves 'gpt2-xl' with a 1024-token context.*cot student in"):
            StudentModule.from_run(distilled.run_dir, student="cot", servers={"cot": server.base_url})
        with pytest.raises(ServerError, match="does not serve 'cot-student'"):
            StudentModule.from_run(distilled.run_dir, student="cot",
                                   servers={"cot": {"url": server.base_url, "model": "cot-student"}})


def test_retries_after_a_server_error_and_records_a_malformed_reply_as_a_failed_step(distilled, questions):
    model = CompletionsModel(distilled.run_dir / "students" / "cot", name="cot")
    replies = iter([Reply(status=503, text="overloaded"), Reply(raw_body=b"not json")])

    def flaky(request):
        return next(replies, None) or model(request)

    with OpenAICompatibleServer(completions=flaky, models=model.models) as server:
        module = StudentModule.from_run(distilled.run_dir, student="cot", servers={"cot": server.base_url},
                                        max_in_flight=1)
        first, second = module.batch(examples(questions[:2]))
    assert len(server.requests) == 3  # 503; its retry answered "not json"; the second problem's request
    # The failed step, recorded as in process: no text, no answer; the next problem is answered as usual.
    assert (first.reasoning, first.parse_failures) == ("", ["no number in the final answer"])
    assert second.reasoning
    assert module.student.stats()["cot"]["malformed"] == 1


def test_dd_distill_evaluate_on_servers_writes_the_in_process_rows_and_forgets_the_servers(distilled, tmp_path):
    import json
    import shutil

    from dd_prompting.distill.run.cli import main
    from dd_prompting.distill.run.directory import saved_settings

    run_dir = tmp_path / "run"
    shutil.copytree(distilled.run_dir, run_dir)  # evaluated in process by compile (its valset)
    key = lambda row: (row["strategy"], row["example_id"], row["prediction"], row["subanswers"])  # noqa: E731
    read = lambda: sorted(key(json.loads(line)) for line in (run_dir / "eval" / "results.jsonl").open()  # noqa: E731
                          if json.loads(line)["model"] == "students")
    in_process = read()
    assert {row[0] for row in in_process} == {"pair", "cot"}
    (decomposer, _), (solver, _) = serve(run_dir, "decomposer"), serve(run_dir, "solver")
    with decomposer, solver:  # the pair on servers; the CoT student stays here
        url = solver.base_url
        assert main(["evaluate", "--run-dir", str(run_dir), "--quiet", f"--servers.decomposer={decomposer.base_url}",
                     f"--servers.solver={url}"]) == 0
    assert read() == in_process and len(decomposer.requests) == len(in_process) // 2
    report = (run_dir / "report.md").read_text()
    assert "The solver student ran on a server" in report and "from its prefix cache" in report
    assert json.loads((run_dir / "config.json").read_text())["servers"]["solver"] == url
    assert "servers" not in saved_settings(run_dir)  # the next `dd-distill evaluate` runs here unless told again
