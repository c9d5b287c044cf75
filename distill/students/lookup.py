"""Where a run directory keeps its students, and whether they are there (without loading a model)."""

from __future__ import annotations

import logging
from pathlib import Path

from dd_prompting.distill.students.artifacts import check_student

__all__ = ["student_roles", "check_run_students", "find_student"]

logger = logging.getLogger(__name__)



def student_roles(student: str) -> tuple[str, ...]:
    """The roles a run's "pair" or "cot" student is made of."""
    if student not in ("pair", "cot"):
        raise ValueError(f"student must be 'pair' or 'cot', got {student!r}")
    return ("cot",) if student == "cot" else ("decomposer", "solver")



def check_run_students(run_dir: str | Path, *, student: str = "pair") -> None:
    """Raise in one sentence unless `run_dir` holds the trained students `from_run` would load (no model loaded)."""
    for role in student_roles(student):
        check_student(find_student(run_dir, role), role=role)



def find_student(run_dir: str | Path, role: str) -> Path:
    """Where a run directory keeps a student: `run_dir/<role>` or `run_dir/students/<role>`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Student run directory not found: {run_dir}")
    for candidate in (run_dir / role, run_dir / "students" / role):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{run_dir} has no {role!r} student (looked in {role}/ and students/{role}/)")
