"""A scripted 'model' for the eval harness tests: answers in DSPy's ChatAdapter format, right on a chosen subset."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from dd_prompting.testing import Reply, chat_reply, input_field, output_fields  # noqa: F401 (re-exported for the tests)


def question_of(request: dict[str, Any]) -> str:
    return input_field(request, "question")


@dataclass
class ScriptedModel:
    """Answers every stage of every strategy; the final answer is right iff the question is in `right`.

    `right_by_outputs` overrides `right` for the stage asking for those output fields, e.g.
    `{("reasoning", "answer"): {...}}` makes chain of thought right on another subset.
    `faults` maps a question to a list of Replies served (in order) before the normal answer.
    `wording` maps a question to a format string for the answer text ("so {} apples").
    `garbage` questions get replies with no field headers at all.
    """

    gold: dict[str, str]
    right: set[str]
    subquestions: int = 2
    right_by_outputs: dict[tuple[str, ...], set[str]] = field(default_factory=dict)
    faults: dict[str, list[Reply]] = field(default_factory=dict)
    wording: dict[str, str] = field(default_factory=dict)
    garbage: set[str] = field(default_factory=set)
    delay: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer_for(self, question: str, outputs: tuple[str, ...]) -> str:
        gold = self.gold[question]
        right = self.right_by_outputs.get(outputs, self.right)
        number = gold if question in right else str(int(float(gold)) + 1)
        return self.wording.get(question, "{}").format(number)

    def __call__(self, request: dict[str, Any]):
        question = question_of(request)
        with self._lock:
            queue = self.faults.get(question)
            if queue:
                return queue.pop(0)
        if question in self.garbage:
            return Reply(text="I am not sure what you mean.", delay=self.delay)
        values: dict[str, Any] = {}
        outputs = tuple(output_fields(request))
        for name in outputs:
            if name == "answer":
                values[name] = self.answer_for(question, outputs)
            elif name == "subquestions":
                values[name] = [f"What is step {i}?" for i in range(1, self.subquestions + 1)]
            elif name == "subanswers":
                values[name] = [f"Step {i} is done." for i in range(1, self.subquestions + 1)]
            else:  # reasoning, subanswer
                values[name] = "Let me think step by step."
        return Reply(text=chat_reply(values), delay=self.delay)


def gsm8k_solutions() -> dict[str, tuple[list[str], list[str], str]]:
    """GSM8K's Socratic test solutions by question: (sub-questions, steps, answer)."""
    import json

    from dd_prompting.data.gsm8k_loader import gsm8k_path, parse_socratic

    solutions = {}
    with open(gsm8k_path("test_socratic"), encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            parsed = parse_socratic(row["answer"])
            solutions[row["question"]] = (parsed.subquestions, parsed.steps, parsed.answer)
    return solutions


@dataclass
class SolutionModel:
    """A scripted model whose replies are real solutions: realistic in length, for measuring cost estimates.

    `solutions` maps a question to its (sub-questions, answer steps, answer), e.g. GSM8K's Socratic
    solutions or the generator's decompositions. Chain of thought writes the steps as its reasoning;
    decomposition writes the sub-questions, then answers them (all at once, or the one asked). A
    question in `unformatted` gets its first reply to a ChatAdapter request without field headers,
    so DSPy's ChatAdapter falls back to JSON: one call more, as real models cost sometimes.
    """

    solutions: dict[str, tuple[list[str], list[str], str]]
    unformatted: set[str] = field(default_factory=set)
    _fallen_back: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: dict[str, Any]):
        from dd_prompting.testing import formatted_reply, request_format

        question = question_of(request)
        subquestions, steps, answer = self.solutions[question]
        outputs = tuple(output_fields(request))
        if question in self.unformatted and request_format(request) == "chat":
            key = f"{question}|{outputs}"
            with self._lock:
                first = key not in self._fallen_back
                self._fallen_back.add(key)
            if first:
                return Reply(text=f"The answer is {answer}.")
        values: dict[str, Any] = {}
        for name in outputs:
            if name == "answer":
                values[name] = answer
            elif name == "reasoning":
                values[name] = " ".join(steps)
            elif name == "subquestions":
                values[name] = subquestions
            elif name == "subanswers":
                values[name] = steps
            elif name == "subanswer":
                asked = input_field(request, "subquestion")
                values[name] = steps[subquestions.index(asked)] if asked in subquestions else steps[-1]
            else:
                values[name] = "Let me think step by step."
        return Reply(text=formatted_reply(request, values))
