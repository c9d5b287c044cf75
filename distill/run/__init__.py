"""A `dd-distill` run: its directory and config, the four stages and their driver, the `dd-distill` command and
`DecompositionDistillation`, the same run as a DSPy teleprompter.
"""
