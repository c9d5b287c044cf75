"""The test server's OpenAI Files and Batch APIs (`dd_prompting.testing.BatchDesk`), through the openai client.

Groundwork for batched teachers and evals (issue 27): the desk must answer a batch line exactly as the server
answers the same request synchronously, and write OpenAI's output and error files.
"""

import io
import json

import openai
import pytest

from dd_prompting.testing import OpenAICompatibleServer, Reply


def line(custom_id, question):
    body = {"model": "scripted", "messages": [{"role": "user", "content": question}], "max_tokens": 20}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def responder(request):
    question = request["messages"][-1]["content"]
    return Reply(status=500, text="overloaded") if "fail" in question else f"echo: {question}"


def submit(client, lines, **settings):
    upload = client.files.create(file=("batch.jsonl", io.BytesIO("".join(json.dumps(x) + "\n" for x in lines)
                                                                 .encode())), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                                 metadata={"run": "test"}, **settings)


@pytest.fixture
def server():
    with OpenAICompatibleServer(responder) as server:
        yield server


def test_a_batch_moves_through_its_statuses_and_answers_each_line_as_a_synchronous_call(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="offline", max_retries=0)
    batch = submit(client, [line("a", "one"), line("b", "two"), line("c", "fail me")])
    seen = [batch.status] + [client.batches.retrieve(batch.id).status for _ in range(3)]
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    done = client.batches.retrieve(batch.id)
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 2, 1)
    outputs = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    synchronous = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "one"}],
                                                 max_tokens=20)
    assert outputs[0]["custom_id"] == "a"
    assert outputs[0]["response"]["body"]["choices"][0]["message"] == synchronous.choices[0].message.model_dump(
        exclude_none=True) | {"content": "echo: one"}
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("c", 500)]
    assert len(server.requests) == 1 and len(server.batches.lines) == 3  # batch lines are not synchronous calls
    assert [b.id for b in client.batches.list()] == [batch.id] and done.metadata == {"run": "test"}


def test_a_repeated_custom_id_fails_the_batch_and_expired_lines_stay_unanswered(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="offline", max_retries=0)
    refused = submit(client, [line("a", "one"), line("a", "two")])
    assert refused.status == "failed" and refused.errors.data[0].code == "duplicate_custom_id"
    server.batches.expire = {"b"}
    batch = submit(client, [line("a", "one"), line("b", "two")])
    for _ in range(3):
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "expired" and batch.request_counts.completed == 1
    assert client.batches.cancel(submit(client, [line("x", "one")]).id).status == "cancelled"
