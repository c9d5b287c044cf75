import json
import os
import re
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest

from dd_prompting import load_gsm8k
from dd_prompting.testing import OpenAICompatibleServer, last_user_text
from dd_prompting.distill.run.cli import OFFLINE_DEFAULT, OFFLINE_NAME, STAGES, main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Small enough to train in seconds: one layer, a few steps, short rows.
TINY = [
    "--student.model", "tiny", "--student.tiny_layers", "1", "--student.tiny_hidden", "32", "--student.tiny_heads", "2",
    "--student.tiny_vocab_size", "300", "--student.batch_size", "8", "--student.max_length", "256",
    "--student.pack_length", "256", "--student.save_steps", "2", "--student.logging_steps", "1",
    "--decomposer.max_steps", "3", "--solver.max_steps", "3", "--cot.max_steps", "3",
    "--eval.max_decomposition_tokens", "24", "--eval.max_answer_tokens", "12", "--eval.max_cot_tokens", "32",
]
RUN_FILES = [
    "config.json", "problems.jsonl", "heldout.jsonl", "traces.jsonl", "trace_report.json", "stages.json",
    "data/decomposer.jsonl", "data/solver.jsonl", "data/cot.jsonl",
    "students/decomposer/student.json", "students/solver/student.json", "students/cot/student.json",
    "students/solver/model.safetensors", "eval/results.jsonl", "eval/run.json",
    "metrics.json", "report.md", "loss.png", "accuracy.png",
]


@pytest.mark.parametrize("command", [None, "run", *STAGES])
def test_help_exits_0_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"] if command is None else [command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: dd-distill" in out
    if command is not None:
        assert "--teacher.model" in out and "--solver.max_steps" in out and "--run-dir" in out


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """`dd-distill` with no command and no config (the offline default), at a tiny scale."""
    root = tmp_path_factory.mktemp("runs")
    code = main(["--output-dir", str(root), "--data.train_problems", "40", "--data.eval_problems", "10", "--quiet", *TINY])
    assert code == 0
    return root / OFFLINE_NAME


def test_offline_run_writes_the_whole_run_directory(offline_run, capsys):
    missing = [name for name in RUN_FILES if not (offline_run / name).is_file()]
    assert not missing
    saved = json.loads((offline_run / "config.json").read_text())
    assert saved["teacher"]["kind"] == "generator" and saved["student"]["model"] == "tiny"
    # Fixed steps, no time budget: the default's students do not depend on the machine's speed.
    assert all(saved[role].get("max_train_seconds") is None for role in OFFLINE_DEFAULT)
    metrics = json.loads((offline_run / "metrics.json").read_text())
    assert metrics["traces"]["kept"] == 40 and metrics["rows"]["decomposer"] == 40
    evaluation = metrics["evaluation"]
    assert evaluation["problems"] == 10 and set(evaluation) >= {"pair", "cot", "teacher"}
    assert evaluation["teacher"]["accuracy"] == 1.0  # the generator's steps are exact
    assert {role: info["steps"] for role, info in metrics["students"].items()} == {"decomposer": 3, "solver": 3, "cot": 3}
    report = (offline_run / "report.md").read_text()
    assert "| student pair (decomposer + solver) |" in report and "![accuracy](accuracy.png)" in report
    rows = [json.loads(line) for line in (offline_run / "eval" / "results.jsonl").read_text().splitlines()]
    assert sorted(row["strategy"] for row in rows if row["model"] == "students") == ["cot"] * 10 + ["pair"] * 10
    # Every accuracy carries its interval, and the pair and the CoT student are compared on the same problems.
    for system in ("pair", "cot", "teacher"):
        low, high = evaluation[system]["interval"]
        assert 0 <= low <= evaluation[system]["accuracy"] <= high <= 1
    assert evaluation["paired"]["n"] == 10 and 0 <= evaluation["paired"]["p_value"] <= 1
    assert "exact McNemar p =" in report and "% [" in report
    held_out = {json.loads(line)["question"] for line in (offline_run / "heldout.jsonl").read_text().splitlines()}
    train = {json.loads(line)["question"] for line in (offline_run / "problems.jsonl").read_text().splitlines()}
    assert not held_out & train


def test_report_gives_each_sides_training_budget_and_accuracy_by_number_of_steps(offline_run):
    metrics = json.loads((offline_run / "metrics.json").read_text())
    by_steps = metrics["evaluation"]["by_steps"]
    assert set(by_steps) <= {"2", "3", "4"}
    for system in ("pair", "cot", "teacher"):
        assert sum(cell[system]["problems"] for cell in by_steps.values()) == 10
        assert sum(cell[system]["correct"] for cell in by_steps.values()) == metrics["evaluation"][system]["correct"]
    report = (offline_run / "report.md").read_text()
    assert "### By number of steps" in report
    assert "the student pair trained 6 steps in all (decomposer 3 + solver 3)" in report
    assert "the CoT student 3 steps" in report and "--equal-compute" in report


def test_one_seed_flag_seeds_the_problems_and_every_student(tmp_path):
    small = ["--data.train_problems", "20", "--data.eval_problems", "4", "--quiet", *TINY]
    assert main(["run", "--run-dir", str(tmp_path / "a"), "--seed", "7", "--equal-compute", *small]) == 0
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["data"]["seed"] == 7 and saved["student"]["seed"] == 7
    students = json.loads((tmp_path / "a" / "metrics.json").read_text())["students"]
    assert students["cot"]["steps"] == students["decomposer"]["steps"] + students["solver"]["steps"] == 6
    problems = (tmp_path / "a" / "problems.jsonl").read_text()
    assert main(["traces", "--run-dir", str(tmp_path / "b"), "--seed", "8", "--quiet", *small]) == 0
    assert (tmp_path / "b" / "problems.jsonl").read_text() != problems


def test_rerun_skips_finished_stages(offline_run, capsys):
    stamps = {role: (offline_run / "students" / role / "model.safetensors").stat().st_mtime_ns
              for role in ("decomposer", "solver", "cot")}
    finished = json.loads((offline_run / "stages.json").read_text())
    assert main(["run", "--run-dir", str(offline_run), "--quiet"]) == 0
    assert json.loads((offline_run / "stages.json").read_text()) == finished
    assert stamps == {role: (offline_run / "students" / role / "model.safetensors").stat().st_mtime_ns
                      for role in stamps}
    assert "| CoT student |" in capsys.readouterr().out


def test_changed_evaluation_settings_redo_only_the_evaluation(offline_run):
    finished = json.loads((offline_run / "stages.json").read_text())
    assert main(["run", "--run-dir", str(offline_run), "--eval.batch_size", "3", "--quiet"]) == 0
    now = json.loads((offline_run / "stages.json").read_text())
    assert now["evaluate"]["finished"] >= finished["evaluate"]["finished"]
    assert now["evaluate"]["settings"]["eval"]["batch_size"] == 3
    assert {stage: now[stage] for stage in ("traces", "build", "train")} == {
        stage: finished[stage] for stage in ("traces", "build", "train")
    }


def test_changed_teacher_settings_are_refused_and_the_saved_config_kept(offline_run, capsys):
    saved = (offline_run / "config.json").read_text()
    assert main(["run", "--run-dir", str(offline_run), "--data.seed", "5", "--quiet"]) == 2
    assert "changed: data.seed" in capsys.readouterr().err
    assert (offline_run / "config.json").read_text() == saved


def test_killed_training_resumes_from_its_checkpoint(tmp_path, offline_run, caplog):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(offline_run, run_dir)
    solver = run_dir / "students" / "solver"
    assert any((solver / "checkpoints").glob("checkpoint-2"))
    # As if killed after the checkpoint at step 2: no finished student, no finished stage.
    (solver / "student.json").unlink()
    shutil.rmtree(solver / "checkpoints" / "checkpoint-3", ignore_errors=True)
    stages = json.loads((run_dir / "stages.json").read_text())
    del stages["train"], stages["evaluate"]
    (run_dir / "stages.json").write_text(json.dumps(stages))
    with caplog.at_level("INFO"):
        assert main(["run", "--run-dir", str(run_dir)]) == 0
    assert re.search(r"Resuming solver training from .*checkpoint-2", caplog.text)
    assert json.loads((solver / "student.json").read_text())["train_stats"]["steps"] == 3


def test_stages_one_by_one_need_their_inputs(tmp_path, capsys):
    run_dir = str(tmp_path / "staged")
    assert main(["build", "--run-dir", run_dir, "--quiet"]) == 2
    assert "run the `traces` stage first" in capsys.readouterr().err
    assert main(["traces", "--run-dir", run_dir, "--data.train_problems", "30", "--data.eval_problems", "5",
                 "--quiet"]) == 0
    assert main(["build", "--run-dir", run_dir, "--quiet"]) == 0
    assert len((tmp_path / "staged" / "data" / "solver.jsonl").read_text().splitlines()) == 30
    assert main(["evaluate", "--run-dir", run_dir, "--quiet"]) == 2
    assert "run the `train` stage first" in capsys.readouterr().err


def test_stage_without_a_run_directory_is_an_error(capsys):
    assert main(["train", "--quiet"]) == 2
    assert "--run-dir or --name" in capsys.readouterr().err


def test_bad_flag_value_is_an_error_naming_the_field(tmp_path, capsys):
    assert main(["run", "--run-dir", str(tmp_path / "r"), "--teacher.samples", "3", "--quiet"]) == 2
    assert "teacher.samples = 3 needs teacher.temperature" in capsys.readouterr().err


# --- the GSM8K recipes, at tiny scale against a local OpenAI-compatible server -----------------------


def _question(text):
    _, _, rest = text.rpartition("[[ ## question ## ]]\n")
    return rest.split("\n\n")[0].strip()


@pytest.fixture(scope="module")
def gsm8k_server():
    gold = {example.question.strip(): example.answer for example in load_gsm8k("train", limit=20)}

    def respond(request):
        system = request["messages"][0]["content"]
        answer = gold[_question(last_user_text(request))]
        if "`subanswers`" not in system:
            return '[[ ## subquestions ## ]]\n["What do we know?", "What is the answer?"]\n\n[[ ## completed ## ]]'
        steps = json.dumps(["We read the problem.", f"The answer is 0 + {answer} = {answer}."])
        return f"[[ ## subanswers ## ]]\n{steps}\n\n[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"

    with OpenAICompatibleServer(respond) as server:
        yield server


def _recipe_flags(server, tmp_path, run_dir):
    return [
        "--run-dir", str(run_dir), "--teacher.api_base", server.base_url, "--teacher.cache_dir", str(tmp_path / "cache"),
        "--teacher.threads", "4", "--data.train_problems", "6", "--data.eval_problems", "4", "--quiet", *TINY,
    ]


def test_gsm8k_gpt2_recipe_runs_end_to_end_at_tiny_scale(gsm8k_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-recipe-test-key")
    run_dir = tmp_path / "gsm8k"
    config = EXAMPLES / "distill_gsm8k_gpt2.toml"
    assert main(["run", "--config", str(config), *_recipe_flags(gsm8k_server, tmp_path, run_dir)]) == 0
    assert gsm8k_server.call_count >= 12  # two teacher calls per training problem, over real HTTP
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["teacher"] == {"kind": "api", "model": "openai/gpt-4o-mini", "mode": "joint"}
    assert metrics["traces"]["kept"] == 6 and metrics["traces"]["cost"] > 0
    assert metrics["evaluation"]["teacher"]["on"] == "training problems"
    assert metrics["evaluation"]["problems"] == 4
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["student"]["learning_rate"] == 1e-4 and saved["decomposer"]["epochs"] == 3.0  # from the recipe
    assert "sk-recipe-test-key" not in (run_dir / "config.json").read_text()
    assert "sk-recipe-test-key" not in (run_dir / "traces.jsonl").read_text()


@pytest.mark.parametrize("name", ["distill_gsm8k_gpt2_medium", "distill_gsm8k_gpt2_large", "distill_gsm8k_gpt2_xl"])
def test_larger_gpt2_recipes_wire_up_to_the_rows(gsm8k_server, tmp_path, monkeypatch, name):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-recipe-test-key")
    run_dir = tmp_path / name
    flags = ["--config", str(EXAMPLES / f"{name}.toml"), *_recipe_flags(gsm8k_server, tmp_path, run_dir)]
    assert main(["traces", *flags]) == 0
    assert main(["build", "--run-dir", str(run_dir), "--quiet"]) == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["student"]["model"] == "tiny"  # the flag overrode the recipe's gpt2 size
    assert saved["student"]["gradient_accumulation_steps"] > 1
    assert len((run_dir / "data" / "cot.jsonl").read_text().splitlines()) == 6


def test_socratic_recipe_wires_up_to_the_rows(tmp_path):
    run_dir = tmp_path / "socratic"
    flags = ["--config", str(EXAMPLES / "distill_gsm8k_socratic_gpt2.toml"), "--run-dir", str(run_dir),
             "--data.train_problems", "20", "--data.eval_offset", "20", "--data.eval_problems", "5", "--quiet"]
    assert main(["traces", *flags]) == 0
    assert main(["build", "--run-dir", str(run_dir), "--quiet"]) == 0
    report = json.loads((run_dir / "trace_report.json").read_text())
    assert report["teachers"] == ["socratic"] and report["kept"] >= 18
    assert len((run_dir / "data" / "decomposer.jsonl").read_text().splitlines()) == report["kept"]


def test_every_example_config_loads():
    from dd_prompting.distill.run.run_config import RunConfig

    configs = sorted(EXAMPLES.glob("distill_*.toml"))
    assert len(configs) >= 5
    for path in configs:
        config = RunConfig.load(path)
        assert all(config.train_config(role).model.startswith("gpt2") for role in ("decomposer", "solver", "cot"))


def test_dd_evals_report_renders_a_distill_run(offline_run, tmp_path):
    from dd_prompting.evals.cli import main as evals_main

    assert evals_main(["report", str(offline_run / "eval"), "--no-plots"]) == 0
    summary = (offline_run / "eval" / "summary.md").read_text()
    assert "| heldout | students | pair | 10 |" in summary and "| heldout | students | cot | 10 |" in summary
    assert "| heldout | students | cot | pair | 10 |" in summary  # the paired test


def _api_teacher_flags(server, tmp_path, run_dir, api_base=None):
    return ["--run-dir", str(run_dir), "--teacher.kind", "api", "--teacher.model", "openai/gpt-4o-mini",
            "--teacher.api_base", api_base or server.base_url, "--teacher.cache_dir", str(tmp_path / "cache"),
            "--teacher.retries", "0", "--data.source", "gsm8k", "--data.train_problems", "4",
            "--data.eval_problems", "2", "--data.eval_offset", "4", "--quiet", *TINY]


def test_a_traces_stage_whose_every_call_failed_is_not_finished_and_reruns(tmp_path, capsys):
    from dd_prompting.testing import Reply

    refused = {"on": True}

    def respond(request):
        if refused["on"]:
            return Reply("Incorrect API key provided", status=401)
        return '[[ ## subquestions ## ]]\n["What is asked?"]\n\n[[ ## completed ## ]]'

    run_dir = tmp_path / "refused"
    with OpenAICompatibleServer(respond) as server:
        assert main(["traces", *_api_teacher_flags(server, tmp_path, run_dir)]) != 0
        assert "no usable trace" in capsys.readouterr().err
        stages = run_dir / "stages.json"
        assert not stages.exists() or "traces" not in json.loads(stages.read_text())
        refused["on"] = False
        calls = server.call_count
        main(["traces", *_api_teacher_flags(server, tmp_path, run_dir)])
        assert server.call_count > calls  # asked again, not skipped as done


def test_url_credentials_in_api_base_reach_no_file_or_log(gsm8k_server, tmp_path, capsys, caplog):
    host = gsm8k_server.base_url.split("://", 1)[1]
    api_base = f"http://proxyuser:proxy-pass-0417@{host}"
    run_dir = tmp_path / "creds"
    flags = _api_teacher_flags(gsm8k_server, tmp_path, run_dir, api_base=api_base)
    flags[flags.index("--data.source") + 1] = "gsm8k"
    main(["traces", *flags])
    captured = capsys.readouterr()
    assert gsm8k_server.call_count > 0
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert b"proxy-pass-0417" not in path.read_bytes(), path
    assert "proxy-pass-0417" not in captured.out + captured.err + caplog.text
    assert json.loads((run_dir / "config.json").read_text())["teacher"]["api_base"] == gsm8k_server.base_url


def test_an_output_dir_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("a file, not a directory")
    assert main(["traces", "--output-dir", str(blocker), "--name", "x", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "must name directories" in err and "Traceback" not in err


def test_old_flag_spellings_still_work_with_a_future_warning(tmp_path):
    run_dir = tmp_path / "old-flags"
    with pytest.warns(FutureWarning) as caught:
        code = main(["traces", "--run-dir", str(run_dir), "--teacher.num_threads", "2", "--teacher.backoff", "0.5",
                     "--data.train_problems", "4", "--data.eval_problems", "2", "--quiet"])
    assert code == 0
    assert {"teacher.num_threads is now spelled teacher.threads",
            "teacher.backoff is now spelled teacher.retry_backoff"} <= {str(w.message) for w in caught}
    saved = json.loads((run_dir / "config.json").read_text())["teacher"]
    assert (saved["threads"], saved["retry_backoff"]) == (2, 0.5)
    assert "num_threads" not in saved and "backoff" not in saved and "lm_retries" not in saved


def test_a_removed_setting_is_an_error_saying_so(tmp_path, capsys):
    assert main(["traces", "--run-dir", str(tmp_path / "r"), "--teacher.lm_retries", "2", "--quiet"]) == 2
    assert "teacher.lm_retries is no longer a setting" in capsys.readouterr().err


def test_rows_follow_the_problems_not_the_order_the_teacher_finished_them(tmp_path):
    # A concurrent teacher appends traces as they finish; the students must not depend on that order.
    from dd_prompting.distill.run.run_config import RunConfig
    from dd_prompting.distill.teach.problem_sources import generated_problems, write_problems
    from dd_prompting.distill.run.directory import Run
    from dd_prompting.distill.run.stages import stage_build
    from dd_prompting.distill.teach.teachers import GeneratorTeacher
    from dd_prompting.distill.teach.traces import TraceWriter

    problems = generated_problems(6, seed=0)
    rows = {}
    for name, order in (("in_order", problems), ("finished_otherwise", problems[::-1])):
        run = Run(tmp_path / name, RunConfig())
        write_problems(run.problems, problems)
        write_problems(run.heldout, [])
        with TraceWriter(run.traces) as writer:
            for trace in GeneratorTeacher().traces(order):
                writer.write(trace)
        stage_build(run)
        rows[name] = (run.data / "decomposer.jsonl").read_text()
    assert rows["finished_otherwise"] == rows["in_order"]


def test_skip_malformed_is_the_run_option_and_the_old_teacher_flag_still_works(tmp_path, capsys):
    run_dir = str(tmp_path / "staged")
    assert main(["traces", "--run-dir", run_dir, "--data.train_problems", "10", "--data.eval_problems", "5",
                 "--quiet"]) == 0
    traces = tmp_path / "staged" / "traces.jsonl"
    with traces.open("a") as handle:
        handle.write("not json\n")
    capsys.readouterr()
    assert main(["build", "--run-dir", run_dir, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{traces}:11: not a valid trace: invalid JSON" in err
    assert "or run again with --skip-malformed (or skip_malformed = true in the config file)" in err
    assert "skip_malformed=True" not in err
    assert main(["build", "--run-dir", run_dir, "--quiet", "--skip-malformed"]) == 0
    report = json.loads((tmp_path / "staged" / "trace_report.json").read_text())
    assert report["skipped_lines"] == 1 and report["skipped"][0].startswith(f"{traces}:11: invalid JSON")
    with pytest.warns(FutureWarning, match=r"teacher.skip_malformed .* is now the run's skip_malformed \(--skip-malformed\)"):
        assert main(["build", "--run-dir", run_dir, "--quiet", "--teacher.skip_malformed"]) == 0
    saved = json.loads((tmp_path / "staged" / "config.json").read_text())
    assert saved["skip_malformed"] is True and "skip_malformed" not in saved["teacher"]


def test_a_malformed_data_line_is_skipped_with_the_flag_and_listed_in_the_report(tmp_path, capsys):
    from dd_prompting.distill.teach.generator import generate_problems

    data = tmp_path / "problems.jsonl"
    rows = [json.dumps({"question": p.question, "answer": "\n".join(
        f"{q} ** {a}" for q, a in zip(p.subquestions, p.subanswers)) + f"\n#### {p.answer}"})
        for p in generate_problems(12, seed=3)]
    rows.insert(4, '{"question": "no answer here"}')
    data.write_text("\n".join(rows) + "\n")
    run_dir = str(tmp_path / "run")
    args = ["traces", "--run-dir", run_dir, "--data.source", str(data), "--data.train_problems", "8",
            "--data.eval_source", "generator", "--data.eval_problems", "4", "--teacher.kind", "socratic", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{data}:5:" in err and "--skip-malformed" in err
    assert main([*args, "--skip-malformed"]) == 0
    report = json.loads((tmp_path / "run" / "trace_report.json").read_text())
    assert report["skipped_lines"] == 1 and report["skipped"][0].startswith(f"{data}:5: ")
