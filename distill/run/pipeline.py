"""Running the stages: refuse what contradicts finished work, check the models, skip finished stages, report.

`run_stages` is the one driver of `dd-distill run` and `DecompositionDistillation.compile`, so a run
started by either resumes in the other; `finish` writes the run's report.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from dd_prompting.distill.run.directory import (
    EXPENSIVE_STAGES,
    STAGES,
    Run,
)
from dd_prompting.distill.run.run_config import ConfigError
from dd_prompting.distill.run.stages import STAGE_FUNCTIONS
from dd_prompting.distill.training.distributed import is_main_process

__all__ = ["write_run_report", "finish", "start_run", "check_models", "run_stages"]

logger = logging.getLogger(__name__)



def write_run_report(run: Run) -> dict[str, Any]:
    """Gather what the stages wrote into `metrics.json`, `report.md` and the plots."""
    from dd_prompting.distill.evaluate.run_report import (
        plot_accuracy,
        plot_losses,
        write_metrics,
        write_report,
    )

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
    from dd_prompting.distill.evaluate.run_report import (
        budget_sentence,
        comparison_table,
        paired_sentence,
    )

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
    from dd_prompting.distill.evaluate.heldout import check_trained_students

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
