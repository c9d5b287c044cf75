"""One writer per `dd-distill` run directory: a second process is refused before it writes or calls anything,
and a holder killed with SIGKILL leaves no lock behind."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dd_prompting.run_lock import RunLock
from dd_prompting.testing import OpenAICompatibleServer

ROOT = Path(__file__).resolve().parents[2]
REPLY = '[[ ## subquestions ## ]]\n["What is asked?"]\n\n[[ ## completed ## ]]'  # enough to be called


class GatedTeacher:
    """Answers once the gate opens: the first process holds the run directory as long as the test needs."""

    def __init__(self):
        self.gate = threading.Event()

    def __call__(self, request):
        assert self.gate.wait(120), "the test never opened the gate"
        return REPLY


def _config(tmp_path, server) -> Path:
    config = tmp_path / "run.toml"
    config.write_text(
        '[teacher]\nkind = "api"\nmodel = "openai/gpt-4o-mini"\napi_key_env = "SCRIPTED_KEY"\n'
        f'api_base = "{server.base_url}"\ncache_dir = "{tmp_path / "cache"}"\nretries = 0\nthreads = 2\n'
        '[data]\nsource = "gsm8k"\ntrain_problems = 4\neval_problems = 2\neval_offset = 4\n'
    )
    return config


def _start(config, run_dir, key, command="traces"):
    env = {**os.environ, "SCRIPTED_KEY": key, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return subprocess.Popen([sys.executable, "-m", "dd_prompting.distill", command, "--config", str(config),
                             "--run-dir", str(run_dir), "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_holder(run_dir, process, seconds=120.0):
    deadline = time.monotonic() + seconds
    while (holder := RunLock.holder(run_dir)) is None:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.01)
    return holder


def _calls_with(server, key):
    return sum(auth == f"Bearer {key}" for auth in server.authorizations)


def test_a_second_dd_distill_on_the_run_directory_is_refused_before_any_write_or_call(tmp_path):
    run_dir = tmp_path / "run"
    teacher = GatedTeacher()
    with OpenAICompatibleServer(teacher) as server:
        config = _config(tmp_path, server)
        first = _start(config, run_dir, "key-first")
        holder = _wait_for_holder(run_dir, first)
        deadline = time.monotonic() + 120
        while not _calls_with(server, "key-first"):  # the first is at the gate: it writes nothing until it opens
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        before = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*")}
        second = _start(config, run_dir, "key-second", command="run")
        out, err = second.communicate(timeout=120)
        after = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*")}
        assert first.poll() is None
        teacher.gate.set()
        _, first_err = first.communicate(timeout=300)
    assert second.returncode == 2
    assert err.strip() == (f"dd-distill: error: {run_dir} is in use by `dd-distill traces`, pid {first.pid} on "
                           f"{holder.host}, started {holder.started}: one process writes a run directory at a time. "
                           "Wait for it to finish (or pass --wait to wait for it), or use another directory.")
    assert _calls_with(server, "key-second") == 0
    assert before == after  # the refused process wrote nothing (the first's calls wait at the gate meanwhile)
    # The first ran to its end (the scripted teacher's replies make no usable trace; that is not this test's subject).
    assert "in use" not in first_err and _calls_with(server, "key-first") >= 4 and (run_dir / "traces.jsonl").exists()


def test_a_dd_distill_killed_with_sigkill_leaves_no_lock(tmp_path):
    run_dir = tmp_path / "run"
    teacher = GatedTeacher()
    with OpenAICompatibleServer(teacher) as server:
        config = _config(tmp_path, server)
        first = _start(config, run_dir, "key-first")
        _wait_for_holder(run_dir, first)
        first.send_signal(signal.SIGKILL)
        first.communicate()
        assert RunLock.holder(run_dir) is None
        teacher.gate.set()
        again = _start(config, run_dir, "key-again")
        out, err = again.communicate(timeout=300)
    assert "in use" not in err and _calls_with(server, "key-again") >= 4  # it ran at once, past the dead holder
