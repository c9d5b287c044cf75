"""dd_prompting.distill by stage: its public names without torch, and 0.1.0's module paths for one more release."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import dd_prompting.distill as distill

DISTILL = Path(distill.__file__).parent
# 0.1.0's flat modules, now three-line files that point at their new homes.
OLD_PATHS = sorted(path.stem for path in DISTILL.glob("*.py") if path.stem not in ("__init__", "__main__", "_moved"))


def test_every_module_lives_in_a_stage_folder_but_the_old_paths():
    folders = sorted(p.name for p in DISTILL.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert folders == ["evaluate", "rows", "run", "serving", "students", "teach", "training"]
    for stem in OLD_PATHS:
        assert "moved_module_getattr" in (DISTILL / f"{stem}.py").read_text(), stem  # a pointer, not code


def test_the_public_names_import_without_torch():
    code = ("import sys\nfrom dd_prompting.distill import (StudentModule, StudentPipeline, CoTStudent, DecomposerStudent,"
            " DecomposerModule, DecompositionDistillation, TrainConfig, TransformersProvider, read_traces, RunConfig)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]
    for name in distill.__all__:
        assert getattr(distill, name) is not None


@pytest.mark.parametrize("stem", OLD_PATHS)
def test_an_old_module_path_still_resolves_with_a_warning_naming_the_new_one(stem):
    module = importlib.import_module(f"dd_prompting.distill.{stem}")
    names = [name for name in ("StudentModule", "build_rows", "train_student", "TrainConfig", "RunConfig", "Run",
                               "read_traces", "DSPyTeacher", "generate_problems", "evaluate_heldout", "write_report",
                               "load_student", "PackingCollator", "tokenize_rows", "build_tiny_model",
                               "TransformersProvider", "DecompositionDistillation", "run_stages", "generate",
                               "generated_problems", "main", "stage_traces")
             if _has(module, name)]
    assert names, f"dd_prompting.distill.{stem} resolves none of the names it used to hold"
    with pytest.warns(DeprecationWarning, match=rf"dd_prompting\.distill\.{stem}\.{names[0]} moved to "
                                                rf"dd_prompting\.distill\.[a-z_]+\.[a-z_]+\.{names[0]}"):
        getattr(module, names[0])


def _has(module, name):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return hasattr(module, name)


@pytest.mark.parametrize("module", ["dd_prompting.distill", "dd_prompting.distill.cli"])
def test_python_dash_m_runs_dd_distill(module):
    done = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-m", module, "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Ask the teacher for decomposition traces" in done.stdout, done.stderr
    assert ("moved to dd_prompting.distill" in done.stderr) == module.endswith(".cli")
