"""`BodyCapture`: the body a batch line carries is the body the synchronous route sends (issue 27 groundwork)."""

import pytest

from dd_prompting.batches.capture import BodyCapture
from dd_prompting.models import ModelConfig, build_lm
from dd_prompting.testing import OpenAICompatibleServer


@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_the_captured_body_is_the_body_the_synchronous_route_sends(engine, monkeypatch):
    monkeypatch.setenv("TEST_BATCH_KEY", "sk-test-secret")
    with OpenAICompatibleServer(lambda request: "[[ ## answer ## ]]\n42") as server:
        config = ModelConfig(model="openai/scripted", api_base=server.base_url, api_key_env="TEST_BATCH_KEY",
                             engine=engine, temperature=0.3, max_tokens=77)
        lm = build_lm(config, cache=None)
        requests = []
        route = lm.engine.route
        sent = route.complete
        monkeypatch.setattr(route, "complete", lambda request: requests.append(request) or sent(request))
        lm("What is 6 x 7?")
        with BodyCapture(config) as capture:
            captured = capture.capture(requests[0])
    assert captured.path == "/chat/completions"
    assert captured.body == server.requests[0]  # model name, max_tokens or max_completion_tokens, every setting
    assert server.authorizations == ["Bearer sk-test-secret"]
    assert "sk-test-secret" not in (captured.authorization or "")  # the key reaches its provider only
