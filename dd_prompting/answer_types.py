"""What kind of answer a task has, and how answers of that kind are typed, read and compared.

A number (GSM8K), yes or no (StrategyQA), or one of a set of options (multiple choice, labels).
`AnswerType` puts the readers of `dd_prompting.answers` and `dd_prompting.choices` behind one
interface, so code that scores answers (the `dd-evals` harness) never branches on the kind:

>>> AnswerType("yes_no").read("Aristotle died long before laptops. So the answer is no.", strict=True)
'no'
>>> options = AnswerType("choice", choices=("A", "B", "C"))
>>> options.read_gold("b"), options.matches("B", "B")
('B', True)
>>> AnswerType("number").matches(AnswerType("number").read("The total is $18.00"), "18")
True
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from dd_prompting.answers import INVALID, answers_match, canonical_number, extract_answer, read_step_result
from dd_prompting.choices import YES_NO, extract_choice, match_option

__all__ = ["AnswerType", "ANSWER_KINDS"]

ANSWER_KINDS = ("number", "yes_no", "choice")


@dataclass(frozen=True)
class AnswerType:
    """One kind of answer: "number", "yes_no" or "choice" (one of `choices`).

    Readers return the canonical answer ("18", "yes", the option as spelled in `choices`) or
    `INVALID`, which never matches a gold answer.
    """

    kind: Literal["number", "yes_no", "choice"] = "number"
    choices: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ANSWER_KINDS:
            raise ValueError(f"answer kind must be one of {ANSWER_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "choices", tuple(str(option) for option in self.choices))
        if self.kind == "choice" and len(self.choices) < 2:
            raise ValueError(f"a 'choice' answer needs at least two options, got {list(self.choices)}")
        if self.kind != "choice" and self.choices:
            raise ValueError(f"options are for 'choice' answers; a {self.kind!r} answer takes none")

    @classmethod
    def of(cls, annotation: Any) -> AnswerType:
        """The answer type a signature's output field has: `bool` is yes/no, `Literal[...]` a choice, else a number.

        >>> AnswerType.of(bool).kind, AnswerType.of(Literal["A", "B"]).choices, AnswerType.of(float).kind
        ('yes_no', ('A', 'B'), 'number')
        """
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Optional[bool] and the like
            members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            annotation = members[0] if len(members) == 1 else annotation
        if annotation is bool:
            return cls("yes_no")
        if typing.get_origin(annotation) is Literal:
            return cls("choice", choices=typing.get_args(annotation))
        return cls("number")

    @property
    def options(self) -> tuple[str, ...]:
        return YES_NO if self.kind == "yes_no" else self.choices

    @property
    def annotation(self) -> Any:
        """The type of the answer field in a DSPy signature.

        Numbers stay text, so "$1,234.50" or "3/4" reaches the reader instead of failing a float parse.
        """
        if self.kind == "yes_no":
            return bool
        if self.kind == "choice":
            return Literal[self.choices]
        return str

    @property
    def instructions(self) -> str:
        if self.kind == "yes_no":
            return "Answer the question with yes or no."
        if self.kind == "choice":
            return f"Answer the question with one of the options: {', '.join(self.choices)}."
        return "Solve the math word problem. Give the final answer as a number."

    @property
    def description(self) -> str:
        """What the answer field holds, for its `desc`."""
        if self.kind == "yes_no":
            return "The final answer: yes (true) or no (false)."
        if self.kind == "choice":
            return f"The final answer: one of {', '.join(self.choices)}."
        return "The final answer: a number, without units."

    @property
    def no_answer_status(self) -> str:
        """The parse status of a reply the reader finds no answer in."""
        return "no_number" if self.kind == "number" else "no_option"

    def read(self, text: Any, *, strict: bool = False) -> str:
        """The answer a model's reply gives, with the strict or the flexible reader."""
        if self.kind == "number":
            return extract_answer(text, strict=strict)
        return extract_choice(text, self.options, strict=strict)

    def read_step(self, step: Any) -> str:
        """The answer a solution's last step gives: the result of its calculation for a number
        (`read_step_result`), else the option it names (the last one, as the flexible reader does).

        >>> AnswerType("number").read_step("She has 3 + 5 = 8 apples."), AnswerType("yes_no").read_step("8 is more than 6, so yes.")
        ('8', 'yes')
        """
        if self.kind == "number":
            return read_step_result(step)
        return extract_choice(step, self.options)

    def read_gold(self, value: Any) -> str:
        """A dataset's gold answer in canonical form, or `INVALID` if it is not an answer of this kind."""
        if self.kind == "number":
            return canonical_number(str(value))
        return match_option(value, self.options)

    def matches(self, predicted: Any, gold: Any) -> bool:
        if self.kind == "number":
            return answers_match(predicted, gold)
        return predicted != INVALID and predicted == gold

    def as_field_value(self, gold: str) -> Any:
        """A canonical gold answer as the answer field holds it (for few-shot demos): True/False for yes/no."""
        return gold == "yes" if self.kind == "yes_no" else gold

    def typed(self, answer: str, annotation: Any = None) -> Any:
        """A canonical answer as a signature's output field holds it: True/False for yes/no, a float
        or int for such a field, None for `INVALID` (text fields keep the text)."""
        if answer == INVALID:
            return None if self.kind != "number" or annotation in (float, int) else answer
        if self.kind == "yes_no":
            return answer == "yes"
        if self.kind == "number" and annotation in (float, int):
            value = float(answer)
            return int(value) if annotation is int and value.is_integer() else value
        return answer
