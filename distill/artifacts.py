"""Deprecated path `dd_prompting.distill.artifacts`: moved to `dd_prompting.distill.students.artifacts` in 0.2.0; it goes in 0.3.0."""

from dd_prompting.distill._moved import moved_module_getattr

__getattr__ = moved_module_getattr(__name__, ['dd_prompting.distill.students.artifacts'])
