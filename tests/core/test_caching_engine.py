"""The model layer on DSPy's request/response contract: one caching engine under every model the package builds.

Against a scripted OpenAI-compatible server on 127.0.0.1 and a tiny GPT-2 built in the test:
old caches keep answering, `lm(Request)` returns a Response on a miss and a hit, samples stay
distinct, DSPy's cache and retries stay out of the way, usage is counted once, capabilities pass
through, programs save and load, and local models answer `acall` without blocking the loop.
"""

import asyncio
import itertools
import json
import threading
from pathlib import Path

import dspy
import pytest
from dspy import lm15

from dd_prompting import DecomposedSolver, PlainTextAdapter, local_lm
from dd_prompting.models import CachingLM, CallCache, ModelConfig, build_lm, recording
from dd_prompting.testing import OpenAICompatibleServer, Reply, formatted_reply, output_fields
from legacy_programs import LEGACY_API_BASE, LEGACY_MODEL, run_programs
from tiny_models import tiny_gpt2, train_tokenizer

LEGACY_CALLS = Path(__file__).parents[1] / "data" / "legacy_calls_0.1.0.jsonl"
CORPUS = ["Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer: 7",
          "Problem: Ann reads 5 pages a day for 3 days. How many pages?\nSubquestions:\n1. How many?"] * 20


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny GPT-2 saved as a directory, as a dd-distill student or a downloaded model is."""
    tokenizer = train_tokenizer(CORPUS)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_gpt2(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def counting_model():
    """A scripted model whose every reply is a new number, so distinct samples are told apart."""
    counter = itertools.count(1)
    lock = threading.Lock()

    def respond(request):
        with lock:
            number = next(counter)
        if "Your output fields are" not in request["messages"][0]["content"]:  # plain text
            return f"{number}"
        return formatted_reply(request, {name: number for name in output_fields(request)})
    return respond


def _api(server, cache=None, **fields):
    return build_lm(ModelConfig(model="openai/scripted", api_base=server.base_url, **fields), cache=cache)


def _ask(lm, **config):
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        return dspy.Predict("question -> answer", **config)(question="What is 6 * 7?")


# --- old caches -------------------------------------------------------------------------------------

def test_a_cache_written_by_release_0_1_0_answers_every_call_with_no_new_call(tmp_path):
    lines = [json.loads(line) for line in LEGACY_CALLS.read_text().splitlines()]
    cache = CallCache(tmp_path / "cache")
    for line in lines[:-1]:
        cache.put(line["key"], line["record"])
    # Nothing listens at the recorded endpoint: a call that missed the cache would fail.
    lm = build_lm(ModelConfig(model=LEGACY_MODEL, api_base=LEGACY_API_BASE, retries=0), cache=cache)
    with recording() as log:
        answers = run_programs(lm)
    assert answers == lines[-1]["answers"]
    assert lm.calls_made == 0 and not log.errors
    assert len(log.calls) == 21 and all(call.cached for call in log.calls)


# --- the request/response contract ------------------------------------------------------------------

def _request(lm):
    return lm15.Request(model=lm.model, messages=(lm15.Message.user("Question: Tom has 3 apples. How many?"),),
                        config=lm15.Config(max_tokens=4))


@pytest.mark.parametrize("kind", ["api", "local", "student"])
def test_a_request_gets_a_response_on_a_miss_on_a_hit_and_while_recording(kind, tiny_dir, tmp_path):
    with OpenAICompatibleServer(lambda request: "Seven.") as server:
        if kind == "api":
            lm = _api(server, cache=CallCache(tmp_path / "cache"))
        elif kind == "local":
            lm = build_lm(ModelConfig(kind="local", name="tiny", model=str(tiny_dir), max_new_tokens=4),
                          cache=CallCache(tmp_path / "cache"))
        else:  # a student loaded as an LM by itself, on DSPy's own cache
            lm = local_lm(tiny_dir, max_new_tokens=4)
        miss = lm(_request(lm))
        hit = lm(_request(lm))
        with recording() as log:
            recorded = lm(_request(lm))
    assert all(isinstance(response, lm15.Response) for response in (miss, hit, recorded))
    assert miss.text == hit.text == recorded.text
    if isinstance(lm, CachingLM):
        assert lm.calls_made == 1
        assert [call.cached for call in log.calls] == [True]
        assert hit.usage.input_tokens == 0  # a hit spent nothing


# --- distinct samples --------------------------------------------------------------------------------

@pytest.mark.parametrize("adapter", ["chat", "plain"])
def test_n_samples_are_distinct_and_rerun_from_the_cache(adapter, tmp_path):
    make = {"chat": dspy.ChatAdapter, "plain": PlainTextAdapter}[adapter]

    def sample(lm):
        with dspy.context(lm=lm, adapter=make()):
            prediction = dspy.Predict("question -> answer", n=3, temperature=0.7)(question="Pick a number.")
        return [completion.answer for completion in prediction.completions]

    with OpenAICompatibleServer(counting_model()) as server:
        first = sample(_api(server, cache=CallCache(tmp_path / "cache")))
        again = sample(_api(server, cache=CallCache(tmp_path / "cache")))
    assert len(set(first)) == 3
    assert again == first and server.call_count == 3


def test_rollouts_and_best_of_n_stay_distinct_and_rerun_from_the_cache(tmp_path):
    def rollouts(lm):
        answers = [_ask(lm.copy(rollout_id=rollout, temperature=1.0)).answer for rollout in (1, 2)]
        best = dspy.BestOfN(dspy.Predict("question -> answer"), N=3, reward_fn=lambda args, pred: 0.0, threshold=1.0)
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
            best(question="Pick a number.")
        return answers

    with OpenAICompatibleServer(counting_model()) as server:
        first = rollouts(_api(server, cache=CallCache(tmp_path / "cache")))
        calls = server.call_count
        again = rollouts(_api(server, cache=CallCache(tmp_path / "cache")))
    assert first[0] != first[1]
    assert calls == 5  # two rollouts, three BestOfN attempts: each its own sample
    assert again == first and server.call_count == calls


# --- one cache, one retry loop, usage once -----------------------------------------------------------

def test_dspys_cache_stays_out_of_the_way_even_when_a_call_asks_for_it():
    # DSPy's cache key ignores the endpoint: it would answer the second server's call from the first's.
    with OpenAICompatibleServer(counting_model()) as first, OpenAICompatibleServer(counting_model()) as second:
        _ask(_api(first), cache=True)
        _ask(_api(second), cache=True)
    assert (first.call_count, second.call_count) == (1, 1)


def test_transient_errors_are_retried_once_by_the_engine_with_attempts_recorded():
    replies = [Reply(status=429, headers={"Retry-After": "0"}), Reply(status=503)]

    def flaky(request):
        return replies.pop(0) if replies else "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"

    with OpenAICompatibleServer(flaky) as server:
        with recording() as log:
            answer = _ask(_api(server, retries=3, retry_backoff=0.0)).answer
    assert answer == "42"
    assert server.call_count == 3  # one loop: DSPy's own retries would have sent more
    assert [call.attempts for call in log.calls] == [3] and log.retries == 2


def test_a_call_that_keeps_failing_is_raised_after_our_retries_alone():
    with OpenAICompatibleServer(lambda request: Reply(status=503)) as server:
        with recording() as log, pytest.raises(dspy.utils.exceptions.LMError):
            _ask(_api(server, retries=1, retry_backoff=0.0))
    assert server.call_count == 2
    assert len(log.errors) == 1 and log.retries == 1


def test_usage_and_history_are_counted_once_and_a_hit_spends_nothing(tmp_path):
    with OpenAICompatibleServer(lambda request: "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]") as server:
        lm = _api(server, cache=CallCache(tmp_path / "cache"))
        with dspy.track_usage() as miss:
            _ask(lm)
        with dspy.track_usage() as hit:
            _ask(lm)
    served = server.requests[0]
    assert served and len(lm.history) == 2  # one entry per call, none from the inner client
    spent = miss.get_total_tokens()["openai/scripted"]
    assert spent["prompt_tokens"] == lm.history[0]["usage"]["prompt_tokens"] > 0
    assert hit.get_total_tokens().get("openai/scripted", {}).get("prompt_tokens", 0) == 0


def test_capabilities_are_those_of_the_route():
    with OpenAICompatibleServer(lambda request: "ok") as server:
        ours = build_lm(ModelConfig(model="openai/gpt-4o-mini", api_base=server.base_url), cache=None)
        plain = dspy.LM("openai/gpt-4o-mini", api_base=server.base_url, api_key="x")
    for name in ("supports_function_calling", "supports_response_schema", "supports_reasoning", "supported_params"):
        assert getattr(ours, name) == getattr(plain, name), name
    assert ours.supports_function_calling and ours.supports_response_schema


# --- saving -------------------------------------------------------------------------------------------

def test_a_program_on_a_built_lm_saves_without_its_key_and_loads_answering_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SERVER_KEY", "sk-secret-key-0123456789")
    path = tmp_path / "program.json"
    with OpenAICompatibleServer(lambda request: formatted_reply(request, {n: 17 for n in output_fields(request)})) as server:
        config = ModelConfig(model="openai/scripted", api_base=server.base_url, api_key_env="MY_SERVER_KEY")
        program = dspy.Predict("question -> answer")
        program.set_lm(build_lm(config, cache=CallCache(tmp_path / "cache")))
        with dspy.context(adapter=dspy.ChatAdapter()):
            first = program(question="Q?").answer
        program.save(path)
        assert "sk-secret" not in path.read_text()
        loaded = dspy.Predict("question -> answer")
        loaded.load(path, allow_unsafe_lm_state=True)
        with dspy.context(adapter=dspy.ChatAdapter()):
            again = loaded(question="Q?").answer
    assert isinstance(loaded.lm, CachingLM)
    assert again == first and server.call_count == 1
    assert server.authorizations == ["Bearer sk-secret-key-0123456789"]


def test_the_deprecated_cachedlm_warns_and_still_answers_through_the_cache(tmp_path):
    from dd_prompting.models import CachedLM, Pricing

    with OpenAICompatibleServer(lambda request: "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]") as server:
        inner = dspy.LM("openai/scripted", api_base=server.base_url, api_key="x")
        with pytest.warns(DeprecationWarning, match="build_lm"):
            lm = CachedLM(inner, cache=CallCache(tmp_path / "cache"), pricing=Pricing(None, None, "unknown"))
        assert _ask(lm).answer == _ask(lm).answer == "42"
    assert server.call_count == 1


# --- async local models --------------------------------------------------------------------------------

@pytest.mark.no_adapter
def test_acall_on_a_local_model_gives_the_sync_answer_without_blocking_the_loop(tiny_dir):
    lm = local_lm(tiny_dir, max_new_tokens=6, cache=False)
    program = DecomposedSolver("question -> answer: float", demos=None)
    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    with dspy.context(lm=lm):
        expected = program(question=question)

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        tick = asyncio.create_task(ticker())
        with dspy.context(lm=lm):
            prediction = await program.acall(question=question)
        done.set()
        await tick
        return prediction, ticks

    prediction, ticks = asyncio.run(main())
    assert (prediction.answer, prediction.subquestions) == (expected.answer, expected.subquestions)
    assert ticks > 1  # the loop ran while the model generated


@pytest.mark.no_adapter
def test_the_readmes_async_hybrid_pair_runs_with_a_local_decomposer(tiny_dir):
    with OpenAICompatibleServer(lambda request: formatted_reply(
            request, {n: (["How many?"] if n == "subanswers" else 7) for n in output_fields(request)})) as server:
        small = local_lm(tiny_dir, max_new_tokens=8, cache=False)
        large = dspy.LM("openai/scripted", api_base=server.base_url, api_key="x", cache=False)
        solve = DecomposedSolver("question -> answer: float")
        solve.decompose.set_lm(small)
        solve.solve.set_lm(large)

        async def main(questions):
            return await asyncio.gather(*(solve.acall(question=q) for q in questions))

        questions = ["Tom has 3 apples and buys 4 more. How many?", "Ann has 2 pens. How many?"]
        with dspy.context(lm=large):  # the README configures an LM too: a direct fallback answers with it
            predictions = asyncio.run(main(questions))
            sync = [solve(question=q) for q in questions]
    assert [p.answer for p in predictions] == [p.answer for p in sync]
    assert [p.subquestions for p in predictions] == [p.subquestions for p in sync]


@pytest.mark.no_adapter
def test_a_fine_tuned_copy_of_a_local_lm_keeps_an_async_engine(tiny_dir, tmp_path):
    import shutil

    other = tmp_path / "fine-tuned"
    shutil.copytree(tiny_dir, other)
    lm = local_lm(tiny_dir, max_new_tokens=4, cache=False)
    tuned = lm.copy(model=f"local/{other}")  # what dspy.BootstrapFinetune hands back
    assert tuned.engine is not lm.engine
    sync = tuned("Question: Tom has 3 apples.")
    assert asyncio.run(tuned.acall("Question: Tom has 3 apples.")) == sync
