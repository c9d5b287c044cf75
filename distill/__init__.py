"""Decomposition distillation: teacher traces -> fine-tuning rows -> small local students, by stage.

    teach/      problems and teachers -> decomposition traces (traces.jsonl)
    rows/       the students' text format, and training rows built from traces
    training/   the transformers Trainer on those rows -> saved students (and TransformersProvider)
    students/   trained students at work, in this process: pipelines, DSPy modules, lookup in a run
    evaluate/   held-out evaluation and the run's report
    run/        a run directory, its config, the stages and their driver, `dd-distill`, DecompositionDistillation

The names users import are here, loaded on first use (`from dd_prompting.distill import StudentModule`
imports no torch; `train_student` imports the training stack when it is used).
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it: the one table behind `__all__` and `__getattr__`.
_PUBLIC = {
    "DecompositionDistillation": "dd_prompting.distill.run.teleprompter",
    "RunConfig": "dd_prompting.distill.run.run_config",
    "Run": "dd_prompting.distill.run.directory",
    "run_stages": "dd_prompting.distill.run.pipeline",
    "StudentModule": "dd_prompting.distill.students.modules",
    "DecomposerModule": "dd_prompting.distill.students.modules",
    "StudentPipeline": "dd_prompting.distill.students.pipelines",
    "DecomposerStudent": "dd_prompting.distill.students.pipelines",
    "CoTStudent": "dd_prompting.distill.students.pipelines",
    "find_student": "dd_prompting.distill.students.lookup",
    "ServedStudentPipeline": "dd_prompting.distill.serving.served_students",
    "ServedCoTStudent": "dd_prompting.distill.serving.served_students",
    "train_student": "dd_prompting.distill.training.trainer",
    "TrainConfig": "dd_prompting.distill.training.train_config",
    "TransformersProvider": "dd_prompting.distill.training.provider",
    "read_traces": "dd_prompting.distill.teach.traces",
    "Trace": "dd_prompting.distill.teach.traces",
    "generate_problems": "dd_prompting.distill.teach.generator",
    "build_rows": "dd_prompting.distill.rows.build",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'dd_prompting.distill' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
