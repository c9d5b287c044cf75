"""Students trained side by side: the plan (who trains where, with how many threads) and the workers that run it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dd_prompting.distill.rows.build import build_rows
from dd_prompting.distill.rows.format import write_rows
from dd_prompting.distill.teach.generator import generate_problems
from dd_prompting.distill.training.schedule import MIN_SIDE_STEPS, StudentJob, plan_workers
from dd_prompting.distill.training.train_config import TrainConfig
from dd_prompting.distill.training.workers import WorkerFailed, train_students

torch = pytest.importorskip("torch")

SMALL = dict(tiny_layers=1, tiny_hidden=32, tiny_heads=2, batch_size=4, logging_steps=5, save_steps=1000, seed=0)


@pytest.fixture(scope="module")
def rows_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rows")
    write_rows(build_rows(generate_problems(40, seed=0)), folder)
    return folder


def _job(rows_dir, role, out, **settings):
    return StudentJob(role=role, rows=rows_dir / f"{role}.jsonl", config=TrainConfig(**{**SMALL, **settings}),
                      output_dir=out)


# --- the plan --------------------------------------------------------------------------------------


def test_the_plan_puts_the_longest_student_alone_and_splits_the_threads(rows_dir, tmp_path):
    jobs = [_job(rows_dir, "decomposer", tmp_path / "d", max_steps=600), _job(rows_dir, "solver", tmp_path / "s", max_steps=2400),
            _job(rows_dir, "cot", tmp_path / "c", max_steps=2400)]
    plans = plan_workers(jobs, threads=2)
    assert [plan.roles for plan in plans] == [["solver"], ["decomposer", "cot"]]  # a solver row is the longest
    assert [plan.threads for plan in plans] == [1, 1]
    assert [plan.threads for plan in plan_workers(jobs, threads=5)] == [3, 2]


def test_one_thread_a_distributed_run_or_train_workers_1_trains_one_after_another(rows_dir, tmp_path):
    jobs = [_job(rows_dir, role, tmp_path / role, max_steps=2400) for role in ("decomposer", "solver", "cot")]
    for plans in (plan_workers(jobs, threads=1), plan_workers(jobs, threads=4, distributed=True),
                  plan_workers(jobs, threads=4, workers=1)):
        assert [plan.roles for plan in plans] == [["decomposer", "solver", "cot"]]
    assert plan_workers(jobs, threads=4, workers=1)[0].threads == 4
    assert plan_workers([], threads=2) == []


def test_short_training_is_not_worth_a_worker_process(rows_dir, tmp_path):
    jobs = [_job(rows_dir, "solver", tmp_path / "s", max_steps=5 * MIN_SIDE_STEPS),
            _job(rows_dir, "cot", tmp_path / "c", max_steps=MIN_SIDE_STEPS - 1)]
    assert len(plan_workers(jobs, threads=2)) == 1
    assert len(plan_workers(jobs, threads=2, workers=2)) == 2  # asked for: side by side anyway
    jobs[1].config.max_steps = MIN_SIDE_STEPS
    assert len(plan_workers(jobs, threads=2)) == 2


def test_train_workers_must_be_positive(rows_dir, tmp_path):
    with pytest.raises(ValueError, match="train_workers must be at least 1, got 0"):
        plan_workers([_job(rows_dir, "cot", tmp_path / "c", max_steps=10)], threads=2, workers=0)


# --- the workers -----------------------------------------------------------------------------------


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_student_trained_beside_another_equals_the_one_trained_alone_with_the_same_threads(rows_dir, tmp_path):
    # The same student twice: one trains in this process, the other in a worker process, at once, one thread each.
    plans = plan_workers([_job(rows_dir, "solver", tmp_path / "here", max_steps=30),
                          _job(rows_dir, "solver", tmp_path / "there", max_steps=30)], threads=2, workers=2)
    train_students(plans)
    alone = tmp_path / "alone"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_students(plan_workers([_job(rows_dir, "solver", alone, max_steps=30)], threads=1))
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before  # the side-by-side run gave this process its threads back
    here, there, reference = (_weights(tmp_path / name) for name in ("here", "there", "alone"))
    assert here.keys() == reference.keys()
    for name in reference:
        assert torch.equal(here[name], reference[name]), name
        assert torch.equal(there[name], reference[name]), name
    stats = [json.loads((tmp_path / name / "student.json").read_text())["train_stats"] for name in ("here", "there")]
    assert [s["torch_threads"] for s in stats] == [1, 1] and [s["steps"] for s in stats] == [30, 30]


def test_a_failing_worker_is_named_with_its_cause_and_the_other_student_is_kept(rows_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    good = _job(rows_dir, "cot", tmp_path / "cot", max_steps=10)
    bad = StudentJob(role="decomposer", rows=empty, config=TrainConfig(**SMALL, max_steps=10), output_dir=tmp_path / "d")
    plans = plan_workers([good, bad], threads=2, workers=2)
    assert plans[0].roles == ["cot"]  # the empty job is the cheaper one: it goes to the worker process
    with pytest.raises(WorkerFailed, match=r"the worker training the decomposer student failed: ValueError: No decomposer rows"):
        train_students(plans)
    assert (tmp_path / "cot" / "student.json").is_file()


_PARENT = """
import sys
from pathlib import Path
from dd_prompting.distill.training.schedule import StudentJob, plan_workers
from dd_prompting.distill.training.train_config import TrainConfig
from dd_prompting.distill.training.workers import train_students
rows, out = Path(sys.argv[1]), Path(sys.argv[2])
jobs = [StudentJob(role="solver", rows=rows / "solver.jsonl", output_dir=out / name,
                   config=TrainConfig(tiny_layers=1, tiny_hidden=32, tiny_heads=2, batch_size=4, max_steps=100000))
        for name in ("a", "b")]
train_students(plan_workers(jobs, threads=2, workers=2))
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped; only its exit status is left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_dies_with_its_parent_so_nothing_trains_into_an_unlocked_run_directory(rows_dir, tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(rows_dir), str(tmp_path)])
    try:
        deadline = time.monotonic() + 120
        while not _children(parent.pid):  # the worker process starts
            assert parent.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        worker = _children(parent.pid)[0]
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(worker):
            assert time.monotonic() < deadline, "the worker outlived its parent"
            time.sleep(0.2)
    finally:
        if parent.poll() is None:
            parent.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_both_workers(rows_dir, tmp_path):
    # Ctrl-C in a terminal interrupts the whole foreground process group: this process and its worker.
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(rows_dir), str(tmp_path)], start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not _children(parent.pid):
            assert parent.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        worker = _children(parent.pid)[0]
        os.killpg(parent.pid, signal.SIGINT)
        assert parent.wait(timeout=60) != 0  # KeyboardInterrupt, not a finished training
        assert not _alive(worker)  # the parent waited for its worker to stop
    finally:
        if parent.poll() is None:
            parent.kill()
