"""`python -m dd_prompting.evals` end to end: exit codes, printed summaries, the dry run and the example configs."""

import logging
from pathlib import Path

import pytest
from scripted import ScriptedModel
from test_resume import write_config

from dd_prompting.testing import OpenAICompatibleServer, Reply
from dd_prompting.evals.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_run_prints_a_summary_and_exits_zero(tmp_path, problems_file, gold, capsys):
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(list(gold)[:4]))) as server:
        config = write_config(tmp_path / "c.toml", server.base_url, problems_file, tmp_path / "out")
        assert main(["run", str(config), "--progress"]) == 0  # with the progress bar on
    out = capsys.readouterr()
    assert "10 examples run (0 already done), 10 new calls" in out.out
    assert "Report: " in out.out and "apples | scripted | direct" in out.err  # tqdm writes to stderr
    assert "acc=40.0%" in out.err and "spent=$" in out.err


def test_failures_and_budget_stops_have_their_own_exit_codes(tmp_path, problems_file, gold, capsys):
    faults = {list(gold)[0]: [Reply(status=500)] * 10}
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold), faults=faults)) as server:
        config = write_config(tmp_path / "c.toml", server.base_url, problems_file, tmp_path / "out")
        assert main(["run", str(config), "--no-progress", "--retries", "1"]) == 3
        assert "1 examples failed after retries" in capsys.readouterr().out
        budget = write_config(tmp_path / "b.toml", server.base_url, problems_file, tmp_path / "out-budget")
        assert main(["run", str(budget), "--no-progress", "--max-cost", "0.00001"]) == 2
        assert "Stopped early: budget" in capsys.readouterr().out


def test_dry_run_prints_an_estimate_and_calls_nothing(tmp_path, problems_file, gold, capsys):
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        config = write_config(tmp_path / "c.toml", server.base_url, problems_file, tmp_path / "out")
        assert main(["run", str(config), "--dry-run"]) == 0
        assert server.call_count == 0
    out = capsys.readouterr().out
    assert "apples | scripted | direct" in out and "No model was called" in out
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_report_rebuilds_the_summary_from_the_rows(tmp_path, problems_file, gold, capsys):
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        config = write_config(tmp_path / "c.toml", server.base_url, problems_file, tmp_path / "out")
        assert main(["run", str(config), "--no-progress", "--no-plots"]) == 0
    (tmp_path / "out" / "summary.md").unlink()
    assert main(["report", str(tmp_path / "out")]) == 0
    assert "| apples | scripted | direct | 10 | 100.0%" in (tmp_path / "out" / "summary.md").read_text()
    assert (tmp_path / "out" / "accuracy.png").exists()


@pytest.mark.parametrize("name", ["evals_gsm8k.toml", "evals_local.yaml"])
def test_example_configs_dry_run_offline(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    code = main(["run", f"examples/{name}", "--dry-run", "--limit", "2", "--output-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "total" in out and "unknown" not in out.split("total", 1)[1]  # every model has a price


@pytest.mark.parametrize("where", ["out", "out/sub"])
def test_an_output_dir_that_is_a_file_ends_in_one_sentence_naming_it(where, tmp_path, problems_file, gold, capsys):
    (tmp_path / "out").write_text("a file, not a directory\n")
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        config = write_config(tmp_path / "c.toml", server.base_url, problems_file, tmp_path / where)
        assert main(["run", str(config), "--no-progress"]) == 1
        assert server.call_count == 0  # refused before any call is paid for
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"error: output_dir {tmp_path / where} ") and f"{tmp_path / 'out'} is a file" in err
    assert (tmp_path / "out").read_text() == "a file, not a directory\n"


@pytest.fixture
def restore_log_levels():
    names = ("dd_prompting", "dd_prompting.evals", "evals", "LiteLLM", "litellm", "httpx", "httpcore", "dspy")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_verbose_logs_retries_cache_hits_per_cell_and_progress(tmp_path, problems_file, gold, caplog,
                                                               restore_log_levels):
    first = list(gold)[0]
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold), faults={first: [Reply(status=500)]})) as server:
        config = write_config(tmp_path / "c.toml", server.base_url, problems_file, tmp_path / "out")
        assert main(["run", str(config), "--no-progress", "-v"]) == 0
        (tmp_path / "out" / "results.jsonl").unlink()  # the rows go; the cache answers every call of the rerun
        assert main(["run", str(config), "--no-progress", "-v"]) == 0
    logs = [(record.name, record.getMessage()) for record in caplog.records]
    retries = [message for name, message in logs if name.startswith("dd_prompting.models") and "retry 1 of 1" in message]
    assert len(retries) == 1
    harness = [message for name, message in logs if name == "dd_prompting.evals.harness"]
    assert harness.count("apples | scripted | direct: 10 examples to run (0 done already), 2 at a time") == 2
    ends = [message.split("; $")[0] for message in harness if "examples run" in message]
    assert ends == ["apples | scripted | direct: 10 examples run (10 right), 10 calls: 0 cache hits, 10 new, 1 retries",
                    "apples | scripted | direct: 10 examples run (10 right), 10 calls: 10 cache hits, 0 new, 0 retries"]
    assert sum(message.startswith("apples | scripted | direct: example q3: right, 1 calls") for message in harness) == 2


def test_skip_malformed_names_the_flag_in_the_way_out_and_lists_skipped_lines(tmp_path, problems_file, gold, capsys):
    lines = problems_file.read_text().splitlines()
    lines[2] = lines[2][:-1]  # cut short: invalid JSON
    lines[4] = lines[4].replace('"answer"', '"answr"')  # a field missing
    problems_file.write_text("\n".join(lines) + "\n")
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        config = write_config(tmp_path / "c.toml", server.base_url, problems_file, tmp_path / "out")
        assert main(["run", str(config), "--no-progress", "--no-plots"]) == 1
        err = capsys.readouterr().err
        assert f"{problems_file}:3: not a valid record: invalid JSON" in err and "Traceback" not in err
        assert "or run again with --skip-malformed (or skip_malformed = true in the config file)" in err
        assert "skip_malformed=True" not in err and server.call_count == 0
        assert main(["run", str(config), "--no-progress", "--no-plots", "--skip-malformed"]) == 0
        assert server.call_count == 8
    out = capsys.readouterr().out
    assert f"8 examples run (0 already done)" in out
    assert f"2 malformed input lines skipped ({problems_file}:3, {problems_file}:5)" in out
    report = (tmp_path / "out" / "summary.md").read_text()
    assert f"- `{problems_file}:3: invalid JSON" in report and f"- `{problems_file}:5: field 'answer' is missing" in report


def test_a_local_model_that_is_not_there_stops_the_run_in_one_sentence_before_any_call(
        tmp_path, problems_file, gold, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))  # nothing in the Hugging Face cache
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        config = write_config(tmp_path / "c.toml", server.base_url, problems_file, tmp_path / "out")
        # An API model runs first; the missing local model comes second.
        config.write_text(config.read_text().replace('[[strategies]]', '''[[models]]
name = "missing"
kind = "local"
model = "someone/not-downloaded-model"

[[strategies]]''', 1))
        code = main(["run", str(config), "--no-progress"])
        assert server.call_count == 0
    err = capsys.readouterr().err
    assert code != 0
    assert "someone/not-downloaded-model" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.parametrize("state", ["no run directory", "no trained students"])
def test_a_student_run_without_its_students_stops_the_run_in_one_sentence_before_any_call(
        tmp_path, problems_file, gold, capsys, state):
    run_dir = tmp_path / "runs" / "tiny"
    if state == "no trained students":
        (run_dir / "students" / "decomposer").mkdir(parents=True)  # a run stopped before its students were saved
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        config = write_config(tmp_path / "c.toml", server.base_url, problems_file, tmp_path / "out")
        # An API model comes first; the student model, whose run has no students, second.
        config.write_text(config.read_text().replace('[[strategies]]', f'''[[models]]
name = "students-pair"
kind = "student"
model = "tiny-pair"
run_dir = "{run_dir}"

[[strategies]]''', 1))
        code = main(["run", str(config), "--no-progress"])
        assert server.call_count == 0
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert str(run_dir) in err
    assert not (tmp_path / "out" / "results.jsonl").exists()
