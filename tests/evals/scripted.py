"""A scripted 'model' for the eval harness tests: answers in DSPy's ChatAdapter format, right on a chosen subset."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from dd_prompting.testing import Reply, last_user_text

_OUTPUTS = re.compile(r"Your output fields are:\n(.*?)\n\n", re.DOTALL)
_FIELD = re.compile(r"`(\w+)`")
_QUESTION = re.compile(r"\[\[ ## question ## \]\]\n(.*?)\n\n(?:\[\[ ## |Respond with)", re.DOTALL)


def output_fields(request: dict[str, Any]) -> list[str]:
    """The output fields a ChatAdapter request asks for, read from its system message."""
    system = request["messages"][0]["content"]
    match = _OUTPUTS.search(system + "\n\n")
    return _FIELD.findall(match.group(1)) if match else []


def question_of(request: dict[str, Any]) -> str:
    match = _QUESTION.search(last_user_text(request))
    return match.group(1).strip() if match else ""


def chat_reply(values: dict[str, Any]) -> str:
    parts = []
    for name, value in values.items():
        text = json.dumps(value) if isinstance(value, list) else str(value)
        parts.append(f"[[ ## {name} ## ]]\n{text}")
    return "\n\n".join(parts + ["[[ ## completed ## ]]"])


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
