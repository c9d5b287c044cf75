"""`dd_prompting.batches`: OpenAI's Batch API client and the run's batch manifest, against the test server's
`BatchDesk` (groundwork for batched teachers and evals, issue 27)."""

import pytest

from dd_prompting.batches import BatchManifest, OpenAIBatches
from dd_prompting.testing import OpenAICompatibleServer, Reply


def responder(request):
    question = request["messages"][-1]["content"]
    return Reply(status=500, text="overloaded") if "fail" in question else f"echo: {question}"


def body(question):
    return {"model": "scripted", "messages": [{"role": "user", "content": question}], "max_tokens": 20}


@pytest.fixture
def server():
    with OpenAICompatibleServer(responder) as server:
        yield server


def wait(batches, batch_id):
    status = batches.status(batch_id)
    while not status.done:  # the desk moves one step per poll
        status = batches.status(batch_id)
    return status


def test_submit_poll_and_read_answered_failed_and_expired_lines(server):
    server.batches.expire = {"key-c"}
    batches = OpenAIBatches(server.base_url, "offline")
    lines = [batches.line(f"key-{name}", body(question)) for name, question in
             (("a", "one"), ("b", "please fail"), ("c", "three"))]
    [batch_id] = batches.submit(lines, metadata={"run": "r1"})
    status = wait(batches, batch_id)
    results = batches.results(status)
    assert status.status == "expired" and (status.completed, status.failed) == (1, 1)
    assert results.answered["key-a"]["choices"][0]["message"]["content"] == "echo: one"
    assert set(results.failed) == {"key-b"} and "overloaded" in results.failed["key-b"]
    assert "key-c" not in results.answered and "key-c" not in results.failed  # unanswered: it goes again
    assert server.requests == [] and [line["custom_id"] for line in server.batches.lines] == ["key-a", "key-b", "key-c"]
    assert batches.find({"run": "r1"}) == [batch_id] and batches.find({"run": "other"}) == []


def test_lines_are_split_at_the_limits_and_a_key_is_sent_once(server):
    batches = OpenAIBatches(server.base_url, "offline", max_requests=2, max_bytes=10_000)
    lines = [batches.line(f"k{i}", body(f"q{i}")) for i in range(5)]
    ids = batches.submit(lines, metadata={"run": "r2"})
    assert len(ids) == 3 and sorted(batches.find({"run": "r2"})) == sorted(ids)
    with pytest.raises(ValueError, match="custom_id 'k0' twice in one round"):
        batches.split([lines[0], lines[0]])
    small = OpenAIBatches(server.base_url, "offline", max_bytes=50)
    with pytest.raises(ValueError, match="more than a batch file may hold"):
        small.split(lines[:1])


def test_the_manifest_keeps_pending_batches_and_intents_across_a_restart(tmp_path):
    manifest = BatchManifest(tmp_path / "batches.json")
    token = manifest.intend(model="m", url="http://127.0.0.1:1/v1", keys=["a", "b", "c"])
    manifest.add("batch_1", model="m", url="http://127.0.0.1:1/v1", keys=["a", "b"], round_token=token)
    manifest.add("batch_2", model="other", url="http://127.0.0.1:1/v1", keys=["c"])
    manifest.finish("batch_1", "completed", answered=2)
    again = BatchManifest(tmp_path / "batches.json")  # what a restarted run reads
    assert list(again.pending()) == ["batch_2"] and again.pending("m") == {}
    assert again.batches["batch_1"]["state"] == "completed" and again.batches["batch_1"]["answered"] == 2
    assert list(again.intents("m")) == [token] and again.intents("other") == {}
    again.drop_intent(token)
    assert BatchManifest(tmp_path / "batches.json").intents("m") == {}
    assert again.run_id() == BatchManifest(tmp_path / "batches.json").run_id()  # made once, then kept
    assert not (tmp_path / "batches.json.tmp").exists()
    (tmp_path / "batches.json").write_text("{not json")
    with pytest.raises(ValueError, match="batches.json is not a batch manifest"):
        again.read()
