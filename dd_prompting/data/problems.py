"""The one `Problem` type that distill's teachers and the eval harness both take, and where problems come from.

A problem is a question, its canonical gold answer and, when the data has them, a worked
solution and a reference decomposition (`subquestions` with the annotated `steps` that answer
them: GSM8K's Socratic solutions, the generator's exact steps).

GSM8K problems have one id scheme, "gsm8k-<split>-<index>". `test_socratic` is `test` with Socratic
solutions, so its problems take the ids of the same problems in `test` ("gsm8k-test-12"): a demo
pool drawn from one split can leave out the problems evaluated from the other by id alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from dd_prompting.answer_types import AnswerType
from dd_prompting.answers import INVALID, extract_gold
from dd_prompting.data.gsm8k_loader import load_gsm8k, parse_socratic
from dd_prompting.data.jsonl import read_jsonl, write_jsonl

__all__ = ["Problem", "gsm8k_problems", "read_problems", "write_problems"]


@dataclass(frozen=True)
class Problem:
    """One question with its canonical gold answer (a number string such as "18").

    `solution` is the worked solution as the data gives it (GSM8K's, calculator annotations and
    all), if any; `subquestions[i]` is answered by the step sentence `steps[i]`. Lists are stored
    as tuples, so problems stay hashable.
    """

    id: str
    question: str
    gold: str
    solution: str | None = None
    subquestions: tuple[str, ...] | None = None
    steps: tuple[str, ...] | None = None

    def __post_init__(self):
        for name in ("subquestions", "steps"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))


def gsm8k_problems(split: str, *, offset: int = 0, limit: int | None = None, source: str = "bundled") -> list[Problem]:
    """GSM8K problems `offset .. offset+limit` of a split, with ids "gsm8k-<split>-<index>".

    `test_socratic` problems carry their Socratic sub-questions and steps (calculator annotations
    removed) and the ids of the same problems in `test`.

    >>> [p.id for p in gsm8k_problems("test_socratic", offset=12, limit=2)]
    ['gsm8k-test-12', 'gsm8k-test-13']
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    examples = load_gsm8k(split, limit=None if limit is None else offset + limit, source=source)[offset:]
    id_split = "test" if split == "test_socratic" else split
    return [
        Problem(
            id=f"gsm8k-{id_split}-{index}",
            question=example.question,
            gold=example.answer,
            solution=example.get("solution") or None,
            subquestions=example.get("subquestions"),
            steps=example.get("steps"),
        )
        for index, example in enumerate(examples, start=offset)
    ]


def write_problems(path: str | os.PathLike, problems: list[Problem]) -> Path:
    """Write problems as GSM8K-style JSONL (`id`, `question`, `answer`), readable by `read_problems`.

    `answer` is the problem's solution if it has one; else its reference decomposition as a
    Socratic solution ("sub-question ** step" lines, then "#### gold"), or just "#### gold".
    The file is replaced atomically.
    """
    return write_jsonl(path, ({"id": p.id, "question": p.question, "answer": _answer_text(p)} for p in problems))


def _answer_text(problem: Problem) -> str:
    if problem.solution:
        return problem.solution
    lines = []
    if problem.subquestions and problem.steps:
        lines = [f"{_one_line(q)} ** {_one_line(s)}" for q, s in zip(problem.subquestions, problem.steps)]
    return "\n".join([*lines, f"#### {problem.gold}"])


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_problems(
    path: str | os.PathLike, *, offset: int = 0, limit: int | None = None, skip_malformed: bool = False,
    answer_type: AnswerType | None = None, skipped: list | None = None,
) -> list[Problem]:
    """Problems from a JSONL file in GSM8K's format: `question`, `answer` (a solution ending "#### N").

    An optional `id` names a problem (else "<file stem>-<line>"). A Socratic solution
    ("sub-question ** step" lines) gives a reference decomposition. With a yes/no or choice
    `answer_type`, the text after "####" is the option ("#### yes"). A malformed line is a
    `MalformedLineError` naming the file and line (or, with `skip_malformed`, is logged, skipped and
    appended to `skipped` as a `(line, reason)` pair).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Problem file not found: {path}")
    parse = partial(_problem_from_row, answer_type=answer_type or AnswerType())
    problems = [
        _with_default_id(problem, f"{path.stem}-{line}")
        for line, problem in read_jsonl(path, parse=parse, skip_malformed=skip_malformed, skipped=skipped)
    ]
    end = None if limit is None else offset + limit
    return problems[offset:end]


def _problem_from_row(row: dict[str, Any], *, answer_type: AnswerType) -> Problem:
    question, solution = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not isinstance(solution, str):
        raise ValueError("needs string fields 'question' and 'answer'")
    if answer_type.kind != "number":
        text, marker, gold = solution.rpartition("####")
        answer = answer_type.read_gold(gold.strip())
        if not marker or answer == INVALID:
            raise ValueError(f"the answer must end with '#### <one of {', '.join(answer_type.options)}>', "
                             f"got {solution[-60:]!r}")
        socratic = parse_socratic(f"{text}#### 0") if "**" in text else None
        return Problem(str(row.get("id") or ""), question, answer, solution,
                       socratic.subquestions if socratic else None, socratic.steps if socratic else None)
    if "**" in solution:
        parsed = parse_socratic(solution)
        return Problem(str(row.get("id") or ""), question, parsed.answer, solution, parsed.subquestions, parsed.steps)
    return Problem(str(row.get("id") or ""), question, extract_gold(solution), solution)


def _with_default_id(problem: Problem, default: str) -> Problem:
    return problem if problem.id else replace(problem, id=default)
