"""Every doctest in the package runs: one test per module under `dd_prompting`.

The modules are imported by their installed names (`dd_prompting.distill.training.trainer`, not `distill.training.trainer`),
which is why this does not use pytest's `--doctest-modules`: that imports files by path, so the
`distill/` and `evals/` directories would load a second copy of each module under another name.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

PACKAGES = ("dd_prompting", "dd_prompting.distill", "dd_prompting.evals", "dd_prompting.models", "dd_prompting.data")


def _module_names() -> list[str]:
    names: set[str] = set()
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None:  # dd_prompting.data is a module, not yet a package, on some branches
            continue
        names.add(package)
        if spec.submodule_search_locations is None:
            continue
        for info in pkgutil.walk_packages(spec.submodule_search_locations, prefix=f"{package}."):
            names.add(info.name)
    return sorted(name for name in names if name.rpartition(".")[2] != "__main__")


MODULES = _module_names()


def test_every_package_is_walked():
    assert {"dd_prompting.answers", "dd_prompting.distill.students", "dd_prompting.evals.config"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    report: list[str] = []
    for test in finder.find(module, name):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}:\n" + "".join(report)
