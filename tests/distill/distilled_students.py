"""The session's DecompositionDistillation settings, shared by conftest.py and the teleprompter tests."""

import os
from pathlib import Path

SEED = int(os.environ.get("DD_LEARNING_SEED", "0"))
# Fixed step counts (not a time budget), so the trained students and the accuracy are deterministic.
STEPS = {"decomposer": 600, "solver": 1000, "cot": 40}


def distillation(teacher_lm, run_dir: Path, cache_dir: Path, **settings):
    """The session's DecompositionDistillation settings (tiny students, the fixed steps), with `settings` on top."""
    from dd_prompting.distill.run.teleprompter import DecompositionDistillation

    options = dict(
        teacher=teacher_lm, student="tiny", run_dir=run_dir, seed=SEED, cache_dir=str(cache_dir), threads=4,
        train_cot=True, train={"logging_steps": 50, "save_steps": 10_000},
        decomposer={"max_steps": STEPS["decomposer"]}, solver={"max_steps": STEPS["solver"]},
        cot={"max_steps": STEPS["cot"]}, progress=False,
    )
    return DecompositionDistillation(**{**options, **settings})
