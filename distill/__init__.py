"""Decomposition distillation: teacher traces -> fine-tuning rows -> a small decomposer and solver.

The stages live in their own modules (`teachers`, `traces`, `formats`, `train`, `students`) and the
`dd-distill` command (`dd_prompting.distill.cli`) runs them. Nothing is imported here, so importing the package stays light.
"""
