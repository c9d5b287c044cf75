"""A dd-evals student model on servers (`servers` on a kind = "student" model): its own rows and cache entries."""

import json

import pytest

from dd_prompting.evals.config import EvalConfig
from dd_prompting.evals.harness import Harness
from dd_prompting.result_store import ResultStore
from dd_prompting.serving import ServerError
from dd_prompting.testing import CompletionsModel, OpenAICompatibleServer, Reply

pytestmark = pytest.mark.no_adapter


def config_for(tmp_path, problems_file, model):
    return EvalConfig(
        models=[model], strategies=[{"kind": "student"}],
        datasets=[{"kind": "file", "name": "apples", "path": str(problems_file), "question": ["body", "ask"],
                   "id": "id"}],
        limit=3, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), progress=False, plots=False,
    )


def rows(tmp_path):
    return ResultStore(tmp_path / "out" / "results.jsonl", read_only=True).read()


def test_served_students_answer_as_in_process_and_never_from_its_rows_or_cache(tmp_path, problems_file,
                                                                               student_run_dir):
    local = {"name": "student", "kind": "student", "model": "tiny-pair", "run_dir": str(student_run_dir)}
    assert Harness(config_for(tmp_path, problems_file, local)).run().failed == 0
    in_process = rows(tmp_path)
    models = {role: CompletionsModel(student_run_dir / "students" / role, name=role) for role in ("decomposer", "solver")}
    servers = {role: OpenAICompatibleServer(completions=model, models=model.models) for role, model in models.items()}
    with servers["decomposer"], servers["solver"]:
        served = {**local, "servers": {role: server.base_url for role, server in servers.items()}}
        summary = Harness(config_for(tmp_path, problems_file, served)).run()  # the same output dir and cache
        assert summary.failed == 0 and summary.rows_written == 3 and summary.examples_skipped == 0
        assert len(servers["decomposer"].requests) == 3  # asked, not answered from the in-process run
        answered = rows(tmp_path)[3:]
        assert sorted((r["example_id"], r["subquestions"], r["subanswers"]) for r in answered) == \
            sorted((r["example_id"], r["subquestions"], r["subanswers"]) for r in in_process)  # rows come as done
        assert answered[0]["cell"] != in_process[0]["cell"]  # servers are part of what identifies the results
        run = json.loads((tmp_path / "out" / "run.json").read_text())["models"]["student"]
        assert run["servers"]["solver"]["url"] == servers["solver"].base_url
        assert run["serving"]["solver"]["requests"] == len(servers["solver"].requests)
        assert "student: the solver student ran on a server" in (tmp_path / "out" / "summary.md").read_text()
        (tmp_path / "out" / "results.jsonl").unlink()
        again = Harness(config_for(tmp_path, problems_file, served)).run()
        assert again.cached_calls == 3 and len(servers["decomposer"].requests) == 3  # its own cache entries


def test_a_server_failing_mid_run_leaves_error_rows_that_the_next_run_redoes(tmp_path, problems_file,
                                                                             student_run_dir):
    models = {role: CompletionsModel(student_run_dir / "students" / role, name=role) for role in ("decomposer", "solver")}
    failures = {"left": 1}

    def failing_once(request):  # the decomposer's first request gets a 500, then the server is well again
        if failures["left"]:
            failures["left"] -= 1
            return Reply(status=500, text="the server fell over")
        return models["decomposer"](request)

    decomposer = OpenAICompatibleServer(completions=failing_once, models=models["decomposer"].models)
    solver = OpenAICompatibleServer(completions=models["solver"], models=models["solver"].models)
    with decomposer, solver:
        model = {"name": "student", "kind": "student", "model": "tiny-pair", "run_dir": str(student_run_dir),
                 "servers": {"decomposer": decomposer.base_url, "solver": solver.base_url}, "retries": 0}
        first = Harness(config_for(tmp_path, problems_file, model)).run()
        assert first.failed == 1 and first.rows_written == 3
        [failed] = [row for row in rows(tmp_path) if row["error"]]
        assert decomposer.base_url in failed["error"] and "HTTP 500" in failed["error"]
        again = Harness(config_for(tmp_path, problems_file, model)).run()
        assert (again.rows_written, again.failed, again.examples_skipped) == (1, 0, 2)  # only the failed one again
        assert len(decomposer.requests) == 4


def test_a_served_student_whose_server_is_down_is_named_before_any_call(tmp_path, problems_file, student_run_dir):
    with OpenAICompatibleServer(completions=lambda request: {}) as gone:
        url = gone.base_url
    model = {"name": "student", "kind": "student", "model": "tiny-pair", "run_dir": str(student_run_dir),
             "servers": {"decomposer": url, "solver": url}}
    with pytest.raises(ServerError, match=f"Can't reach the server at {url}"):
        Harness(config_for(tmp_path, problems_file, model)).run()
    assert not (tmp_path / "out" / "results.jsonl").exists() or not rows(tmp_path)


def test_servers_must_name_the_students_roles(tmp_path, problems_file, student_run_dir):
    from dd_prompting.config import ConfigError

    model = {"name": "student", "kind": "student", "model": "tiny-pair", "run_dir": str(student_run_dir),
             "servers": {"cot": "http://127.0.0.1:1/v1"}}
    with pytest.raises(ConfigError, match="servers must name the 'pair' student's decomposer and solver"):
        config_for(tmp_path, problems_file, model)
