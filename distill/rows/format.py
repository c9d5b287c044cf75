"""Plain-text fine-tuning formats for the students, shared by training and inference.

Every prompt a student sees at inference is built here, by the same functions that build its training
rows, so the two cannot drift apart. The formats are plain text with explicit separators, which a
base model (or a model trained from scratch) picks up in a few hundred steps:

decomposer (problem -> all sub-questions)::

    Problem: Ann has 3 apples and buys 5 more. She eats 2. How many are left?
    Sub-questions:
    - How many apples does Ann have after buying?
    - How many apples are left?
    <eos>

solver (problem + earlier sub-question/answer pairs + next sub-question -> its answer)::

    Problem: Ann has 3 apples and buys 5 more. She eats 2. How many are left?
    Q: How many apples does Ann have after buying?
    A: She has 3 + 5 = 8 apples.
    Q: How many apples are left?
    A: 8 - 2 = 6 apples are left.
    <eos>

chain of thought, the baseline (problem -> steps -> final answer)::

    Problem: Ann has 3 apples and buys 5 more. She eats 2. How many are left?
    Steps:
    She has 3 + 5 = 8 apples.
    8 - 2 = 6 apples are left.
    The answer is 6.
    <eos>

A row is ``{"prompt": str, "completion": str}``; only the completion carries loss, and the tokenizer
appends EOS to it (`distill.training.tokenization.tokenize_row`). A *packed* solver row holds all of a problem's
steps in one sequence, as lists of alternating segments: ``{"prompt": [p0, p1, ...], "completion": [c0,
c1, ...]}`` reads ``p0 c0 p1 c1 ...`` with loss on every ``c``. It teaches the same answers as the
step rows (each answer sees exactly the context it would see in its own row) with the problem
encoded once instead of once per step.

Each solver answer ends with a newline (`ANSWER_END`); the student pipeline stops generating there.
Text fields are collapsed to one line, since newlines are the separators.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dd_prompting.data.jsonl import read_jsonl, write_jsonl

__all__ = ["decomposer_prompt", "decomposer_completion", "parse_subquestions", "solver_start", "solver_question", "solver_answer", "solver_prompt", "parse_subanswer", "cot_prompt", "cot_completion", "parse_cot", "row_text", "write_rows", "read_rows", "load_rows"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

"""Bumped whenever a prompt or completion changes shape; saved with every student."""

ROLES = ("decomposer", "solver", "cot")

# A DSPy predictor's own model, fine-tuned on its calls in DSPy's chat format (`dd_prompting.distill.training.provider`).
PREDICTOR = "predictor"

TRAINABLE_ROLES = (*ROLES, PREDICTOR)

ANSWER_END = "\n"

"""Ends every solver answer and every line of a completion."""

_PROBLEM = "Problem: "

_SUBQUESTIONS_HEADER = "Sub-questions:\n"

_SUBQUESTION_BULLET = "- "

_QUESTION = "Q: "

_ANSWER = "A:"

_STEPS_HEADER = "Steps:\n"

_FINAL = "The answer is "

_WHITESPACE_RE = re.compile(r"\s+")



def _one_line(text: str) -> str:
    return _WHITESPACE_RE.sub(" ", str(text)).strip()



def decomposer_prompt(question: str) -> str:
    """The decomposer's prompt for one problem; its completion lists the sub-questions.

    >>> decomposer_prompt("Ann has 3 apples.\\nHow many?")
    'Problem: Ann has 3 apples. How many?\\nSub-questions:\\n'
    """
    return f"{_PROBLEM}{_one_line(question)}\n{_SUBQUESTIONS_HEADER}"



def decomposer_completion(subquestions: Sequence[str]) -> str:
    """The sub-questions as the decomposer writes them, one bulleted line each.

    >>> decomposer_completion(["How many?", "How much?"])
    '- How many?\\n- How much?\\n'
    """
    return "".join(f"{_SUBQUESTION_BULLET}{_one_line(sq)}\n" for sq in subquestions)



def parse_subquestions(completion: str) -> list[str]:
    """Read the sub-questions back from a decomposer's output (leniently: bullets are optional).

    Empty lines are skipped; anything after an empty line that follows sub-questions, such as a
    model rambling on, is ignored.

    >>> parse_subquestions("- How many?\\n-How much?\\n\\nProblem: ...")
    ['How many?', 'How much?']
    """
    subquestions: list[str] = []
    for line in completion.split("\n"):
        line = line.strip()
        if not line:
            if subquestions:
                break
            continue
        if line.startswith(_PROBLEM.strip()):
            break
        subquestions.append(line[1:].strip() if line.startswith("-") else line)
    return [sq for sq in subquestions if sq]



def solver_start(question: str) -> str:
    """The first segment of every solver context: the problem.

    >>> solver_start("Ann has 3 apples.")
    'Problem: Ann has 3 apples.\\n'
    """
    return f"{_PROBLEM}{_one_line(question)}\n"



def solver_question(subquestion: str) -> str:
    """The segment that asks the solver one sub-question; the answer is generated right after it.

    >>> solver_question("How many?")
    'Q: How many?\\nA:'
    """
    return f"{_QUESTION}{_one_line(subquestion)}\n{_ANSWER}"



def solver_answer(subanswer: str) -> str:
    """One sub-answer as the solver writes it (and as it is fed back), ending with `ANSWER_END`.

    >>> solver_answer("She has 3 + 5 = 8 apples.")
    ' She has 3 + 5 = 8 apples.\\n'
    """
    return f" {_one_line(subanswer)}{ANSWER_END}"



def solver_prompt(question: str, subquestions: Sequence[str], subanswers: Sequence[str]) -> str:
    """The solver's full prompt for the next step: answered pairs, then the next sub-question.

    `subquestions` has one more item than `subanswers` (the one being asked now).

    >>> solver_prompt("P.", ["A?", "B?"], ["a."])
    'Problem: P.\\nQ: A?\\nA: a.\\nQ: B?\\nA:'
    """
    if len(subquestions) != len(subanswers) + 1:
        raise ValueError(
            f"solver_prompt needs one more sub-question than sub-answers; got {len(subquestions)} "
            f"sub-questions and {len(subanswers)} sub-answers."
        )
    parts = [solver_start(question)]
    for subquestion, subanswer in zip(subquestions, subanswers):
        parts += [solver_question(subquestion), solver_answer(subanswer)]
    parts.append(solver_question(subquestions[-1]))
    return "".join(parts)



def parse_subanswer(generated: str) -> str:
    """The sub-answer in a solver's raw output: its first line, stripped.

    >>> parse_subanswer(" She has 8 apples.\\nQ: next")
    'She has 8 apples.'
    """
    return generated.split(ANSWER_END, 1)[0].strip()



def cot_prompt(question: str) -> str:
    """The CoT student's prompt; its completion is the steps, then "The answer is N.".

    >>> cot_prompt("Ann has 3 apples.")
    'Problem: Ann has 3 apples.\\nSteps:\\n'
    """
    return f"{_PROBLEM}{_one_line(question)}\n{_STEPS_HEADER}"



def cot_completion(steps: Sequence[str], answer: str) -> str:
    """The steps, one per line, then the final answer line.

    >>> cot_completion(["3 + 5 = 8."], "8")
    '3 + 5 = 8.\\nThe answer is 8.\\n'
    """
    return "".join(f"{_one_line(step)}\n" for step in steps) + f"{_FINAL}{_one_line(answer)}.\n"



def parse_cot(completion: str) -> tuple[list[str], str]:
    """Split a CoT student's output into its steps and the text of its final-answer line.

    The answer text is whatever follows "The answer is" (pass it to `extract_answer`); if the model
    never wrote that line, it is the last step, so a flexible extraction can still read a number.

    >>> parse_cot("3 + 5 = 8.\\nThe answer is 8.\\n")
    (['3 + 5 = 8.'], '8.')
    >>> parse_cot("3 + 5 = 8.\\n8 - 2 = 6.")
    (['3 + 5 = 8.', '8 - 2 = 6.'], '8 - 2 = 6.')
    """
    steps: list[str] = []
    for line in completion.split("\n"):
        line = line.strip()
        if not line:
            continue
        if line.startswith(_FINAL):
            return steps, line[len(_FINAL) :].strip()
        steps.append(line)
    return steps, steps[-1] if steps else ""



def row_text(row: Mapping[str, Any]) -> str:
    """The full text of a row (prompt and completion interleaved), without EOS.

    >>> row_text({"prompt": ["a", "c"], "completion": ["b", "d"]})
    'abcd'
    """
    prompts, completions = _segments(row)
    return "".join(p + c for p, c in zip(prompts, completions))



def _segments(row: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        return [prompt], [completion]
    if isinstance(prompt, list) and isinstance(completion, list) and len(prompt) == len(completion) and prompt:
        return list(prompt), list(completion)
    raise ValueError(
        "A row needs 'prompt' and 'completion' both strings, or both non-empty lists of the same length; "
        f"got {type(prompt).__name__} and {type(completion).__name__}."
    )



def write_rows(rows: Mapping[str, Sequence[Mapping[str, Any]]], directory: str | Path) -> dict[str, Path]:
    """Write each role's rows to ``<directory>/<role>.jsonl`` (each file replaced atomically); returns the paths."""
    directory = Path(directory)
    paths = {}
    for role, role_rows in rows.items():
        for row in role_rows:
            _segments(row)  # a bad row fails here, before any file is replaced
        records = ({"prompt": row["prompt"], "completion": row["completion"]} for row in role_rows)
        paths[role] = write_jsonl(directory / f"{role}.jsonl", records)
        logger.info("Wrote %d %s rows to %s", len(role_rows), role, paths[role])
    return paths



def read_rows(path: str | Path) -> list[dict]:
    """Read a rows JSONL file, checking each row; a malformed line is a `MalformedLineError` naming file and line."""
    return [row for _, row in read_jsonl(path, parse=_check_row)]



def _check_row(row: dict[str, Any]) -> dict[str, Any]:
    if "prompt" not in row or "completion" not in row:
        raise ValueError("expected an object with 'prompt' and 'completion'")
    _segments(row)
    return row



def load_rows(path: str | Path):
    """Load a rows JSONL file as a `datasets.Dataset` (after checking every line with `read_rows`)."""
    import datasets

    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path} holds no rows.")
    return datasets.Dataset.from_list(rows)
