"""One writer per output directory: a second `dd-evals run` is refused (or waits), readers are never blocked,
a killed holder leaves no lock behind, and rows an older version wrote twice count once."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from scripted import ScriptedModel
from test_resume import write_config

from dd_prompting.result_store import ResultStore
from dd_prompting.run_lock import RunLock
from dd_prompting.testing import OpenAICompatibleServer

REPO = Path(__file__).resolve().parents[2]


class Gated:
    """The scripted model, answering `free` calls at once and the rest once the gate opens: a run that holds its
    directory for as long as the test needs, without timing."""

    def __init__(self, model, *, free: int = 0):
        self.model, self.free, self.gate = model, free, threading.Event()
        self._lock = threading.Lock()

    def __call__(self, request):
        with self._lock:
            self.free -= 1
            wait = self.free < 0
        if wait:
            assert self.gate.wait(120), "the test never opened the gate"
        return self.model(request)


def _config(tmp_path, server, problems_file):
    config = write_config(tmp_path / "evals.toml", server.base_url, problems_file, tmp_path / "out")
    # Each process sends its own key, so the server tells whose calls it got.
    config.write_text(config.read_text().replace('api_base = ', 'api_key_env = "SCRIPTED_KEY"\napi_base = ', 1))
    return config


def _start(config, key, *flags):
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "SCRIPTED_KEY": key}
    return subprocess.Popen([sys.executable, "-m", "dd_prompting.evals", "run", str(config), "--no-progress", *flags],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_holder(output_dir, process, *, seconds=60.0):
    deadline = time.monotonic() + seconds
    while (holder := RunLock.holder(output_dir)) is None:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.01)
    return holder


def _calls_with(server, key):
    return sum(auth == f"Bearer {key}" for auth in server.authorizations)


def test_a_second_run_on_the_same_directory_is_refused_and_calls_nothing(tmp_path, problems_file, gold):
    model = Gated(ScriptedModel(gold=gold, right=set(gold)))
    with OpenAICompatibleServer(model) as server:
        config = _config(tmp_path, server, problems_file)
        first = _start(config, "key-first")
        holder = _wait_for_holder(tmp_path / "out", first)
        assert holder.pid == first.pid and holder.command == "dd-evals run"
        second = _start(config, "key-second")
        out, err = second.communicate(timeout=120)
        # Readers are not blocked: a dry run and a report work meanwhile and say who is writing.
        dry = _start(config, "key-dry", "--dry-run")
        dry_out, dry_err = dry.communicate(timeout=120)
        report = subprocess.run([sys.executable, "-m", "dd_prompting.evals", "report", str(tmp_path / "out"),
                                 "--no-plots"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert first.poll() is None  # all this while the first still ran (its calls wait at the gate)
        model.gate.set()
        first_out, first_err = first.communicate(timeout=300)
    assert second.returncode == 1, err
    assert err.strip() == (f"error: {tmp_path / 'out'} is in use by `dd-evals run`, pid {first.pid} on "
                           f"{holder.host}, started {holder.started}: one process writes a run directory at a time. "
                           "Wait for it to finish (or pass --wait to wait for it), or use another directory.")
    assert _calls_with(server, "key-second") == 0 and _calls_with(server, "key-dry") == 0
    assert dry.returncode == 0 and f"is in use by `dd-evals run`, pid {first.pid}" in dry_err
    assert report.returncode == 0 and f"pid {first.pid}" in report.stderr
    assert first.returncode == 0, first_err
    store = ResultStore(tmp_path / "out" / "results.jsonl", read_only=True)
    assert len(store.latest()) == 10 and store.duplicates == 0 and len(store.read()) == 10


def test_wait_runs_after_the_holder_and_finds_the_work_done(tmp_path, problems_file, gold):
    model = Gated(ScriptedModel(gold=gold, right=set(gold)))
    with OpenAICompatibleServer(model) as server:
        config = _config(tmp_path, server, problems_file)
        first = _start(config, "key-first")
        _wait_for_holder(tmp_path / "out", first)
        waiting = _start(config, "key-waiting", "--wait")
        told = waiting.stderr.readline()  # it says it waits, then waits
        model.gate.set()
        out, err = waiting.communicate(timeout=300)
        first.communicate(timeout=300)
        err = told + err
    assert first.returncode == 0 and waiting.returncode == 0, err
    assert "waiting for it to finish (--wait)" in err
    assert "10 examples run" not in out and "0 examples run (10 already done)" in out
    assert _calls_with(server, "key-waiting") == 0
    assert len(ResultStore(tmp_path / "out" / "results.jsonl", read_only=True).read()) == 10


def test_a_run_killed_with_sigkill_leaves_no_lock_and_the_next_run_resumes_at_once(tmp_path, problems_file, gold):
    results = tmp_path / "out" / "results.jsonl"
    model = Gated(ScriptedModel(gold=gold, right=set(gold)), free=3)
    with OpenAICompatibleServer(model) as server:
        config = _config(tmp_path, server, problems_file)
        first = _start(config, "key-first")
        _wait_for_holder(tmp_path / "out", first)
        deadline = time.monotonic() + 60
        while not (results.exists() and len(results.read_text().splitlines()) >= 2):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)  # two rows written, its other calls held at the gate
        first.communicate()
        assert RunLock.holder(tmp_path / "out") is None
        model.gate.set()
        second = _start(config, "key-second")
        out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert "already done" in out and "in use" not in err
    store = ResultStore(results, read_only=True)
    assert len(store.latest()) == 10 and store.duplicates == 0


def test_rows_an_older_version_wrote_twice_count_once_and_readers_say_how_many(tmp_path, problems_file, gold, caplog):
    from test_harness import make_config

    from dd_prompting.evals.harness import Harness
    from dd_prompting.evals.report import write_report

    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(list(gold)[:4]))) as server:
        config = make_config(tmp_path, server, problems_file, [{"kind": "direct"}])
        Harness(config).run()
        results = tmp_path / "out" / "results.jsonl"
        lines = results.read_text().splitlines(keepends=True)
        results.write_text("".join(lines + lines[:3]))  # two runs at once, as before the lock
        with caplog.at_level("WARNING"):
            summary = Harness(config).run()  # resumes: nothing to do, and says what it dropped
    assert summary.rows_written == 0 and summary.new_calls == 0
    assert "3 rows repeat an example already finished" in caplog.text
    write_report(tmp_path / "out", plots=False)
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "3 row(s) of results.jsonl repeat an example already finished" in markdown
    assert "| 10 | 40.0%" in markdown  # each example counted once


def test_a_report_reads_a_run_in_progress_without_touching_its_last_line(tmp_path):
    results = tmp_path / "results.jsonl"
    row = {"cell": "c", "example_id": "1", "correct": True}
    results.write_text(json.dumps(row) + "\n" + '{"cell": "c", "example_id": "2", "cor')  # a line being written
    store = ResultStore(results, read_only=True)
    assert store.read() == [row]
    assert results.read_text().endswith('"cor')  # a reader repairs nothing
