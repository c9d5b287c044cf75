"""The programs whose calls `tests/data/legacy_calls_0.1.0.jsonl` holds, and the scripted model that answered them.

The JSONL file is the call cache that dd-prompting 0.1.0 (commit 419273a, `CachedLM`) wrote when
`tests/data/make_legacy_calls.py` ran these programs against `respond`. A later release must answer
every one of these calls from that cache (test_models.py): users keep their paid calls.
"""

from __future__ import annotations

import json
import re
from typing import Any

import dspy

from dd_prompting import DecomposedSolver, PlainTextAdapter
from dd_prompting.testing import Reply, chat_reply, output_fields

# The endpoint the recorded keys name; nothing listens there, so a call that misses the cache fails.
LEGACY_API_BASE = "http://127.0.0.1:9/v1"
LEGACY_MODEL = "openai/legacy-scripted"
QUESTIONS = [f"Ann has {10 + i} apples and buys {i + 1} more. How many apples does she have?" for i in range(3)]
GARBLED = "Tom reads 4 pages a day. How many pages does he read in 5 days?"


def respond(request: dict[str, Any]) -> Reply:
    """Chat-format replies for ChatAdapter prompts, plain text otherwise; one garbled question gets prose."""
    system = request["messages"][0]["content"]
    user = request["messages"][-1]["content"]
    wants_json = "response_format" in request or "JSON object" in user
    if GARBLED in user and not wants_json:
        return Reply(text="I am not sure.")
    if "Your output fields are" in system:
        values: dict[str, Any] = {}
        for name in output_fields(request):
            if name == "subquestions":
                values[name] = ["How many apples did she buy?", "How many does she have?"]
            elif name == "subanswers":
                values[name] = ["She bought some.", "She has them all."]
            elif name == "answer":
                values[name] = "17"
            else:
                values[name] = "Add them up."
        if wants_json:
            return Reply(text=json.dumps(values))
        return Reply(text=chat_reply(values))
    if re.search(r"Subquestions:\s*$", user):
        return Reply(text="1. How many apples did she buy?\n2. How many does she have?")
    return Reply(text="She has 17 apples.\nAnswer: 17")


def run_programs(lm: dspy.BaseLM) -> list[str]:
    """Every kind of call the package makes through the model layer; returns the answers, in order."""
    sig = "question -> answer: float"
    answers: list[Any] = []
    with dspy.context(lm=lm):
        for question in QUESTIONS:
            answers.append(DecomposedSolver(sig)(question=question).answer)
        answers.append(DecomposedSolver(sig, mode="iterative")(question=QUESTIONS[0]).answer)
        answers.append(dspy.ChainOfThought(sig)(question=QUESTIONS[1]).answer)
        answers.append(dspy.Predict("question -> answer")(question=QUESTIONS[2]).answer)
        answers.append(dspy.Predict("question -> answer")(question=GARBLED).answer)  # ChatAdapter -> JSON fallback
        answers.append(DecomposedSolver(sig, adapter=PlainTextAdapter())(question=QUESTIONS[0]).answer)
        sampled = DecomposedSolver(sig, n=3, temperature=0.7)(question=QUESTIONS[1])
        answers.append([c.answer for c in sampled.completions])
    with dspy.context(lm=lm.copy(rollout_id=2, temperature=1.0)):  # a teacher's second sample
        answers.append(DecomposedSolver(sig)(question=QUESTIONS[2]).answer)
    return [json.dumps(answer) for answer in answers]
