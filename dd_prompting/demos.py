"""Hand-written worked examples for decomposition prompting.

Original problems in the style of GSM8K's Socratic annotations: each sub-question asks for one
intermediate quantity, each sub-answer shows its calculation, and the last sub-question asks what
the problem asks. The paper prompted GPT-3 with examples like these; small models need them even
more, to learn the output format.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WorkedExample", "WORKED_EXAMPLES"]


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
