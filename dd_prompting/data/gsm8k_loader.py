"""GSM8K as DSPy examples: the bundled files (offline), or the `datasets` hub copy when online.

The package ships GSM8K's `train.jsonl`, `test.jsonl` and `test_socratic.jsonl` in the `gsm8k/`
folder beside this module (MIT, see `gsm8k/LICENSE`). `test_socratic` is `test` with Socratic
solutions (same problems, same order), which interleave sub-questions and steps:

    How many eggs does Janet sell? ** Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.
    #### 18
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import dspy

from dd_prompting.answers import extract_gold
from dd_prompting.data.jsonl import read_jsonl

__all__ = ["SocraticSolution", "parse_socratic", "load_gsm8k", "gsm8k_path", "GSM8K_SPLITS"]

GSM8K_SPLITS = ("train", "test", "test_socratic")
_HUB_CONFIGS = {"train": ("main", "train"), "test": ("main", "test"), "test_socratic": ("socratic", "test")}
_CALCULATOR = re.compile(r"<<[^>]*>>")


@dataclass(frozen=True)
class SocraticSolution:
    subquestions: list[str]
    steps: list[str]
    answer: str


def parse_socratic(solution: str) -> SocraticSolution:
    """Split a Socratic GSM8K solution into sub-questions, steps and the answer.

    Calculator annotations (`<<16-3-4=9>>`) are removed from the steps.

    >>> parsed = parse_socratic("How many? ** She has 2 + 3 = <<2+3=5>>5 cats.\\n#### 5")
    >>> parsed.subquestions, parsed.steps, parsed.answer
    (['How many?'], ['She has 2 + 3 = 5 cats.'], '5')
    """
    subquestions, steps = [], []
    for number, line in enumerate(solution.strip().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("####"):
            continue
        question, marker, step = line.partition(" ** ")
        if not marker:
            question, marker, step = line.partition("**")
        if not marker:
            raise ValueError(f"Line {number} of the solution has no 'sub-question ** step' separator: {line!r}")
        subquestions.append(question.strip())
        steps.append(_CALCULATOR.sub("", step).strip())
    return SocraticSolution(subquestions=subquestions, steps=steps, answer=extract_gold(solution))


def gsm8k_path(split: str) -> Path:
    """The bundled JSONL file of a GSM8K split."""
    _check_split(split)
    return Path(__file__).parent / "gsm8k" / f"{split}.jsonl"


def load_gsm8k(split: str = "test", *, limit: int | None = None, source: str = "bundled") -> list[dspy.Example]:
    """GSM8K problems as `dspy.Example(question, answer, solution)` with `question` as the input.

    `answer` is the canonical gold number. The `test_socratic` split also carries `subquestions`
    and `steps`. `source="hub"` reads `openai/gsm8k` through `datasets` (needs the network).
    """
    _check_split(split)
    if source == "bundled":
        path = gsm8k_path(split)
        rows = ((row, f"{path}:{line}") for line, row in islice(read_jsonl(path), limit))
    elif source == "hub":
        rows = _read_hub(split, limit)
    else:
        raise ValueError(f"source must be 'bundled' or 'hub', got {source!r}")
    return [_to_example(row, split, where) for row, where in rows]


def _check_split(split: str) -> None:
    if split not in GSM8K_SPLITS:
        raise ValueError(f"split must be one of {GSM8K_SPLITS}, got {split!r}")


def _read_hub(split: str, limit: int | None):
    from datasets import load_dataset

    config, hub_split = _HUB_CONFIGS[split]
    dataset = load_dataset("openai/gsm8k", config, split=hub_split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return [(row, f"openai/gsm8k[{config}/{hub_split}] row {index}") for index, row in enumerate(dataset)]


def _to_example(row: dict, split: str, where: str) -> dspy.Example:
    for field in ("question", "answer"):
        if not isinstance(row.get(field), str):
            raise ValueError(f"{where}: field '{field}' is missing or not a string")
    try:
        fields = {"question": row["question"], "answer": extract_gold(row["answer"]), "solution": row["answer"]}
        if split == "test_socratic":
            parsed = parse_socratic(row["answer"])
            fields.update(subquestions=parsed.subquestions, steps=parsed.steps)
    except ValueError as err:
        raise ValueError(f"{where}: field 'answer': {err}") from err
    return dspy.Example(**fields).with_inputs("question")
