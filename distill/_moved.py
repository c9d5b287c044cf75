"""Old module paths of `dd_prompting.distill` (0.1.0's flat layout) that still resolve, with a warning.

Each old module is a file of three lines whose `__getattr__` finds a name in the modules it moved to and
warns once per name, naming the new path. They go in 0.3.0.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["moved_module_getattr", "warn_moved"]


def warn_moved(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new} in dd-prompting 0.2.0; the old path goes in 0.3.0",
                  DeprecationWarning, stacklevel=3)


def moved_module_getattr(old_module: str, new_modules: list[str]) -> Callable[[str], Any]:
    """A module `__getattr__` that finds `name` in `new_modules` and warns that `old_module.name` moved there."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for module_name in new_modules:
            module = importlib.import_module(module_name)
            if hasattr(module, name):
                warn_moved(f"{old_module}.{name}", f"{module_name}.{name}")
                return getattr(module, name)
        raise AttributeError(f"module {old_module!r} has no attribute {name!r}")

    return __getattr__
