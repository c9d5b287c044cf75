"""`local_lm(path, server=URL)`: a local model's prompts, rendered and encoded here, completed by a server.

The server is `dd_prompting.testing.CompletionsModel` (vLLM's /v1/completions fields) on the same tiny GPT-2.
"""

import dspy
import pytest

from dd_prompting import DecomposedSolver, local_lm
from dd_prompting.testing import CompletionsModel, OpenAICompatibleServer
from tiny_models import tiny_gpt2, train_tokenizer

pytestmark = pytest.mark.no_adapter

CORPUS = ["Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer: 7",
          "Problem: Ann reads 5 pages a day for 3 days. How many pages?\nAnswer: 15"] * 20
PROMPTS = ["Question: Tom has 3 apples", "Problem: Ann reads", "How many pages?", "Answer:"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    tokenizer = train_tokenizer(CORPUS)
    directory = tmp_path_factory.mktemp("tiny")
    tiny_gpt2(tokenizer, initializer_range=0.2).save_pretrained(directory)  # peaked logits: clear greedy choices
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def server(weights):
    model = CompletionsModel(weights, name="tiny")
    with OpenAICompatibleServer(completions=model, models=model.models) as server:
        yield server


def test_a_served_local_lm_sends_the_in_process_ids_and_answers_alike(weights, server):
    here = local_lm(weights, max_new_tokens=12, cache=False)
    served = local_lm(weights, server=server.base_url, max_new_tokens=12, cache=False)
    start = len(server.requests)
    for prompt in PROMPTS:
        assert served(prompt) == here(prompt)
    rendered = [here.engine.render_prompt(None, [("user", prompt)]) for prompt in PROMPTS]
    expected = [here.engine.tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    assert [request["prompt"] for request in server.requests[start:]] == expected
    assert all(request["temperature"] == 0.0 and request["max_tokens"] == 12 for request in server.requests[start:])


def test_a_program_runs_on_a_served_local_lm_and_saves_with_its_server(weights, server, tmp_path):
    here = local_lm(weights, max_new_tokens=8, cache=False)
    served = local_lm(weights, server=server.base_url, max_new_tokens=8, cache=False)
    program = DecomposedSolver("question -> answer", mode="joint")
    with dspy.context(lm=here):
        expected = program(question="Tom has 3 apples and buys 4 more. How many apples does he have?")
    with dspy.context(lm=served):
        answer = program(question="Tom has 3 apples and buys 4 more. How many apples does he have?")
    assert (answer.answer, answer.subquestions) == (expected.answer, expected.subquestions)
    assert served.engine.dump_state()["url"] == server.base_url  # what a saved program loads it from
    again = type(served.engine).load_state(served.engine.dump_state())
    assert again.client.url == server.base_url and again.prefers_plain_text
