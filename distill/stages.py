"""The stages of a `dd-distill` run, each a function of the run directory: traces, build, train, evaluate.

Each stage reads what the stage before it wrote and writes its own files; a stage that produced
nothing usable raises `StageFailed`, so it is never recorded as finished. `finish` writes the report.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from dd_prompting.distill.config import ConfigError, RunConfig
from dd_prompting.distill.run_dir import EXPENSIVE_STAGES, STAGES, Run, is_main_process, write_json

__all__ = ["STAGE_FUNCTIONS", "StageFailed", "start_run", "run_stages", "stage_traces", "stage_build", "stage_train", "stage_evaluate",
           "check_models", "write_run_report", "finish"]

logger = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage ran but produced nothing usable; it is not marked finished."""


def stage_traces(run: Run, *, teacher=None, problems=None) -> None:
    """Training and held-out problems, then the teacher's traces of the training problems.

    The teacher and the `(train, held_out)` problems come from the run's config unless given (as
    `DecompositionDistillation` gives a DSPy program and a trainset).
    """
    from dd_prompting.distill.problems import write_problems
    from dd_prompting.distill.teachers import collect_traces, make_teacher

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
    from dd_prompting.distill.formats import build_rows, write_rows
    from dd_prompting.distill.teachers import SocraticTeacher
    from dd_prompting.distill.traces import read_trace_file

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
    """Train the decomposer, the solver and (unless train_cot is off) the CoT student, or just `roles`."""
    from dd_prompting.distill.train import train_student

    for role in run.roles if roles is None else roles:
        rows = run.data / f"{role}.jsonl"
        _require(rows, "build")
        eval_rows = run.data / "heldout" / f"{role}.jsonl"
        logger.info("Training the %s student", role)
        train_student(
            rows=rows,
            config=run.config.train_config(role),
            output_dir=run.student(role),
            role=role,
            eval_rows=eval_rows if eval_rows.is_file() else None,
        )
    if is_main_process():
        from dd_prompting.distill.report import plot_losses

        plot_losses({role: run.student(role) for role in run.roles}, run.dir / "loss.png")


def stage_evaluate(run: Run) -> None:
    """Held-out accuracy of the student pair, the CoT student and the teacher, with intervals and a paired test."""
    from dd_prompting.distill.heldout import evaluate_heldout

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


def make_problems(config: RunConfig, *, skipped: list[str] | None = None):
    """The training and held-out problems of a run, checked to be disjoint. With the run's `skip_malformed`,
    a data file's malformed lines are skipped and listed in `skipped` as "file:line: reason"."""
    from dd_prompting.distill.problems import generated_problems, gsm8k_problems, read_problems

    data = config.data

    def load(source: str, split: str, offset: int, limit: int | None):
        if source == "gsm8k":
            return gsm8k_problems(split, offset=offset, limit=limit)
        lines: list[tuple[int, str]] = []
        problems = read_problems(source, offset=offset, limit=limit, answer_type=data.answers,
                                 skip_malformed=config.skip_malformed, skipped=lines)
        if skipped is not None:
            skipped.extend(f"{source}:{line}: {reason}" for line, reason in lines)
        return problems

    if data.source == "generator":
        train = generated_problems(data.train_problems, seed=data.seed, config=data.generator, id_prefix="train")
    else:
        train = load(data.source, data.split, data.offset, data.train_problems)
    if data.resolved_eval_source == "generator":
        held_out = generated_problems(
            data.eval_problems, seed=data.seed + 1, config=data.eval_generator, exclude=train, id_prefix="heldout"
        )
    else:
        held_out = load(data.resolved_eval_source, data.eval_split, data.eval_offset, data.eval_problems)
    if not train or not held_out:
        raise ConfigError(f"data: got {len(train)} training and {len(held_out)} held-out problems; both must be > 0")
    overlap = {p.question for p in train} & {p.question for p in held_out}
    if overlap:
        raise ConfigError(
            f"data: {len(overlap)} held-out problems also appear among the training problems "
            f"(e.g. {next(iter(overlap))[:80]!r}); choose disjoint sources or offsets"
        )
    if config.teacher.kind == "socratic" and not any(p.subquestions for p in train):
        raise ConfigError(
            "teacher.kind = 'socratic' needs problems with annotated sub-questions: data.source = 'gsm8k' with "
            "data.split = 'test_socratic', or a JSONL file of Socratic solutions"
        )
    return train, held_out


def _filter(run: Run, traces, *, skipped: list[str] = ()):
    from dd_prompting.distill.traces import filter_traces

    teacher = run.config.teacher
    kept, report = filter_traces(
        traces,
        require_correct=teacher.require_correct,
        keep_duplicate_samples=teacher.keep_duplicate_samples,
        skipped=skipped,
    )
    write_json(run.dir / "trace_report.json", report.to_dict())
    return kept, report


def write_run_report(run: Run) -> dict[str, Any]:
    """Gather what the stages wrote into `metrics.json`, `report.md` and the plots."""
    from dd_prompting.distill.report import plot_accuracy, plot_losses, write_metrics, write_report

    teacher = run.config.teacher
    metrics: dict[str, Any] = {
        "run": run.dir.name,
        "teacher": {"kind": teacher.kind, "model": teacher.model,
                    "mode": teacher.mode if teacher.kind in ("api", "local") else None},
    }
    for name, path in (("traces", run.dir / "trace_report.json"), ("rows", run.data / "counts.json"),
                       ("evaluation", run.eval / "evaluation.json")):
        if path.is_file():
            metrics[name] = json.loads(path.read_text(encoding="utf-8"))
    students = {}
    for role in run.roles:
        meta = run.student(role) / "student.json"
        if meta.is_file():
            info = json.loads(meta.read_text(encoding="utf-8"))
            students[role] = {"base_model": info.get("base_model"), **info.get("train_stats", {})}
    if students:
        metrics["students"] = students
    metrics["equal_compute"] = run.config.equal_compute
    metrics["stage_seconds"] = {stage: info["seconds"] for stage, info in run.stages().items()}
    plot_losses({role: run.student(role) for role in run.roles}, run.dir / "loss.png")
    if "evaluation" in metrics:
        plot_accuracy(metrics["evaluation"], run.dir / "accuracy.png")
    write_metrics(metrics, run.dir / "metrics.json")
    write_report(run.dir, metrics)
    return metrics


def finish(run: Run) -> None:
    """Write the report and print the comparison."""
    from dd_prompting.distill.report import budget_sentence, comparison_table, paired_sentence

    metrics = write_run_report(run)
    if "evaluation" in metrics:
        print()
        print(comparison_table(metrics["evaluation"]))
        for sentence in (paired_sentence(metrics["evaluation"]),
                         budget_sentence(metrics.get("students") or {}, equal_compute=run.config.equal_compute)):
            if sentence:
                print(sentence)
    print(f"\nReport: {run.dir / 'report.md'}")


def start_run(run: Run, stages: tuple[str, ...]) -> None:
    """Refuse settings that contradict finished expensive stages, or models that can't be loaded; then record the config.

    Both checks come before anything is written, a trace built or a teacher called.
    """
    for stage in stages:
        changed = run.changed_settings(stage)
        if changed and stage in EXPENSIVE_STAGES:
            raise ConfigError(
                f"{run.dir}: the {stage} stage finished with other settings (changed: {', '.join(changed)}). "
                "Use a new run directory (--name or --run-dir), or `dd-distill run --force` to redo every stage here."
            )
    check_models(run, _pending(run, stages))
    try:
        run.dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise ConfigError(f"run directory {run.dir}: {err.strerror} ({err.filename}); output_dir and --run-dir "
                          "must name directories, not files") from err
    if is_main_process():
        run.config.save(run.dir / "config.json")


def check_models(run: Run, stages: tuple[str, ...]) -> None:
    """Raise `ModelNotAvailableError` (one sentence) if a model that `stages` will load can't be loaded now.

    That is a local teacher (`teacher.kind = 'local'`) for `traces`, and for `evaluate` when
    `eval.teacher` is set; and each student's base model and tokenizer for `train`. The bundled
    'smollm2' teacher and the 'tiny' students need nothing; `evaluate` without `train` needs the trained
    students. An API teacher is not checked here.
    """
    from dd_prompting.distill.heldout import check_trained_students
    from dd_prompting.model_loading import check_model_available

    config = run.config
    teacher = config.teacher
    needed: list[tuple[str, str | None]] = []
    if teacher.kind == "local" and teacher.model != "smollm2" and (
        "traces" in stages or ("evaluate" in stages and config.eval.teacher)
    ):
        needed.append((teacher.model, teacher.gguf_file))
    if "train" in stages:
        for role in run.roles:
            student = config.train_config(role)
            if not student.is_tiny:
                needed.append((student.model, student.gguf_file))
                if student.tokenizer and student.tokenizer != student.model:
                    needed.append((student.tokenizer, None))
    for model, gguf_file in dict.fromkeys(needed):  # each model once, in order
        check_model_available(model, gguf_file=gguf_file)
    if "evaluate" in stages and "train" not in stages:  # evaluate loads students trained by an earlier run
        check_trained_students(run)


def _pending(run: Run, stages: tuple[str, ...]) -> tuple[str, ...]:
    """`stages` from the first one not finished with the same settings on (a redone stage makes later ones stale)."""
    for index, stage in enumerate(stages):
        if not run.stages().get(stage) or run.changed_settings(stage):
            return stages[index:]
    return ()


def run_stages(run: Run, stages: tuple[str, ...] = STAGES, **inputs: Any) -> None:
    """Run `stages` in order, skipping those already finished with the same settings.

    The one driver of `dd-distill run` and `DecompositionDistillation.compile`, so a run started by
    either resumes in the other. `inputs` go to the stage functions that take them (`teacher` and
    `problems` to the traces stage).
    """
    import inspect

    start_run(run, stages)
    for stage in stages:
        if run.stages().get(stage) and not run.changed_settings(stage):
            logger.info("Stage %s already finished; skipping it.", stage)
            continue
        function = STAGE_FUNCTIONS[stage]
        accepted = inspect.signature(function).parameters
        started = time.monotonic()
        function(run, **{name: value for name, value in inputs.items() if name in accepted})
        run.mark_done(stage, time.monotonic() - started)
        # A stage redone makes the ones after it stale (except paid-for or trained results, checked above).
        for later in STAGES[STAGES.index(stage) + 1 :]:
            if later not in EXPENSIVE_STAGES:
                run.forget(later)


def _require(path: Path, stage: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the `{stage}` stage first (or `dd-distill run`).")


STAGE_FUNCTIONS = {"traces": stage_traces, "build": stage_build, "train": stage_train, "evaluate": stage_evaluate}
