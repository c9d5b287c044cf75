"""DecomposedSolver over real HTTP: dspy.LM pointed at a scripted OpenAI-compatible server on 127.0.0.1."""

import dspy
import pytest

from dd_prompting import DecomposedSolver, PlainTextAdapter
from dd_prompting.testing import OpenAICompatibleServer, Reply

ENGINES = ["auto", "litellm"]  # dspy's own OpenAI engine, and litellm


def chat_adapter_replies(request):
    system = request["messages"][0]["content"]
    if "`subquestions`" in system.split("Your output fields are:")[-1]:
        return '[[ ## subquestions ## ]]\n["How many eggs?", "How much money?"]\n\n[[ ## completed ## ]]'
    return ('[[ ## subanswers ## ]]\n["She sells 9 eggs.", "She makes 9 * 2 = 18 dollars."]\n\n'
            "[[ ## answer ## ]]\n18\n\n[[ ## completed ## ]]")


def lm_for(server, engine):
    return dspy.LM("openai/scripted", api_base=server.base_url, api_key="sk-test-not-a-key", engine=engine,
                   cache=False, num_retries=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_joint_mode_over_http_with_dspy_chat_adapter(engine):
    with OpenAICompatibleServer(chat_adapter_replies) as server:
        with dspy.context(lm=lm_for(server, engine)):
            pred = DecomposedSolver("question -> answer")(question="Janet's ducks lay 16 eggs ...")
    assert pred.answer == "18"
    assert pred.subquestions == ["How many eggs?", "How much money?"]
    assert server.call_count == 2
    assert "Janet's ducks" in server.requests[0]["messages"][-1]["content"]


@pytest.mark.parametrize("engine", ENGINES)
def test_plain_text_adapter_over_http_sends_stop_sequences(engine):
    replies = iter(["1. How many eggs?\n2. How much money?", "She sells 9 eggs.",
                    "She makes 9 * 2 = 18 dollars.\nAnswer: 18"])
    with OpenAICompatibleServer(lambda request: next(replies)) as server:
        with dspy.context(lm=lm_for(server, engine), adapter=PlainTextAdapter()):
            pred = DecomposedSolver("question -> answer", mode="iterative")(question="Janet's ducks ...")
    assert pred.answer == "18" and pred.subanswers[0] == "She sells 9 eggs."
    assert server.call_count == 3
    stop = server.requests[1]["stop"]
    assert "\nQuestion:" in stop and len(stop) <= 4


@pytest.mark.parametrize("engine", ENGINES)
def test_server_errors_reach_the_caller_as_errors_not_as_answers(engine):
    with OpenAICompatibleServer(lambda request: Reply(status=500, text="boom")) as server:
        with dspy.context(lm=lm_for(server, engine)):
            with pytest.raises(Exception):
                DecomposedSolver("question -> answer")(question="...")
    assert server.call_count >= 1


@pytest.mark.parametrize("engine", ENGINES)
def test_unparsable_reply_over_http_falls_back_without_raising(engine):
    def garbage(request):
        system = request["messages"][0]["content"]
        if "`subquestions`" in system.split("Your output fields are:")[-1]:
            return "I do not know how to split this."
        return "[[ ## answer ## ]]\n7\n\n[[ ## completed ## ]]"

    with OpenAICompatibleServer(garbage) as server:
        with dspy.context(lm=lm_for(server, engine)):
            pred = DecomposedSolver("question -> answer")(question="...")
    assert pred.fallback.startswith("unparsable decomposition")
    assert pred.answer == "7"
