"""A killed run resumes where it stopped, without paying again for finished examples."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from scripted import ScriptedModel, question_of

from dd_prompting.testing import OpenAICompatibleServer
from dd_prompting.evals.config import load_config
from dd_prompting.evals.harness import Harness
from dd_prompting.result_store import ResultStore, latest_rows

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, server_url: str, problems_file: Path, output_dir: Path) -> Path:
    path.write_text(f"""
output_dir = "{output_dir}"
threads = 2
retries = 1
retry_backoff = 0.01
timeout = 10

[[models]]
name = "scripted"
model = "openai/gpt-4o-mini"
api_base = "{server_url}"

[[strategies]]
kind = "direct"

[[datasets]]
kind = "file"
name = "apples"
path = "{problems_file}"
question = ["body", "ask"]
id = "id"
""")
    return path


def test_a_killed_run_resumes_without_repeating_finished_examples(tmp_path, problems_file, gold):
    model = ScriptedModel(gold=gold, right=set(list(gold)[:5]), delay=0.25)
    output_dir = tmp_path / "out"
    results = output_dir / "results.jsonl"
    with OpenAICompatibleServer(model) as server:
        config_path = write_config(tmp_path / "evals.toml", server.base_url, problems_file, output_dir)
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        process = subprocess.Popen([sys.executable, "-m", "dd_prompting.evals", "run", str(config_path), "--no-progress"],
                                   cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if results.exists() and len(results.read_text().splitlines()) >= 3:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()

        finished_before = {row["question"] for row in ResultStore(results).read()}
        calls_before = server.call_count
        assert 3 <= len(finished_before) < 10

        summary = Harness(load_config(config_path, overrides={"progress": False})).run()
        asked = Counter(question_of(request) for request in server.requests)

    rows = latest_rows(ResultStore(results).read())
    assert len(rows) == 10 and sum(row["correct"] for row in rows) == 5
    assert summary.examples_skipped == len(finished_before)
    assert all(asked[question] == 1 for question in finished_before)  # finished examples were not asked again
    # At most the examples in flight at the kill (2 threads) were asked twice.
    assert server.call_count - 10 <= 2 and calls_before >= len(finished_before)
    assert json.loads((output_dir / "run.json").read_text())["last_run"]["rows_written"] == 10 - len(finished_before)


def test_a_partial_last_line_is_cut_off_and_the_example_rerun(tmp_path, problems_file, gold):
    from test_harness import make_config

    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        config = make_config(tmp_path, server, problems_file, [{"kind": "direct"}])
        Harness(config).run()
        results = tmp_path / "out" / "results.jsonl"
        lines = results.read_text().splitlines(keepends=True)
        results.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
        lost = json.loads(lines[-1])["example_id"]
        summary = Harness(config).run()
    assert summary.rows_written == 1 and summary.new_calls == 0  # its call was cached
    rows = ResultStore(results).read()
    assert len(rows) == 10 and rows[-1]["example_id"] == lost
    assert all(line.endswith("\n") for line in results.read_text().splitlines(keepends=True))


def test_an_interrupted_run_writes_its_report_and_resumes(tmp_path, problems_file, gold):
    import pytest
    from test_harness import make_config

    def interrupt_after_three(row, seen=[]):
        seen.append(row)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        config = make_config(tmp_path, server, problems_file, [{"kind": "direct"}], threads=1)
        with pytest.raises(KeyboardInterrupt):
            Harness(config, on_row=interrupt_after_three).run()
        run = json.loads((tmp_path / "out" / "run.json").read_text())
        written = run["last_run"]["rows_written"]
        assert run["last_run"]["stopped"] == "interrupted"
        assert written in (3, 4)  # and the example already running when interrupted, if any, was kept
        assert "Stopped early: interrupted" in (tmp_path / "out" / "summary.md").read_text()
        summary = Harness(config).run()
        asked = Counter(question_of(request) for request in server.requests)
    assert summary.examples_skipped == written and summary.rows_written == 10 - written
    assert max(asked.values()) == 1  # nothing was asked twice
