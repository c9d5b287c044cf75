"""Hand-written worked examples for decomposition prompting.

`WORKED_EXAMPLES` are original math word problems in the style of GSM8K's Socratic annotations: each
sub-question asks for one intermediate quantity, each sub-answer shows its calculation, and the last
sub-question asks what the problem asks. `YES_NO_WORKED_EXAMPLES` are yes/no questions in the style
of StrategyQA, the paper's other task: each sub-question asks for one fact or comparison, and the
last one asks the question itself. The paper prompted GPT-3 with examples like these; small models
need them even more, to learn the output format.

They only fit their kind of task: a sentiment classifier given apple-counting demos learns to
answer with numbers. `builtin_demos_for` says which set, if any, a signature's answer field takes.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Literal

from dspy.signatures.signature import Signature

__all__ = ["WorkedExample", "WORKED_EXAMPLES", "YES_NO_WORKED_EXAMPLES", "BUILTIN_DEMOS", "builtin_demos_for"]

DemoSet = Literal["math", "yes_no"]


@dataclass(frozen=True)
class WorkedExample:
    problem: str
    subquestions: tuple[str, ...]
    subanswers: tuple[str, ...]
    answer: str


WORKED_EXAMPLES: tuple[WorkedExample, ...] = (
    WorkedExample(
        problem=(
            "Maya picks 12 apples in the morning and twice as many in the afternoon. "
            "She gives 10 apples to her neighbour. How many apples does Maya have left?"
        ),
        subquestions=(
            "How many apples does Maya pick in the afternoon?",
            "How many apples does Maya pick in total?",
            "How many apples does Maya have left?",
        ),
        subanswers=(
            "She picks 12 * 2 = 24 apples in the afternoon.",
            "She picks 12 + 24 = 36 apples in total.",
            "She has 36 - 10 = 26 apples left.",
        ),
        answer="26",
    ),
    WorkedExample(
        problem=(
            "A bakery sells muffins for $3 each. On Monday it sells 40 muffins and on Tuesday "
            "it sells half as many. How much money does the bakery make on the two days?"
        ),
        subquestions=(
            "How many muffins does the bakery sell on Tuesday?",
            "How many muffins does the bakery sell on the two days?",
            "How much money does the bakery make on the two days?",
        ),
        subanswers=(
            "It sells 40 / 2 = 20 muffins on Tuesday.",
            "It sells 40 + 20 = 60 muffins on the two days.",
            "It makes 60 * 3 = 180 dollars.",
        ),
        answer="180",
    ),
    WorkedExample(
        problem=(
            "Tom reads 15 pages of his book every day for 6 days. The book has 120 pages. "
            "How many pages does Tom still have to read?"
        ),
        subquestions=(
            "How many pages does Tom read in 6 days?",
            "How many pages does Tom still have to read?",
        ),
        subanswers=(
            "He reads 15 * 6 = 90 pages in 6 days.",
            "He still has to read 120 - 90 = 30 pages.",
        ),
        answer="30",
    ),
    WorkedExample(
        problem=(
            "A farmer has 8 rows of carrots with 25 carrots in each row. Rabbits eat 35 carrots, "
            "and the farmer sells the rest in bags of 5. How many bags does the farmer sell?"
        ),
        subquestions=(
            "How many carrots does the farmer grow?",
            "How many carrots are left after the rabbits eat some?",
            "How many bags does the farmer sell?",
        ),
        subanswers=(
            "The farmer grows 8 * 25 = 200 carrots.",
            "There are 200 - 35 = 165 carrots left.",
            "The farmer sells 165 / 5 = 33 bags.",
        ),
        answer="33",
    ),
)


YES_NO_WORKED_EXAMPLES: tuple[WorkedExample, ...] = (
    WorkedExample(
        problem="Could a person born in 1990 have voted in the 2004 United States presidential election?",
        subquestions=(
            "How old was a person born in 1990 at the 2004 election?",
            "From what age can a person vote in the United States?",
            "Could a person born in 1990 have voted in the 2004 election?",
        ),
        subanswers=(
            "They were at most 2004 - 1990 = 14 years old.",
            "People can vote from the age of 18.",
            "No, 14 is less than 18.",
        ),
        answer="no",
    ),
    WorkedExample(
        problem="Is the Pacific Ocean larger than all of Earth's land put together?",
        subquestions=(
            "How large is the Pacific Ocean?",
            "How large is all of Earth's land put together?",
            "Is the Pacific Ocean larger than all of Earth's land?",
        ),
        subanswers=(
            "The Pacific Ocean covers about 165 million square kilometres.",
            "All land covers about 149 million square kilometres.",
            "Yes, 165 million is more than 149 million.",
        ),
        answer="yes",
    ),
    WorkedExample(
        problem="Can someone who reads one book a day finish a library of 10,000 books in a year?",
        subquestions=(
            "How many books does someone who reads one book a day read in a year?",
            "Can they finish a library of 10,000 books in a year?",
        ),
        subanswers=(
            "They read 365 * 1 = 365 books in a year.",
            "No, 365 is far less than 10,000.",
        ),
        answer="no",
    ),
    WorkedExample(
        problem="Was the telephone invented before the first powered aeroplane flight?",
        subquestions=(
            "When was the telephone invented?",
            "When was the first powered aeroplane flight?",
            "Was the telephone invented before the first powered flight?",
        ),
        subanswers=(
            "Alexander Graham Bell patented the telephone in 1876.",
            "The Wright brothers made the first powered flight in 1903.",
            "Yes, 1876 is before 1903.",
        ),
        answer="yes",
    ),
)

BUILTIN_DEMOS: dict[DemoSet, tuple[WorkedExample, ...]] = {"math": WORKED_EXAMPLES, "yes_no": YES_NO_WORKED_EXAMPLES}


def builtin_demos_for(signature: type[Signature]) -> DemoSet | None:
    """The built-in set that fits a signature with one input and one output field: "math" for an
    `int` or `float` answer, "yes_no" for a `bool` one; None for anything else (a `str` answer may be a
    number, a label or prose, so it is not guessed: ask for a set by name).

    >>> import dspy
    >>> [builtin_demos_for(dspy.Signature(s)) for s in ("q -> a: float", "q -> a: bool", "q -> a", "q, c -> a: int")]
    ['math', 'yes_no', None, None]
    """
    if len(signature.input_fields) != 1 or len(signature.output_fields) != 1:
        return None
    (field,) = signature.output_fields.values()
    annotation = _without_none(field.annotation)
    if annotation is bool:
        return "yes_no"
    if annotation in (int, float):
        return "math"
    return None


def _without_none(annotation):
    # `float | None` is still a numeric answer.
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation
