"""Data below both distill and evals: GSM8K, the one `Problem` type, JSONL files, and user data files.

- `gsm8k_loader`: the bundled GSM8K (or the hub copy) as DSPy examples; Socratic solutions parsed.
- `problems`: `Problem`, GSM8K problems with one id scheme, problem files.
- `jsonl`: reading, appending, repairing and writing JSONL, with one malformed-line policy.
- `files`: rows of a .jsonl, .json or .csv data file, each with its line number.

Nothing here imports torch.
"""

from dd_prompting.data.files import read_rows
from dd_prompting.data.gsm8k_loader import GSM8K_SPLITS, SocraticSolution, gsm8k_path, load_gsm8k, parse_socratic
from dd_prompting.data.jsonl import JsonlWriter, MalformedLineError, read_jsonl, repair_torn_tail, write_jsonl
from dd_prompting.data.problems import Problem, gsm8k_problems, read_problems, write_problems

__all__ = [
    "SocraticSolution",
    "parse_socratic",
    "load_gsm8k",
    "gsm8k_path",
    "GSM8K_SPLITS",
    "Problem",
    "gsm8k_problems",
    "read_problems",
    "write_problems",
    "MalformedLineError",
    "read_jsonl",
    "JsonlWriter",
    "repair_torn_tail",
    "write_jsonl",
    "read_rows",
]
