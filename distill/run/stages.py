"""The four stages of a `dd-distill` run, each a function of the run directory: traces, build, train, evaluate.

Each stage reads what the stage before it wrote and writes its own files; a stage that produced
nothing usable raises `StageFailed`, so it is never recorded as finished.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from dd_prompting.distill.run.directory import Run, write_json
from dd_prompting.distill.teach.problem_sources import make_problems
from dd_prompting.distill.training.distributed import is_main_process

__all__ = ["StageFailed", "stage_traces", "stage_build", "stage_train", "stage_evaluate", "STAGE_FUNCTIONS"]

logger = logging.getLogger(__name__)



class StageFailed(RuntimeError):
    """A stage ran but produced nothing usable; it is not marked finished."""



def stage_traces(run: Run, *, teacher=None, problems=None) -> None:
    """Training and held-out problems, then the teacher's traces of the training problems.

    The teacher and the `(train, held_out)` problems come from the run's config unless given (as
    `DecompositionDistillation` gives a DSPy program and a trainset).
    """
    from dd_prompting.distill.teach.problem_sources import write_problems
    from dd_prompting.distill.teach.teachers import collect_traces, make_teacher

    config = run.config
    teacher = make_teacher(config) if teacher is None else teacher
    skipped: list[str] = []
    train, held_out = make_problems(config, skipped=skipped) if problems is None else problems
    write_problems(run.problems, train)
    write_problems(run.heldout, held_out)
    logger.info("%d training problems, %d held-out problems", len(train), len(held_out))
    try:
        traces = collect_traces(teacher, train, run.traces, retry_failed=config.teacher.retry_failed)
    finally:
        getattr(teacher, "close", lambda: None)()
    _, report = _filter(run, traces, skipped=skipped)
    if not report.kept:
        # Nothing usable (every call failed, say with a 401): the stage is not finished, so a rerun asks again.
        errors = sorted({t.error.split(":", 1)[0] for t in traces if t.error})
        first = next((t.error for t in traces if t.error), "no error recorded")
        raise StageFailed(
            f"traces: no usable trace from the teacher ({report.summary()}; first failure: {first[:300]}). "
            f"Fix the cause ({', '.join(errors) or 'see the log'}) and run the stage again; it is not marked done."
        )
    print(f"traces: {report.summary()}")



def stage_build(run: Run) -> None:
    """Filter the traces and write the rows of each role (and held-out rows for the loss curves)."""
    from dd_prompting.distill.rows.build import build_rows
    from dd_prompting.distill.rows.format import write_rows
    from dd_prompting.distill.teach.teachers import SocraticTeacher
    from dd_prompting.distill.teach.traces import read_trace_file

    config = run.config
    _require(run.traces, "traces")
    result = read_trace_file(run.traces, skip_malformed=config.skip_malformed)
    skipped = [entry for entry in _earlier_skipped(run) if not entry.startswith(f"{run.traces}:")]
    skipped += [f"{run.traces}:{line}: {reason}" for line, reason in result.skipped]
    kept, report = _filter(run, result.traces, skipped=skipped)
    if not kept:
        raise RuntimeError(f"No usable traces in {run.traces}: {report.summary()}")
    # Concurrent teachers append traces in the order they finish; rows in the problems' order make
    # the students the same on every run of the same config.
    if run.problems.is_file():
        order = {problem.id: index for index, problem in enumerate(run.read_problems(run.problems))}
        kept.sort(key=lambda trace: (order.get(trace.id, len(order)), trace.sample))
    rows = build_rows(kept, packed_solver=config.data.packed_solver)
    write_rows(rows, run.data)
    # Held-out rows (from the held-out problems' reference steps, when they have them) give the
    # training loss curves a held-out loss.
    socratic = SocraticTeacher(answer_type=config.data.answers)
    held_out = [trace for trace in socratic.traces(run.read_problems(run.heldout)[:200]) if trace.correct]
    if held_out:
        write_rows(build_rows(held_out, packed_solver=config.data.packed_solver), run.data / "heldout")
    counts = {role: len(role_rows) for role, role_rows in rows.items()}
    write_json(run.data / "counts.json", counts)
    print(f"build: {report.kept} traces -> " + ", ".join(f"{n} {role} rows" for role, n in counts.items()))



def stage_train(run: Run, *, roles: tuple[str, ...] | None = None) -> None:
    """Train the decomposer, the solver and (unless train_cot is off) the CoT student, or just `roles`.

    The students learn from their rows independently; on a CPU with two threads or more they train side by
    side, each with a share of the threads (`train_workers`; see `distill.training.schedule`).
    """
    import torch

    from dd_prompting.distill.training.schedule import StudentJob, plan_workers
    from dd_prompting.distill.training.trainer import is_trained
    from dd_prompting.distill.training.workers import train_students

    jobs = []
    for role in run.roles if roles is None else roles:
        rows = run.data / f"{role}.jsonl"
        _require(rows, "build")
        eval_rows = run.data / "heldout" / f"{role}.jsonl"
        jobs.append(StudentJob(role=role, rows=rows, config=run.config.train_config(role),
                               output_dir=run.student(role), eval_rows=eval_rows if eval_rows.is_file() else None))
    # Finished students are not trained again (resume); they take no worker.
    pending = [job for job in jobs if not is_trained(job.config, job.output_dir)]
    # Under torchrun every rank trains every student; on a GPU a student has the device to itself.
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 or torch.cuda.is_available()
    train_students(plan_workers(pending, threads=torch.get_num_threads(), workers=run.config.train_workers,
                                distributed=distributed))
    if is_main_process():
        from dd_prompting.distill.evaluate.run_report import plot_losses

        plot_losses({role: run.student(role) for role in run.roles}, run.dir / "loss.png")



def stage_evaluate(run: Run) -> None:
    """Held-out accuracy of the student pair, the CoT student and the teacher, with intervals and a paired test."""
    from dd_prompting.distill.evaluate.heldout import evaluate_heldout

    _require(run.heldout, "traces")
    if not run.read_problems(run.heldout):  # a DecompositionDistillation compile without a valset
        logger.warning("%s has no held-out problems: nothing to evaluate", run.heldout)
        return
    evaluate_heldout(run)



def _earlier_skipped(run: Run) -> list[str]:
    """The malformed lines an earlier stage skipped (the data files'), as its trace report lists them."""
    path = run.dir / "trace_report.json"
    try:
        return list(json.loads(path.read_text(encoding="utf-8")).get("skipped") or [])
    except (OSError, ValueError, AttributeError):
        return []



def _filter(run: Run, traces, *, skipped: list[str] = ()):
    from dd_prompting.distill.teach.traces import filter_traces

    teacher = run.config.teacher
    kept, report = filter_traces(
        traces,
        require_correct=teacher.require_correct,
        keep_duplicate_samples=teacher.keep_duplicate_samples,
        skipped=skipped,
    )
    write_json(run.dir / "trace_report.json", report.to_dict())
    return kept, report



def _require(path: Path, stage: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the `{stage}` stage first (or `dd-distill run`).")



STAGE_FUNCTIONS = {"traces": stage_traces, "build": stage_build, "train": stage_train, "evaluate": stage_evaluate}
