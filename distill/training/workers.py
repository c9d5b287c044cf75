"""Run a `schedule.plan_workers` plan: the first worker's students train in this process, each other worker's in
a child process, at once, each with the plan's torch threads.

A child is `python -m dd_prompting.distill.training.workers PLAN.json`, not a `multiprocessing` process, so
that it never re-imports the caller's script (a script that calls `compile()` without a `__main__` guard
would run again in every spawned process). It writes `outcome.json` beside the plan: the students it saved,
or the error that stopped it. A child dies with its parent (Linux: `PR_SET_PDEATHSIG`; elsewhere it
watches its parent's pid), so a `dd-distill` killed with SIGKILL leaves nothing training into its run
directory after the run lock is gone. Ctrl-C stops every worker; each student resumes from its last
checkpoint on the next run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from dd_prompting.distill.training.schedule import StudentJob, WorkerPlan
from dd_prompting.distill.training.train_config import TrainConfig

__all__ = ["train_students", "WorkerFailed"]

logger = logging.getLogger("dd_prompting.distill.training.workers")  # also when run as __main__ (the child)


class WorkerFailed(RuntimeError):
    """A worker process stopped before saving its students; the message names them and the cause."""


def train_students(plans: list[WorkerPlan]) -> None:
    """Train every job of `plans`: one plan in this process (as before), several side by side."""
    from dd_prompting.distill.training.trainer import train_student

    if len(plans) <= 1:
        for job in plans[0].jobs if plans else []:
            _train(train_student, job, progress_bar=True)
        return
    logger.info("Training side by side: %s", "; ".join(
        f"{', '.join(plan.roles)} ({plan.threads} torch thread{'s' if plan.threads > 1 else ''})" for plan in plans))
    with tempfile.TemporaryDirectory(prefix="dd-distill-workers-") as scratch:
        children = [(plan, *_start_child(plan, Path(scratch) / f"worker-{index}"))
                    for index, plan in enumerate(plans[1:], 1)]
        try:
            with _torch_threads(plans[0].threads):
                for job in plans[0].jobs:
                    _train(train_student, job, progress_bar=False)
            for _, _, process in children:
                process.wait()
        finally:
            for _, _, process in children:
                if process.poll() is None:  # this process stopped early (Ctrl-C, an error): so do the others
                    _stop(process)
        failures = [failure for failure in (_outcome(*child) for child in children) if failure]
    if failures:
        raise WorkerFailed("; ".join(failures))


def _train(train_student, job: StudentJob, *, progress_bar: bool) -> None:
    logger.info("Training the %s student", job.role)
    train_student(rows=job.rows, config=job.config, output_dir=job.output_dir, role=job.role,
                  eval_rows=job.eval_rows, progress_bar=progress_bar)


@contextlib.contextmanager
def _torch_threads(threads: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _start_child(plan: WorkerPlan, folder: Path) -> tuple[Path, subprocess.Popen]:
    folder.mkdir()
    handler = next(iter(logging.getLogger().handlers), None)
    formatter = handler.formatter if handler is not None and handler.formatter is not None else None
    spec = {
        "parent": os.getpid(),
        "threads": plan.threads,
        "log_level": logging.getLogger().getEffectiveLevel(),
        "log_format": formatter._fmt if formatter is not None else None,
        "log_datefmt": formatter.datefmt if formatter is not None else None,
        "jobs": [{"role": job.role, "rows": str(job.rows), "config": job.config.to_dict(),
                  "output_dir": str(job.output_dir), "eval_rows": str(job.eval_rows) if job.eval_rows else None}
                 for job in plan.jobs],
    }
    (folder / "plan.json").write_text(json.dumps(spec), encoding="utf-8")
    # The thread count is set before torch starts, as OMP_NUM_THREADS=1 would set it for a run alone.
    env = {**os.environ, "OMP_NUM_THREADS": str(plan.threads), "MKL_NUM_THREADS": str(plan.threads)}
    process = subprocess.Popen([sys.executable, "-m", "dd_prompting.distill.training.workers", str(folder / "plan.json")],
                               env=env)
    return folder, process


def _stop(process: subprocess.Popen) -> None:
    """Interrupt a worker (it keeps its last checkpoint), and kill it if it does not stop within 30 s."""
    process.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    if process.poll() is None:
        process.kill()
        process.wait()


def _outcome(plan: WorkerPlan, folder: Path, process: subprocess.Popen) -> str | None:
    """None when the worker saved its students, else one sentence on what stopped it."""
    who = f"the worker training the {', '.join(plan.roles)} student{'s' if len(plan.jobs) > 1 else ''}"
    try:
        outcome = json.loads((folder / "outcome.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        outcome = None
    if process.returncode == 0 and outcome and not outcome.get("error"):
        return None
    if outcome and outcome.get("error"):
        return f"{who} failed: {outcome['error']}"
    if process.returncode is not None and process.returncode < 0:
        return f"{who} was stopped by signal {signal.Signals(-process.returncode).name}"
    return f"{who} exited with code {process.returncode} before saving them (its log is above)"


# --- the child's side ------------------------------------------------------------------------------


def _die_with(parent: int) -> None:
    """Make this process end when `parent` does, so that no orphan writes into a run directory nobody holds."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    else:
        def watch() -> None:
            while os.getppid() == parent:
                threading.Event().wait(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="parent-watch").start()
    if os.getppid() != parent:  # the parent was gone before the line above took effect
        os._exit(1)


def _child_main(plan_file: Path) -> int:
    spec = json.loads(plan_file.read_text(encoding="utf-8"))
    _die_with(spec["parent"])
    logging.basicConfig(level=spec["log_level"], format=spec["log_format"] or logging.BASIC_FORMAT,
                        datefmt=spec["log_datefmt"])
    outcome_file = plan_file.with_name("outcome.json")
    saved: list[str] = []
    try:
        import torch

        from dd_prompting.distill.training.trainer import train_student

        torch.set_num_threads(spec["threads"])
        for item in spec["jobs"]:
            job = StudentJob(role=item["role"], rows=Path(item["rows"]), config=TrainConfig(**item["config"]),
                             output_dir=Path(item["output_dir"]),
                             eval_rows=Path(item["eval_rows"]) if item["eval_rows"] else None)
            _train(train_student, job, progress_bar=False)
            saved.append(job.role)
    except KeyboardInterrupt:
        outcome_file.write_text(json.dumps({"saved": saved, "error": "interrupted"}), encoding="utf-8")
        return 130
    except Exception as err:  # reported to the parent, which names this worker's students
        logger.error("%s", traceback.format_exc())
        outcome_file.write_text(json.dumps({"saved": saved, "error": f"{type(err).__name__}: {err}"}), encoding="utf-8")
        return 1
    outcome_file.write_text(json.dumps({"saved": saved, "error": None}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main(Path(sys.argv[1])))
