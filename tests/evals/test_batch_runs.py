"""`batch = true`: a dd-evals run whose API model is called through the Batch API, in rounds (issue 27)."""

import json
from collections import Counter
from pathlib import Path

import pytest
from scripted import ScriptedModel

from dd_prompting.evals.config import load_config
from dd_prompting.evals.harness import Harness
from dd_prompting.result_store import ResultStore, latest_rows
from dd_prompting.testing import OpenAICompatibleServer, Reply

# What a batched run's rows must share with a synchronous run's; calls, cache hits, retries and latency differ.
SAME = ("cell", "example_id", "strategy", "prediction", "answer_text", "correct", "parse_status", "subquestions", "subanswers", "reasoning",
        "raw_outputs", "prompt_tokens", "completion_tokens", "error")


def dataset(problems_file: Path) -> str:
    """The [[datasets]] section every config here runs: the ten apple problems."""
    return f"""[[datasets]]
kind = "file"
name = "apples"
path = "{problems_file}"
question = ["body", "ask"]
id = "id"
"""


def write_config(path: Path, server_url: str, problems_file: Path, output_dir: Path, *, batch: bool,
                 extra: str = "", cache_dir: Path | None = None) -> Path:
    path.write_text(f"""
output_dir = "{output_dir}"
{f'cache_dir = "{cache_dir}"' if cache_dir else ""}
threads = 2
retries = 1
retry_backoff = 0.01
timeout = 10
{extra}

[[models]]
name = "scripted"
model = "openai/scripted"
api_base = "{server_url}"
input_cost_per_million = 2.0
output_cost_per_million = 8.0
batch = {str(batch).lower()}
batch_poll_seconds = 0.01

[[strategies]]
kind = "cot"

[[strategies]]
kind = "decomposed"
mode = "joint"

[[strategies]]
kind = "decomposed"
mode = "iterative"

{dataset(problems_file)}""")
    return path


def run(config_path: Path, **overrides):
    summary = Harness(load_config(config_path, overrides={"progress": False, **overrides})).run()
    rows = latest_rows(ResultStore(Path(load_config(config_path).output_dir) / "results.jsonl").read())
    return summary, sorted(rows, key=lambda row: (row["strategy"], row["example_id"]))


def view(rows):
    return [{name: row[name] for name in SAME} for row in rows]


@pytest.fixture
def model(gold):
    return ScriptedModel(gold=gold, right=set(list(gold)[:6]))


def test_a_batched_run_writes_the_rows_of_a_synchronous_run_at_half_the_cost(tmp_path, problems_file, gold, model):
    with OpenAICompatibleServer(model) as server:
        _, sync_rows = run(write_config(tmp_path / "sync.toml", server.base_url, problems_file, tmp_path / "sync",
                                        batch=False))
        synchronous_calls = server.call_count
        summary, rows = run(write_config(tmp_path / "batch.toml", server.base_url, problems_file, tmp_path / "batch",
                                         batch=True))
        lines = list(server.batches.lines)
        record = json.loads((tmp_path / "batch" / "run.json").read_text())
        assert server.call_count == synchronous_calls  # the batched run made no synchronous call
        # Rerun synchronously: the batched rows count as done (batch is not part of a cell's identity).
        again, _ = run(write_config(tmp_path / "batch.toml", server.base_url, problems_file, tmp_path / "batch",
                                    batch=False))
        assert server.call_count == synchronous_calls and again.examples_skipped == 30 and again.rows_written == 0
    assert len(rows) == 30 and view(rows) == view(sync_rows)
    sent = Counter(line["custom_id"] for line in lines)
    assert max(sent.values()) == 1  # every call sent once
    # The calls the synchronous run sent (joint and iterative share their decomposition call), each once.
    assert len(sent) == synchronous_calls
    # Rounds: chain of thought 1, joint 2 (decompose, solve), iterative 1 + one per sub-question (2 here); the
    # last pass answers everything from the cache.
    assert len(record["batches"]) == 3 and record["last_run"]["batch_rounds"]["scripted"]["passes"] == 4
    assert all(entry["state"] == "completed" for entry in record["batches"].values())
    # Each row is billed what its calls cost at batch prices: half the synchronous price, once.
    assert sum(row["new_cost"] for row in rows) == pytest.approx(sum(row["new_cost"] for row in sync_rows) / 2)
    assert [row["cost"] for row in rows] == pytest.approx([row["cost"] / 2 for row in sync_rows])
    assert summary.spent == pytest.approx(sum(row["new_cost"] for row in rows))
    assert summary.failed == 0 and summary.rows_written == 30


def test_expired_and_failed_lines_go_again_and_a_line_that_keeps_failing_is_an_error_row(
        tmp_path, problems_file, gold, model):
    flaky, broken, late = list(gold)[:3]
    seen = set()

    def responder(request):
        body = json.dumps(request, sort_keys=True)
        if broken in body or (flaky in body and body not in seen):  # flaky: each request fails once
            seen.add(body)
            return Reply(status=500, text="overloaded")
        return model(request)

    with OpenAICompatibleServer(responder) as server:
        config = write_config(tmp_path / "batch.toml", server.base_url, problems_file, tmp_path / "batch", batch=True)
        answer = server.batches._answer

        def expire_late_lines_of_the_first_batch(batch):
            first = batch["id"] == "batch_1"
            server.batches.expire = {line["custom_id"] for line in server.batches.lines
                                     if first and late in json.dumps(line["body"])}
            answer(batch)

        server.batches._answer = expire_late_lines_of_the_first_batch
        summary, rows = run(config)
        sent = Counter(line["custom_id"] for line in server.batches.lines)
    assert len(rows) == 30
    failed = [row for row in rows if row["error"]]
    assert {row["question"] for row in failed} == {broken} and summary.failed == 3
    assert all("went 2 times without an answer" in row["error"] and "overloaded" in row["error"] for row in failed)
    assert max(sent.values()) == 2  # retries = 1: a line goes at most twice
    assert all(row["correct"] == (row["question"] in model.right) for row in rows if not row["error"])


def test_a_run_killed_while_its_batch_is_pending_reattaches_and_sends_nothing_twice(
        tmp_path, problems_file, gold, model):
    import os
    import signal
    import subprocess
    import sys
    import time

    output_dir = tmp_path / "batch"
    manifest = output_dir / "batches.json"
    with OpenAICompatibleServer(model) as server:
        config = write_config(tmp_path / "batch.toml", server.base_url, problems_file, output_dir, batch=True)
        server.batches.hold = True  # the first batch stays in progress until the run is killed
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        process = subprocess.Popen([sys.executable, "-m", "dd_prompting.evals", "run", str(config), "--no-progress"],
                                   cwd=Path(__file__).resolve().parents[2], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if manifest.exists() and '"pending"' in manifest.read_text():
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
        assert len(server.batches.batches) == 1 and not (output_dir / "results.jsonl").exists()
        server.batches.hold = False
        summary, rows = run(config)
        sent = Counter(line["custom_id"] for line in server.batches.lines)
        assert server.requests == []
    assert len(rows) == 30 and summary.rows_written == 30 and summary.failed == 0
    assert set(sent.values()) == {1}  # the restarted run re-attached to batch_1 rather than sending it again
    assert json.loads(manifest.read_text())["batches"]["batch_1"]["state"] == "completed"


def test_the_dry_run_prices_batches_at_half_and_counts_rounds(tmp_path, problems_file, gold, model, capsys):
    from dd_prompting.evals.cli import main

    with OpenAICompatibleServer(model) as server:
        estimates = {}
        for batch in (False, True):
            config = write_config(tmp_path / f"{batch}.toml", server.base_url, problems_file, tmp_path / f"{batch}",
                                  batch=batch)
            estimates[batch] = Harness(load_config(config, overrides={"progress": False, "dry_run": True})).run() \
                .estimates
            assert main(["run", str(config), "--dry-run"]) == 0
        printed = capsys.readouterr().out
        assert server.call_count == 0 and server.batches.lines == []
    for label, estimate in estimates[True].items():
        assert estimate.cost == pytest.approx(estimates[False][label].cost / 2)
        assert estimates[False][label].rounds is None
    rounds = {label.rsplit(" | ", 1)[1]: estimate.rounds for label, estimate in estimates[True].items()}
    assert rounds["cot"] == 1 and rounds["decomposed-joint"] == 2 and rounds["decomposed-iterative"] >= 3
    assert "apples | scripted | cot: about 1 round;" in printed and "at batch prices" in printed


def test_a_round_that_would_pass_max_cost_is_not_submitted(tmp_path, problems_file, gold, model):
    with OpenAICompatibleServer(model) as server:
        config = write_config(tmp_path / "batch.toml", server.base_url, problems_file, tmp_path / "batch", batch=True)
        summary, rows = run(config, max_cost=0.0001)
        assert server.batches.batches == {} and server.requests == []
    assert rows == [] and "the next round of scripted (20 calls" in summary.stopped
    assert "so it was not submitted" in summary.stopped


def test_a_dry_run_of_a_batched_openai_model_needs_no_key_and_a_run_says_which(
        tmp_path, problems_file, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = tmp_path / "openai.toml"
    config.write_text(f"""
output_dir = "{tmp_path / 'out'}"

[[models]]
model = "openai/gpt-4o-mini"
batch = true

[[strategies]]
kind = "cot"

{dataset(problems_file)}""")
    [estimate] = Harness(load_config(config, overrides={"progress": False, "dry_run": True})).run().estimates.values()
    assert estimate.rounds == 1 and estimate.cost > 0  # litellm's batch prices for gpt-4o-mini
    with pytest.raises(ValueError, match="needs a key: export OPENAI_API_KEY"):
        Harness(load_config(config, overrides={"progress": False}))
