"""A DSPy engine that replies with scripted text, marked as a small local model."""

from __future__ import annotations

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events


class ScriptedEngine:
    """Replies with `replies` in order; records every request it receives."""

    prefers_plain_text = True

    def __init__(self, replies: list[str]):
        self.replies = list(replies)
        self.requests = []

    def complete(self, request):
        self.requests.append(request)
        if not self.replies:
            raise AssertionError("ScriptedEngine ran out of replies")
        text = self.replies.pop(0)
        return Response(id="scripted", model="scripted", message=Message.assistant([TextPart(text)]),
                        finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=1))

    def stream(self, request):
        return response_to_events(self.complete(request))

    def close(self):
        pass


def scripted_lm(replies: list[str]) -> tuple[dspy.LM, ScriptedEngine]:
    engine = ScriptedEngine(replies)
    return dspy.LM("local/scripted", engine=engine, cache=False), engine
