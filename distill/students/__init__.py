"""Trained students at work in this process (no server): the decomposer + solver pipeline and the CoT student
(`pipelines`), their DSPy modules (`modules`), and where a run keeps them (`lookup`).

Step-by-step decoding with the key/value cache kept across steps is `generation`; a saved student's
directory is `artifacts`. `from dd_prompting.distill.students import ...` works as in 0.1.0.
"""

from dd_prompting.distill.students.lookup import check_run_students, find_student, student_roles
from dd_prompting.distill.students.modules import DecomposerModule, StudentModule
from dd_prompting.distill.students.pipelines import (
    CoTResult,
    CoTStudent,
    DecomposerStudent,
    StudentPipeline,
    StudentResult,
)

__all__ = [
    "StudentResult",
    "CoTResult",
    "DecomposerStudent",
    "DecomposerModule",
    "StudentPipeline",
    "CoTStudent",
    "StudentModule",
    "find_student",
    "check_run_students",
    "student_roles",
]
