"""Deprecated path `dd_prompting.distill.formats`: moved to `dd_prompting.distill.rows.format` and `dd_prompting.distill.rows.build` in 0.2.0; it goes in 0.3.0."""

from dd_prompting.distill._moved import moved_module_getattr

__getattr__ = moved_module_getattr(__name__, ['dd_prompting.distill.rows.format', 'dd_prompting.distill.rows.build'])
