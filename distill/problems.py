"""Where a teacher's problems come from: GSM8K, a JSONL file, or the built-in generator.

A `Problem` is a question, its gold answer, and, when the data has one, a reference
decomposition (GSM8K's Socratic solutions, the generator's exact steps) that the annotated
teachers turn into traces as they are.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dd_prompting.distill.generator import GeneratorConfig, generate_problems
from dd_prompting.distill.traces import Trace

__all__ = [
    "Problem",
    "generated_problems",
    "gsm8k_problems",
    "read_problems",
    "write_problems",
    "problems_from_traces",
]


@dataclass(frozen=True)
class Problem:
    """One problem for a teacher. `subquestions`/`steps` hold a reference decomposition, if any."""

    id: str
    question: str
    gold: str
    subquestions: tuple[str, ...] | None = None
    steps: tuple[str, ...] | None = None


def problems_from_traces(traces: list[Trace]) -> list[Problem]:
    """Problems carrying the traces' decompositions as their reference (for the generator's output)."""
    return [
        Problem(trace.id, trace.question, trace.gold, tuple(trace.subquestions), tuple(trace.subanswers))
        for trace in traces
    ]


def generated_problems(
    n: int, *, seed: int, config: GeneratorConfig | None = None, exclude: list[Problem] = (), id_prefix: str = "gen"
) -> list[Problem]:
    """`n` generated problems with their exact decompositions, none sharing arithmetic with `exclude`."""
    excluded = [
        Trace(p.id, p.question, p.gold, list(p.subquestions or ()), list(p.steps or ())) for p in exclude
    ]
    traces = generate_problems(n, seed=seed, config=config, exclude=excluded, id_prefix=id_prefix)
    return problems_from_traces(traces)


def gsm8k_problems(split: str, *, offset: int = 0, limit: int | None = None, source: str = "bundled") -> list[Problem]:
    """GSM8K problems `offset .. offset+limit` of a split, ids "gsm8k-<split>-<index>".

    The `test_socratic` split carries the Socratic sub-questions and steps (calculator
    annotations removed); the others carry none.
    """
    from dd_prompting import load_gsm8k

    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    examples = load_gsm8k(split, limit=None if limit is None else offset + limit, source=source)[offset:]
    problems = []
    for index, example in enumerate(examples, start=offset):
        subquestions = example.get("subquestions")
        steps = example.get("steps")
        problems.append(
            Problem(
                id=f"gsm8k-{split}-{index}",
                question=example.question,
                gold=example.answer,
                subquestions=tuple(subquestions) if subquestions is not None else None,
                steps=tuple(steps) if steps is not None else None,
            )
        )
    return problems


def write_problems(path: str | os.PathLike, problems: list[Problem]) -> Path:
    """Write problems as GSM8K-style JSONL (`id`, `question`, `answer`), readable by `read_problems`.

    A reference decomposition is written as a Socratic solution ("sub-question ** step" lines,
    then "#### gold"); without one the answer is just "#### gold".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for problem in problems:
            lines = []
            if problem.subquestions and problem.steps:
                lines = [f"{_one_line(q)} ** {_one_line(s)}" for q, s in zip(problem.subquestions, problem.steps)]
            solution = "\n".join([*lines, f"#### {problem.gold}"])
            handle.write(json.dumps({"id": problem.id, "question": problem.question, "answer": solution}) + "\n")
    tmp.replace(path)  # never a half-written file under the real name
    return path


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_problems(path: str | os.PathLike, *, offset: int = 0, limit: int | None = None) -> list[Problem]:
    """Problems from a JSONL file in GSM8K's format: `question`, `answer` (a solution ending "#### N").

    An optional `id` names a problem (else "<file stem>-<line>"). A Socratic solution
    ("sub-question ** step" lines) gives a reference decomposition. A malformed line is an error
    naming the file and line.
    """
    from dd_prompting import extract_gold, parse_socratic

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Problem file not found: {path}")
    problems: list[Problem] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("expected a JSON object")
                question, solution = row.get("question"), row.get("answer")
                if not isinstance(question, str) or not isinstance(solution, str):
                    raise ValueError("needs string fields 'question' and 'answer'")
                subquestions = steps = None
                if "**" in solution:
                    parsed = parse_socratic(solution)
                    subquestions, steps, gold = tuple(parsed.subquestions), tuple(parsed.steps), parsed.answer
                else:
                    gold = extract_gold(solution)
            except (json.JSONDecodeError, ValueError) as err:
                raise ValueError(f"{path}:{number}: not a valid problem: {err}") from err
            problems.append(
                Problem(str(row.get("id") or f"{path.stem}-{number}"), question, gold, subquestions, steps)
            )
    end = None if limit is None else offset + limit
    return problems[offset:end]
