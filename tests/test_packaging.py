"""What a wheel holds: every package folder of the source tree is listed in pyproject.toml.

setuptools' `find` can't map the top-level `distill/` and `evals/` folders onto `dd_prompting.distill` and
`dd_prompting.evals`, so pyproject.toml lists the packages by hand; this fails when a folder is left out
(the 0.1.0 wheel lacked `dd_prompting/local`). `scripts/check_install.sh`, run by CI, installs the wheel into a
fresh environment and imports every module from outside the source tree.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _package_folders() -> dict[str, Path]:
    """Every folder holding Python modules under the three roots, by the package name it installs as."""
    roots = {"dd_prompting": ROOT / "dd_prompting", **{name: ROOT / path
                                                       for name, path in SETUPTOOLS["package-dir"].items()}}
    found = {}
    for name, root in roots.items():
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            if "__pycache__" in folder.parts or not any(folder.glob("*.py")):
                continue
            found[".".join([name, *folder.relative_to(root).parts])] = folder
    return found


def test_every_package_folder_is_in_the_wheel():
    folders = _package_folders()
    listed = set(SETUPTOOLS["packages"])
    missing = sorted(set(folders) - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml, or the wheel lacks them"
    assert not sorted(listed - set(folders)), "pyproject.toml lists packages that have no folder"


def test_every_package_folder_is_a_regular_package():
    # A folder without __init__.py is a namespace package: importable from the tree, easy to leave out of a wheel.
    assert [str(folder) for folder in _package_folders().values() if not (folder / "__init__.py").is_file()] == []


def test_the_version_is_the_installed_distributions():
    import dd_prompting

    assert dd_prompting.__version__ == PYPROJECT["project"]["version"]
