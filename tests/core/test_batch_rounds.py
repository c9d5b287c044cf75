"""`BatchRounds`: a program's calls through a batch API in rounds, resumable at any point (issue 27)."""

import json
import logging
from collections import Counter

import dspy
import pytest

from dd_prompting import DecomposedSolver
from dd_prompting.batches import MANIFEST_FILE, BatchManifest, BatchRounds, OpenAIBatches, cancel_pending, is_pending
from dd_prompting.config import ConfigError
from dd_prompting.models import CallCache, ModelConfig, build_lm, recording
from dd_prompting.batches.providers import check_batchable
from dd_prompting.testing import OpenAICompatibleServer, chat_reply, input_field, output_fields

QUESTIONS = [f"Ann has {n} apples and buys {n + 1} more. How many apples?" for n in range(4)]


def responder(request):
    question = input_field(request, "question")
    values = {}
    for name in output_fields(request):
        if name == "subquestions":
            values[name] = ["How many apples at first?", "How many in all?"]
        elif name == "subanswers":
            values[name] = ["Counting them.", "Adding them."]
        elif name == "answer":
            values[name] = str(2 * int(question.split()[2]) + 1)
        else:
            values[name] = "Counting them."
    return chat_reply(values)


@pytest.fixture
def server():
    with OpenAICompatibleServer(responder) as server:
        yield server


def batched(server, tmp_path, **settings):
    config = ModelConfig(model="openai/scripted", api_base=server.base_url, batch=True, batch_poll_seconds=0.01,
                         input_cost_per_million=2.0, output_cost_per_million=8.0, **settings)
    return config, build_lm(config, cache=CallCache(tmp_path / "cache"), retries=1, retry_backoff=0.01)


class Job:
    """A pass over QUESTIONS through an iterative DecomposedSolver: the answers of the problems that finished."""

    def __init__(self, lm):
        self.lm = lm
        self.program = DecomposedSolver("question -> answer: int", mode="iterative")
        self.answers, self.costs = {}, {}

    def __call__(self):
        for question in QUESTIONS:
            if question in self.answers:
                continue
            with recording() as log:
                try:
                    with dspy.context(lm=self.lm):
                        self.answers[question] = self.program(question=question).answer
                except Exception as err:
                    if not is_pending(err):
                        raise
                    continue
            self.costs[question] = log.new_cost


def rounds(lm, config, tmp_path, **kwargs):
    api = OpenAIBatches(config.api_base, "offline", retries=0)
    return BatchRounds(lm.engine, config, BatchManifest(tmp_path / MANIFEST_FILE), api=api, progress=False, **kwargs)


def test_a_program_finishes_in_rounds_with_the_synchronous_answers_and_each_call_sent_once(server, tmp_path):
    config, lm = batched(server, tmp_path)
    job = Job(lm)
    summary = rounds(lm, config, tmp_path).run(job)
    assert job.answers == {question: 2 * int(question.split()[2]) + 1 for question in QUESTIONS}
    assert server.requests == []  # nothing synchronous
    sent = Counter(line["custom_id"] for line in server.batches.lines)
    assert len(sent) == 4 * 3 and set(sent.values()) == {1}  # decompose + 2 sub-answers per problem, once each
    assert summary.passes == 4 and len(summary.batches) == 3 and summary.answered == 12
    # Each problem carries the bill of its own calls, once: the batch's total.
    assert sum(job.costs.values()) == pytest.approx(summary.billed) and summary.billed > 0


def test_outside_a_round_a_batch_model_calls_synchronously_and_says_so_once(server, tmp_path, caplog):
    _, lm = batched(server, tmp_path)
    with caplog.at_level(logging.WARNING, logger="dd_prompting.models.engine"):
        with dspy.context(lm=lm):
            DecomposedSolver("question -> answer: int", mode="joint")(question=QUESTIONS[0])
    assert server.call_count == 2 and server.batches.lines == []
    assert [record.getMessage() for record in caplog.records].count(
        "openai/scripted is set to batch = true, but this call is outside a batch round (dd-evals run, dd-distill "
        "traces): it is sent synchronously, at the synchronous price") == 1


def test_polling_waits_out_an_outage(server, tmp_path, caplog):
    config, lm = batched(server, tmp_path)
    server.batches.outage = 3
    with caplog.at_level(logging.WARNING, logger="dd_prompting.batches.rounds"):
        rounds(lm, config, tmp_path).run(Job(lm))
    assert server.batches.outage == 0
    assert sum("could not reach http://127.0.0.1" in record.getMessage() for record in caplog.records) == 3


def test_a_run_killed_after_creating_a_batch_finds_it_by_its_round_and_sends_nothing_twice(
        server, tmp_path, monkeypatch):
    config, lm = batched(server, tmp_path)

    def killed(*args, **kwargs):
        raise SystemExit("killed right after the provider created the batch")

    monkeypatch.setattr(BatchManifest, "add", killed)
    with pytest.raises(SystemExit):
        rounds(lm, config, tmp_path).run(Job(lm))
    monkeypatch.undo()
    assert BatchManifest(tmp_path / MANIFEST_FILE).batches == {} and len(server.batches.batches) == 1
    job = Job(lm)
    rounds(lm, config, tmp_path).run(job)
    assert len(job.answers) == 4
    assert set(Counter(line["custom_id"] for line in server.batches.lines).values()) == {1}


def test_an_interrupted_wait_leaves_the_batch_running_and_the_next_run_reattaches(
        server, tmp_path, monkeypatch, caplog):
    import dd_prompting.batches.rounds as rounds_module

    config, lm = batched(server, tmp_path)
    server.batches.hold = True

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(rounds_module.time, "sleep", interrupt)
    with caplog.at_level(logging.WARNING, logger="dd_prompting.batches.rounds"), pytest.raises(KeyboardInterrupt):
        rounds(lm, config, tmp_path).run(Job(lm))
    monkeypatch.undo()
    [message] = [record.getMessage() for record in caplog.records]
    assert "batch_1 still run(s)" in message and "re-attach" in message and "dd-evals cancel-batches" in message
    assert list(BatchManifest(tmp_path / MANIFEST_FILE).pending()) == ["batch_1"]
    server.batches.hold = False
    job = Job(lm)
    rounds(lm, config, tmp_path).run(job)
    assert len(job.answers) == 4
    assert set(Counter(line["custom_id"] for line in server.batches.lines).values()) == {1}


def test_cancel_pending_cancels_at_the_server_and_a_later_run_sends_the_calls_again(server, tmp_path, monkeypatch):
    import dd_prompting.batches.rounds as rounds_module

    config, lm = batched(server, tmp_path)
    server.batches.hold = True
    monkeypatch.setattr(rounds_module.time, "sleep", lambda seconds: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        rounds(lm, config, tmp_path).run(Job(lm))
    monkeypatch.undo()
    manifest = BatchManifest(tmp_path / MANIFEST_FILE)
    assert cancel_pending(manifest) == {"batch_1": "cancelled"}
    assert manifest.pending() == {} and server.batches.batches["batch_1"]["status"] == "cancelled"
    server.batches.hold = False
    job = Job(lm)
    rounds(lm, config, tmp_path).run(job)
    assert len(job.answers) == 4


def test_a_model_that_cannot_be_batched_is_refused_in_one_sentence(monkeypatch):
    with pytest.raises(ConfigError, match="batch = true is for API models"):
        ModelConfig(model="smollm2", kind="local", batch=True)
    with pytest.raises(ConfigError, match="needs the call cache"):
        check_batchable(ModelConfig(model="openai/gpt-4o-mini", batch=True), cache=False)
    with pytest.raises(ConfigError, match="not 'ollama_chat'"):
        check_batchable(ModelConfig(model="ollama_chat/llama3", batch=True), cache=True)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="needs a key: export ANTHROPIC_API_KEY"):
        check_batchable(ModelConfig(model="anthropic/claude-3-5-haiku-latest", batch=True), cache=True)
    # A dry run calls nothing: it needs no key (what a run would need it says, a run refuses without).
    check_batchable(ModelConfig(model="anthropic/claude-3-5-haiku-latest", batch=True), cache=True, key=False)


def test_batch_settings_stay_out_of_a_models_public_record():
    plain = ModelConfig(model="openai/gpt-4o-mini").to_public_dict()
    assert "batch" not in plain and "batch_poll_seconds" not in plain  # fingerprints of earlier runs unchanged
    assert json.dumps(plain, sort_keys=True) == json.dumps(
        {k: v for k, v in ModelConfig(model="openai/gpt-4o-mini", batch=True).to_public_dict().items()
         if k != "batch"}, sort_keys=True)


def test_a_malformed_line_is_a_failed_line_and_goes_again(server, tmp_path, caplog):
    config, lm = batched(server, tmp_path)
    answer = server.batches._answer
    broken = []

    def break_the_first_reply(batch):
        answer(batch)
        if not broken and batch.get("output_file_id"):
            lines = server.batches.files[batch["output_file_id"]].decode().splitlines()
            first = json.loads(lines[0])
            first["response"]["body"] = {"object": "chat.completion", "choices": "not a list"}
            broken.append(first["custom_id"])
            server.batches.files[batch["output_file_id"]] = "\n".join([json.dumps(first), *lines[1:]]).encode()

    server.batches._answer = break_the_first_reply
    job = Job(lm)
    with caplog.at_level(logging.WARNING, logger="dd_prompting.batches.rounds"):
        summary = rounds(lm, config, tmp_path).run(job)
    assert len(job.answers) == 4 and summary.resent == 1
    assert Counter(line["custom_id"] for line in server.batches.lines)[broken[0]] == 2
    assert any("malformed reply" in record.getMessage() for record in caplog.records)
