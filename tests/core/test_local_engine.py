"""The local engine's scheduler on a tiny GPT-2: concurrent requests decoded together, each as it would be alone."""

import asyncio
import threading

import dspy
import pytest
from dspy import lm15

from dd_prompting import TransformersEngine
from tiny_models import tiny_gpt2, train_tokenizer

CORPUS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer: 7",
    "Problem: Ann reads 5 pages a day for 3 days. How many pages?\nSubquestions:\n1. How many?",
] * 20
DEMOS = "Solve it.\n\n" + "\n\n".join(CORPUS[:4]) + "\n\n"
PROMPTS = [DEMOS + f"Question: Tom has {n} apples and {'buys' if n % 2 else 'sells'} {n + 1}. How many?\nAnswer:"
           for n in range(1, 7)] + ["Problem: Ann reads", "Question: Tom has 12 apples and buys 30 more, then"]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = train_tokenizer(CORPUS)
    # Large initial weights: an untrained model that writes a different reply for each prompt, so a row
    # decoded with another row's context would show (at GPT-2's 0.02 every prompt gets the same reply).
    model = tiny_gpt2(tokenizer, initializer_range=0.5)
    assert len({_alone(model, tokenizer, prompt)[0] for prompt in PROMPTS}) == len(PROMPTS)
    return model, tokenizer


def _alone(model, tokenizer, prompt, **options):
    engine = TransformersEngine(model, tokenizer, max_new_tokens=16, max_batch_size=1, prefix_cache_size=0)
    try:
        return engine.generate(prompt, max_new_tokens=16, **options)
    finally:
        engine.close()


def _together(engine, prompts, options):
    with engine.scheduler.held():
        futures = [engine.submit(prompt, max_new_tokens=16, **option) for prompt, option in zip(prompts, options)]
    results = [future.result() for future in futures]
    return [(r.text, r.prompt_tokens, r.new_tokens, r.finish_reason) for r in results]


def test_a_batch_gives_each_request_its_text_alone_with_the_shared_prefix_encoded_once(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=16, prefix_cache_size=0)
    together = _together(engine, PROMPTS, [{}] * len(PROMPTS))
    # The six prompts with the demos are one family, decoded together; the two others run as theirs.
    assert engine.scheduler.batch_sizes == [6, 1, 1]
    assert together == [_alone(model, tokenizer, prompt) for prompt in PROMPTS]
    engine.close()


def test_stop_sequences_end_each_request_of_a_batch_on_its_own(tiny):
    model, tokenizer = tiny
    alone = [_alone(model, tokenizer, prompt)[0] for prompt in PROMPTS[:4]]
    # Stop each request at a piece of its own reply, so each ends at a different step.
    stops = [(text[2:5],) if len(text) > 5 else ("\n",) for text in alone]
    engine = TransformersEngine(model, tokenizer, max_new_tokens=16)
    together = _together(engine, PROMPTS[:4], [{"stop": stop} for stop in stops])
    for (text, _, _, finish), stop, full in zip(together, stops, alone):
        assert stop[0] not in text and full.startswith(text)
        if stop[0] in full:
            assert finish == "stop" and len(text) < len(full)
    assert together == [_alone(model, tokenizer, p, stop=s) for p, s in zip(PROMPTS[:4], stops)]
    engine.close()


def test_sampling_settings_and_seeds_are_per_request(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=16)
    options = [{"temperature": 1.0, "seed": 7}, {"temperature": 1.0, "seed": 7}, {"temperature": 1.0, "seed": 8}, {}]
    together = _together(engine, [PROMPTS[0]] * 4, options)
    assert together[0] == together[1] == _alone(model, tokenizer, PROMPTS[0], temperature=1.0, seed=7)
    assert together[2] != together[0]
    assert together[3] == _alone(model, tokenizer, PROMPTS[0])  # a greedy row beside sampled ones
    engine.close()


def test_a_prompt_longer_than_the_context_fails_alone(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=16)
    with engine.scheduler.held():
        good = engine.submit(PROMPTS[0], max_new_tokens=16)
        with pytest.raises(ValueError, match="attends over at most"):
            engine.submit("apples " * 2000, max_new_tokens=16)
    result = good.result()
    assert (result.text, result.prompt_tokens, result.new_tokens, result.finish_reason) == _alone(
        model, tokenizer, PROMPTS[0])
    engine.close()


def test_the_memory_bound_splits_a_batch(tiny):
    model, tokenizer = tiny
    width = max(len(tokenizer(prompt)["input_ids"]) for prompt in PROMPTS[:6]) + 16
    engine = TransformersEngine(model, tokenizer, max_new_tokens=16, max_batch_tokens=3 * width)
    _together(engine, PROMPTS[:6], [{}] * 6)
    assert engine.scheduler.batch_sizes == [3, 3]
    engine.close()


def test_an_asyncio_gather_is_decoded_as_one_batch(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=16)
    requests = [lm15.Request(model="local", messages=(lm15.Message.user(prompt),)) for prompt in PROMPTS[:6]]

    async def main():
        with engine.scheduler.held():
            tasks = [asyncio.ensure_future(engine.async_twin.complete(request)) for request in requests]
            while engine.scheduler.queued < len(tasks):
                await asyncio.sleep(0)
        return await asyncio.gather(*tasks)

    responses = asyncio.run(main())
    assert engine.scheduler.batch_sizes == [6]
    assert [r.text for r in responses] == [engine.complete(request).text for request in requests]
    engine.close()


def test_threads_from_dspy_are_batched_and_the_worker_stops_on_close(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=8)
    lm = dspy.LM("local/tiny", engine=engine, async_engine=engine.async_twin, cache=False)
    barrier = threading.Barrier(4)

    def ask(prompt):
        barrier.wait()
        return lm(prompt)[0]

    with engine.scheduler.held():
        threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS[:4]]
        for thread in threads:
            thread.start()
        while engine.scheduler.queued < 4:
            pass
    for thread in threads:
        thread.join()
    assert engine.scheduler.batch_sizes == [4]
    assert engine.scheduler.running
    engine.close()
    assert not engine.scheduler.running
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(PROMPTS[0], max_new_tokens=4)


def test_a_prefix_the_first_row_shares_with_an_earlier_prompt_is_not_given_to_the_other_rows(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=16)  # with its prefix cache
    first = PROMPTS[0]
    engine.generate(first, max_new_tokens=4)  # now a recent prompt
    # The batch's first row shares all of `first` but its end; the second row shares only the demos with it.
    batch = [first[:-8] + " buys 9. How many?\nAnswer:", "\n\n".join(CORPUS[1:6]) + "\nQuestion: How many?\nAnswer:"]
    together = _together(engine, batch, [{}, {}])
    assert together == [_alone(model, tokenizer, prompt) for prompt in batch]
    engine.close()
