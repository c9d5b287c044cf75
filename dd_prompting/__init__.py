"""dd-prompting: decomposition prompting and distillation for DSPy.

`DecomposedSolver` drops into a DSPy program in place of `dspy.ChainOfThought`. `local_lm` runs a
transformers model in process as a `dspy.LM` (torch is imported only then).
"""

import importlib as _importlib
from importlib import metadata as _metadata

from dd_prompting.answers import (
    INVALID,
    answers_match,
    canonical_number,
    extract_answer,
    extract_gold,
    numeric_match,
    numeric_match_strict,
)
from dd_prompting.answer_types import AnswerType
from dd_prompting.choices import choice_metric, extract_choice, extract_yes_no, yes_no_match, yes_no_match_strict
from dd_prompting.data import SocraticSolution, load_gsm8k, parse_socratic
from dd_prompting.demos import WORKED_EXAMPLES, YES_NO_WORKED_EXAMPLES, WorkedExample

# The deprecated module path that 0.1.0's saved programs name is loaded before the function of the same name:
# a submodule imported later would set the package's attribute `local_lm` to the module.
_importlib.import_module("dd_prompting.local_lm")
from dd_prompting.local import TransformersEngine, local_lm, smollm2_lm  # noqa: E402
from dd_prompting.modules import DecomposedSolver
from dd_prompting.plain_text_adapter import PlainTextAdapter
from dd_prompting.signatures import AnswerSubquestion, Decompose, SolveWithSubquestions

try:
    __version__ = _metadata.version("dd-prompting")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "unknown"

__all__ = [
    "__version__",
    "Decompose",
    "SolveWithSubquestions",
    "AnswerSubquestion",
    "DecomposedSolver",
    "WorkedExample",
    "WORKED_EXAMPLES",
    "YES_NO_WORKED_EXAMPLES",
    "PlainTextAdapter",
    "TransformersEngine",
    "local_lm",
    "smollm2_lm",
    "INVALID",
    "extract_answer",
    "extract_gold",
    "canonical_number",
    "answers_match",
    "numeric_match",
    "numeric_match_strict",
    "extract_choice",
    "extract_yes_no",
    "choice_metric",
    "yes_no_match",
    "yes_no_match_strict",
    "AnswerType",
    "SocraticSolution",
    "load_gsm8k",
    "parse_socratic",
]
