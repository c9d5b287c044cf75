"""DecomposedSolver under each of DSPy's adapters, against a real OpenAI-compatible server (127.0.0.1).

Nothing here relies on DSPy's default adapter (ChatAdapter in 3.4, XMLAdapter with native function
calling in 3.5): each test names the adapter it runs, and the scripted model answers in the format
the request asks for.
"""

import dspy
import pytest

from dd_prompting import DecomposedSolver
from dd_prompting.models import ModelConfig, build_lm
from dd_prompting.testing import OpenAICompatibleServer, formatted_reply, output_fields, request_format

SUBQUESTIONS = ["How many apples does she buy?", "How many apples does she have?"]
QUESTION = "Ann has 10 apples and buys 7 more. How many apples does she have?"
ADAPTERS = {
    "chat": (dspy.ChatAdapter, "chat"),
    "json": (dspy.JSONAdapter, "json"),
    "xml": (dspy.XMLAdapter, "xml"),
    "xml_native_tools": (lambda: dspy.XMLAdapter(use_native_function_calling=True), "xml"),
}


def scripted_model(request):
    values = {}
    for name in output_fields(request):
        if name == "subquestions":
            values[name] = SUBQUESTIONS
        elif name == "subanswers":
            values[name] = ["She buys 7.", "She has 17."]
        elif name == "answer":
            values[name] = 17
        else:  # subanswer, reasoning
            values[name] = "She has 10 + 7 = 17."
    return formatted_reply(request, values)


def _lm(kind, server):
    if kind == "dspy.LM":
        return dspy.LM("openai/scripted", api_base=server.base_url, api_key="x", cache=False, num_retries=0)
    return build_lm(ModelConfig(model="openai/scripted", api_base=server.base_url), cache=None)


@pytest.mark.parametrize("lm_kind", ["dspy.LM", "build_lm"])
@pytest.mark.parametrize("mode", ["joint", "iterative"])
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_decomposed_solver_is_exact_under_each_adapter(adapter, mode, lm_kind):
    make_adapter, wire_format = ADAPTERS[adapter]
    with OpenAICompatibleServer(scripted_model) as server:
        with dspy.context(lm=_lm(lm_kind, server), adapter=make_adapter()):
            prediction = DecomposedSolver("question -> answer: float", mode=mode)(question=QUESTION)
    assert prediction.answer == 17.0
    assert prediction.subquestions == SUBQUESTIONS
    assert prediction.fallback is None and not prediction.parse_failures
    assert server.call_count == (2 if mode == "joint" else 1 + len(SUBQUESTIONS))
    assert {request_format(request) for request in server.requests} == {wire_format}
