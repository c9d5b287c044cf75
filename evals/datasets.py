"""Problems to evaluate: the bundled GSM8K, or a JSON/JSONL/CSV file mapped onto question and answer.

A question may be built from several fields (SVAMP's `Body` + `Question`). A bad row (not JSON, a
field missing or empty, a gold answer that is not one) fails the load with the file, line and field
named, before any model is called; with `skip_malformed` it is left out instead and listed, as
`path:line: reason`, in `Dataset.skipped` (and so in the run's report). Problems are `dd_prompting.data`'s
`Problem`, the type distill's teachers take too; files are read by `dd_prompting.data.read_rows`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dd_prompting.answer_types import AnswerType
from dd_prompting.data import Problem, gsm8k_path, gsm8k_problems, read_rows
from dd_prompting.data.jsonl import on_malformed
from dd_prompting.evals.config import DatasetConfig

# `Problem` stays importable from here: evals/cell.py imports it from this module.
__all__ = ["Problem", "Dataset", "load_dataset", "load_demo_pool", "select_problems"]

_CALCULATOR = re.compile(r"<<[^>]*>>")


@dataclass
class Dataset:
    name: str
    problems: list[Problem]
    source: str
    sha256: str
    total: int = 0
    notes: list[str] = field(default_factory=list)
    answer_type: AnswerType = field(default_factory=AnswerType)
    skipped: list[str] = field(default_factory=list)  # malformed lines left out: "path:line: reason"

    @property
    def selection_sha256(self) -> str:
        """A hash of exactly the problems evaluated (ids, questions, golds), to tell samples apart."""
        digest = hashlib.sha256()
        for problem in self.problems:
            digest.update(json.dumps([problem.id, problem.question, problem.gold], ensure_ascii=False).encode())
        return digest.hexdigest()


def _file_sha256(path: Path | Any) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def select_problems(problems: list[Problem], *, limit: int | None, seed: int) -> list[Problem]:
    """`limit` problems sampled with `seed`, kept in file order; all of them without a limit."""
    if limit is None or limit >= len(problems):
        return list(problems)
    chosen = sorted(random.Random(seed).sample(range(len(problems)), limit))
    return [problems[index] for index in chosen]


def load_dataset(config: DatasetConfig, *, limit: int | None = None, seed: int = 0,
                 skip_malformed: bool = False) -> Dataset:
    """Load and validate every row, then sample `limit` of them with `seed`.

    A malformed row raises `MalformedLineError` (file, line, reason); with `skip_malformed` it is
    logged, left out and listed in `Dataset.skipped`.
    """
    skipped: list[str] = []
    if config.kind == "gsm8k":
        problems = gsm8k_problems(config.split)
        source = f"dd_prompting/data/gsm8k/{config.split}.jsonl (bundled)"
        sha = _file_sha256(gsm8k_path(config.split))
        answer_type = AnswerType()
    else:
        path = Path(config.path)
        answer_type = _answer_type(path, config, skip_malformed=skip_malformed)
        problems = _file_problems(path, config, answer_type, skip_malformed=skip_malformed, skipped=skipped)
        source, sha = str(path), _file_sha256(path)
    selected = select_problems(problems, limit=limit, seed=seed)
    return Dataset(name=config.name, problems=selected, source=source, sha256=sha, total=len(problems),
                   answer_type=answer_type, skipped=skipped)


def _answer_type(path: Path, config: DatasetConfig, *, skip_malformed: bool = False) -> AnswerType:
    """The dataset's answer type; a 'choice' dataset without `choices` takes the distinct gold answers."""
    if config.answer_type != "choice" or config.choices:
        return AnswerType(config.answer_type, choices=tuple(config.choices or ()))
    options = {}
    for line, row in read_rows(path, skip_malformed=skip_malformed):  # skipped lines are counted by _file_problems
        value = row.get(config.answer)
        if skip_malformed and (value is None or not _text(value).strip()):
            continue
        options[_text(_require(row, config.answer, f"{path}:{line}")).strip()] = None
    if len(options) < 2:
        raise ValueError(f"{path}: field {config.answer!r}: answer_type 'choice' needs two or more distinct answers "
                         f"to take as the options, found {list(options)}; set `choices`")
    return AnswerType("choice", choices=tuple(options))


def load_demo_pool(config: DatasetConfig, *, socratic: bool, exclude: set[str],
                   answer_type: AnswerType | None = None, skip_malformed: bool = False,
                   skipped: list[str] | None = None) -> tuple[list[Problem], str]:
    """Solved problems to draw few-shot demos from, and a note saying where they come from.

    GSM8K demos come from the train split; demos with sub-questions (for decomposition) come from the
    Socratic test annotations, leaving out every problem being evaluated (`test_socratic` problems
    have the ids of the same `test` problems, so the ids alone tell). A file dataset draws its
    demos from `demos_path`.
    """
    if config.kind == "gsm8k":
        if socratic:
            pool = [p for p in gsm8k_problems("test_socratic") if p.id not in exclude]
            return pool, "GSM8K test_socratic rows that are not evaluated in this run"
        split = "train" if config.split != "train" else "test"
        pool = [replace(p, solution=_clean_solution(p.solution)) for p in gsm8k_problems(split)
                if p.id not in exclude and p.solution]
        return pool, f"GSM8K {split} split"
    if socratic:
        raise ValueError(
            f"datasets[{config.name}]: decomposition demos need sub-questions, which only GSM8K's Socratic split "
            "has; use demos = 'builtin' or 0 for this dataset"
        )
    if not config.demos_path:
        raise ValueError(
            f"datasets[{config.name}]: few-shot demos need demos_path, a file of solved examples with the same "
            "field mapping"
        )
    path = Path(config.demos_path)
    answer_type = answer_type or _answer_type(path, config, skip_malformed=skip_malformed)
    pool = [p for p in _file_problems(path, config, answer_type, skip_malformed=skip_malformed, skipped=skipped)
            if p.id not in exclude]
    return pool, f"{config.demos_path}"


def _clean_solution(solution: str) -> str:
    """A GSM8K solution as reasoning: without calculator annotations and the '#### N' line."""
    lines = [line for line in solution.strip().splitlines() if not line.strip().startswith("####")]
    text = _CALCULATOR.sub("", "\n".join(lines))
    return "\n".join(line.split(" ** ", 1)[-1] for line in text.splitlines()).strip()


def _file_problems(path: Path, config: DatasetConfig, answer_type: AnswerType, *, skip_malformed: bool = False,
                   skipped: list[str] | None = None) -> list[Problem]:
    template = config.question_template
    template_fields = _template_fields(template, path) if template else []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    bad: list[tuple[int, str]] = []
    for line, row in read_rows(path, skip_malformed=skip_malformed, skipped=bad):
        try:
            problem = _problem(row, line, path, config, answer_type, template_fields)
        except _BadRow as err:
            on_malformed(path, line, str(err), skip_malformed=skip_malformed, skipped=bad)
            continue
        if problem.id in seen:
            raise ValueError(f"{path}:{line}: field {config.id!r}: id {problem.id!r} repeats line {seen[problem.id]}")
        seen[problem.id] = line
        problems.append(problem)
    if skipped is not None:
        skipped += [f"{path}:{line}: {reason}" for line, reason in sorted(bad)]
    if not problems:
        raise ValueError(f"{path}: the file has no rows" + (f" left after skipping {len(bad)} malformed lines"
                                                            if bad else ""))
    return problems


class _BadRow(ValueError):
    """A row whose fields do not make a problem: a malformed line (the message is its reason)."""


def _problem(row: dict[str, Any], line: int, path: Path, config: DatasetConfig, answer_type: AnswerType,
             template_fields: list[str]) -> Problem:
    try:
        return _row_problem(row, line, path, config, answer_type, template_fields)
    except ValueError as err:  # the row's own reason, without the place `on_malformed` names again
        raise _BadRow(str(err).removeprefix(f"{path}:{line}: ")) from err


def _row_problem(row: dict[str, Any], line: int, path: Path, config: DatasetConfig, answer_type: AnswerType,
                 template_fields: list[str]) -> Problem:
    where = f"{path}:{line}"
    template = config.question_template
    if template:
        for name in template_fields:
            _require(row, name, where)
        question = template.format_map({key: _text(value) for key, value in row.items()}).strip()
    else:
        question = " ".join(_text(_require(row, name, where)).strip() for name in config.question).strip()
    if not question:
        fields = template_fields or config.question
        raise ValueError(f"{where}: field {fields[0]!r}: the question is empty")
    raw_answer = _require(row, config.answer, where)
    gold = _gold(raw_answer, config.answer_format, answer_type, f"{where}: field {config.answer!r}")
    example_id = _text(_require(row, config.id, where)).strip() if config.id else f"line-{line}"
    if not example_id:
        raise ValueError(f"{where}: field {config.id!r}: the id is empty")
    solution = None
    if config.solution:
        solution = _text(_require(row, config.solution, where))
    elif config.answer_format == "gsm8k":
        solution = _clean_solution(_text(raw_answer))
    return Problem(id=example_id, question=question, gold=gold, solution=solution)


def _template_fields(template: str, path: Path) -> list[str]:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"question_template {template!r} for {path} is not a valid format string: {err}") from err
    if not names or any(not name or not name.isidentifier() and not name.replace(" ", "_").isidentifier()
                        for name in names):
        raise ValueError(f"question_template {template!r} for {path} must name fields, e.g. '{{Body}} {{Question}}'")
    return names


def _require(row: dict[str, Any], name: str, where: str) -> Any:
    if name not in row:
        raise ValueError(f"{where}: field {name!r} is missing (the row has {sorted(row)})")
    value = row[name]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where}: field {name!r} is empty")
    return value


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _gold(value: Any, answer_format: str, answer_type: AnswerType, where: str) -> str:
    from dd_prompting import INVALID, canonical_number, extract_gold

    if answer_type.kind != "number":
        gold = answer_type.read_gold(value)
        if gold == INVALID:
            wanted = "yes or no (or true/false)" if answer_type.kind == "yes_no" else f"one of {list(answer_type.choices)}"
            raise ValueError(f"{where}: {value!r} is not {wanted}")
        return gold
    if isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a number")
    if answer_format == "gsm8k":
        try:
            return extract_gold(_text(value))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
    gold = canonical_number(_text(value))
    text = _text(value).strip()
    # The whole field must be the number (units and currency allowed), not merely start with one.
    if gold == INVALID or re.search(r"\d", re.sub(r"^[-−]?\s*[$€£]?\s*[\d,./]+", "", text)):
        raise ValueError(f"{where}: {value!r} is not a number")
    return gold
