"""Deprecated path `dd_prompting.distill.stages`: moved to `dd_prompting.distill.run.stages` and `dd_prompting.distill.run.pipeline` and `dd_prompting.distill.teach.problem_sources` in 0.2.0; it goes in 0.3.0."""

from dd_prompting.distill._moved import moved_module_getattr

__getattr__ = moved_module_getattr(__name__, ['dd_prompting.distill.run.stages', 'dd_prompting.distill.run.pipeline', 'dd_prompting.distill.teach.problem_sources'])
