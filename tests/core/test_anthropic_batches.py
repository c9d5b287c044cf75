"""Anthropic's Message Batches (issue 27): the same rounds as OpenAI's Batch API, against the test server's
`MessageBatchDesk`, with bodies captured from the synchronous Anthropic route."""

from collections import Counter

import dspy
import pytest

from dd_prompting import DecomposedSolver
from dd_prompting.batches import MANIFEST_FILE, AnthropicBatches, BatchManifest, BatchRounds, cancel_pending
from dd_prompting.batches.capture import BodyCapture
from dd_prompting.models import CallCache, ModelConfig, build_lm
from dd_prompting.testing import OpenAICompatibleServer, as_chat_request

from test_batch_rounds import QUESTIONS, Job, responder

KEY = "sk-ant-test-secret"


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", KEY)
    with OpenAICompatibleServer(responder) as server:
        yield server


def claude(server, tmp_path, name, *, batch, engine="auto"):
    config = ModelConfig(model="anthropic/claude-3-5-haiku-latest", api_base=server.base_url, engine=engine,
                         api_key_env="ANTHROPIC_TEST_KEY", batch=batch, batch_poll_seconds=0.01, max_tokens=300,
                         input_cost_per_million=0.8, output_cost_per_million=4.0)
    return config, build_lm(config, cache=CallCache(tmp_path / name), retries=1, retry_backoff=0.01)


def rounds(lm, config, tmp_path):
    return BatchRounds(lm.engine, config, BatchManifest(tmp_path / MANIFEST_FILE), progress=False)


@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_the_captured_body_is_the_body_the_synchronous_anthropic_route_sends(server, tmp_path, engine, monkeypatch):
    config, lm = claude(server, tmp_path, "sync", batch=False, engine=engine)
    requests = []
    route = lm.engine.route
    sent = route.complete
    monkeypatch.setattr(route, "complete", lambda request: requests.append(request) or sent(request))
    with dspy.context(lm=lm):
        answer = DecomposedSolver("question -> answer: int", mode="joint")(question=QUESTIONS[1]).answer
    assert answer == 3 and server.authorizations == [KEY, KEY]  # x-api-key, at the provider only
    with BodyCapture(config) as capture:
        captured = capture.capture(requests[0])
    assert captured.path.endswith("/messages") and captured.body == server.requests[0]
    assert KEY not in (captured.authorization or "")


def test_a_program_in_anthropic_batch_rounds_gives_the_synchronous_answers_at_half_the_price(server, tmp_path):
    _, sync_lm = claude(server, tmp_path, "sync", batch=False)
    config, lm = claude(server, tmp_path, "batch", batch=True)
    synchronous = Job(sync_lm)
    synchronous()
    calls = server.call_count
    job = Job(lm)
    summary = rounds(lm, config, tmp_path).run(job)
    assert job.answers == synchronous.answers and len(job.answers) == 4
    assert server.call_count == calls  # nothing synchronous
    sent = Counter(request["custom_id"] for request in server.message_batches.requests)
    assert len(sent) == calls and set(sent.values()) == {1}
    assert summary.billed == pytest.approx(sum(synchronous.costs.values()) / 2)
    assert sum(job.costs.values()) == pytest.approx(summary.billed)
    entry = next(iter(BatchManifest(tmp_path / MANIFEST_FILE).batches.values()))
    assert entry["api"] == "anthropic" and entry["key_env"] == "ANTHROPIC_TEST_KEY" and KEY not in str(entry)


def test_expired_requests_go_again_and_pending_batches_can_be_cancelled(server, tmp_path):
    config, lm = claude(server, tmp_path, "batch", batch=True)
    desk = server.message_batches
    answer = desk._answer

    def expire_the_first_batch(batch, *, cancelled):
        desk.expire = {request["custom_id"] for request in desk._inputs[batch["id"]]} if batch["id"].endswith(
            "0001") else set()
        answer(batch, cancelled=cancelled)

    desk._answer = expire_the_first_batch
    job = Job(lm)
    summary = rounds(lm, config, tmp_path).run(job)
    assert len(job.answers) == 4 and summary.resent == 4
    assert set(Counter(request["custom_id"] for request in desk.requests).values()) == {1, 2}

    desk.hold = True
    manifest = BatchManifest(tmp_path / MANIFEST_FILE)
    api = AnthropicBatches(server.base_url, KEY)
    [pending] = api.submit([api.line("k1", {"model": "claude", "max_tokens": 5, "messages": []})], metadata={})
    manifest.add(pending, model=config.name, url=server.base_url, keys=["k1"], key_env="ANTHROPIC_TEST_KEY",
                 api="anthropic")
    assert cancel_pending(manifest) == {pending: "canceling"}
    desk.hold = False
    assert api.status(pending).status == "ended" and api.results(api.status(pending)).answered == {}


def test_the_desk_reads_an_anthropic_request_as_a_chat_request():
    params = {"model": "claude", "system": [{"type": "text", "text": "Be brief."}], "max_tokens": 9,
              "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    assert as_chat_request(params)["messages"] == [{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "Hi"}]
