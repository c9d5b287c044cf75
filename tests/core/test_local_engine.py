"""The local engine's scheduler on a tiny GPT-2: concurrent requests decoded together, each as it would be alone."""

import asyncio
import random
import threading
import time

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


def _alone(model, tokenizer, prompt, max_new_tokens=16, **options):
    engine = TransformersEngine(model, tokenizer, max_new_tokens=16, max_batch_size=1, prefix_cache_size=0)
    try:
        return engine.generate(prompt, max_new_tokens=max_new_tokens, **options)
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


# -- the worker outlives idle time, its own faults and cancelled callers (issue 29) -------------------------------


def _wait_for(condition, what: str, *, seconds: float = 30.0) -> None:
    """Poll until `condition()` holds; a bound on a hang, not a measurement."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def test_an_engine_answers_after_its_worker_has_been_idle(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=8)
    engine.scheduler.idle_seconds = 0.005  # the default is a second; the same code path, sooner
    first = engine.submit(PROMPTS[0], max_new_tokens=8).result(timeout=60)
    # The worker's wait ended twice with nothing to do (the case that killed it with "pop from an empty deque").
    _wait_for(lambda: engine.scheduler.idle_wakeups >= 2, "the worker to go idle")
    assert engine.scheduler.running
    second = engine.submit(PROMPTS[1], max_new_tokens=8).result(timeout=60)
    assert (first.text, second.text) == (_alone(model, tokenizer, PROMPTS[0], max_new_tokens=8)[0],
                                         _alone(model, tokenizer, PROMPTS[1], max_new_tokens=8)[0])
    engine.close()


@pytest.mark.parametrize("when", ["after the batch is taken", "before a batch is taken"])
def test_an_error_in_the_workers_loop_fails_the_requests_it_concerns_and_the_next_request_is_answered(
        tiny, monkeypatch, when):
    """After taking a batch, the worker fails that batch; before, the queued requests (the error would come again
    for them, and the loop would spin). Either way the next request is answered."""
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=8)
    scheduler = engine.scheduler
    take = scheduler._next_batch
    failures = iter([RuntimeError("injected fault")])

    def faulty_take():
        if when == "before a batch is taken" and (err := next(failures, None)) is not None:
            raise err
        batch = take()
        if batch and (err := next(failures, None)) is not None:
            raise err  # the worker holds the batch now
        return batch

    with scheduler.held():  # the request is queued before the worker's first look
        monkeypatch.setattr(scheduler, "_next_batch", faulty_take)
        future = engine.submit(PROMPTS[0], max_new_tokens=8)
    with pytest.raises(RuntimeError, match="injected fault"):
        future.result(timeout=60)
    assert engine.submit(PROMPTS[2], max_new_tokens=8).result(timeout=60).text == _alone(
        model, tokenizer, PROMPTS[2], max_new_tokens=8)[0]
    engine.close()


def test_a_worker_that_ended_is_replaced_by_the_next_submit(tiny, monkeypatch):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=8)
    scheduler = engine.scheduler
    step, ended = scheduler._step, []

    def end_once():
        if not ended:
            ended.append(True)
            return False  # what the loop hears when its scheduler is closed: it returns, the thread ends
        return step()

    monkeypatch.setattr(scheduler, "_step", end_once)
    engine.submit(PROMPTS[0], max_new_tokens=8)  # the worker's first look ends its loop, with the request queued
    _wait_for(lambda: not scheduler.running, "the worker to end")
    assert engine.submit(PROMPTS[1], max_new_tokens=8).result(timeout=60).text == _alone(
        model, tokenizer, PROMPTS[1], max_new_tokens=8)[0]
    engine.close()


def test_a_cancelled_caller_leaves_the_rest_of_its_batch_answered(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=16)
    with engine.scheduler.held():
        futures = [engine.submit(prompt, max_new_tokens=16) for prompt in PROMPTS[:4]]
        assert futures[1].cancel()
    texts = [futures[i].result(timeout=60).text for i in (0, 2, 3)]
    assert texts == [_alone(model, tokenizer, PROMPTS[i])[0] for i in (0, 2, 3)]
    engine.close()


def test_soak_threads_and_asyncio_with_pauses_longer_than_the_idle_wait(tiny):
    """A few hundred short requests from 4 threads and an asyncio caller, with random pauses, some longer than
    the worker's idle wait: every request resolves, each greedy text equal to the text its prompt gives alone."""
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=6)
    engine.scheduler.idle_seconds = 0.004
    single = TransformersEngine(model, tokenizer, max_new_tokens=6, max_batch_size=1, prefix_cache_size=0)
    alone = {prompt: dspy.LM("local/tiny", engine=single, cache=False)(prompt)[0] for prompt in PROMPTS}
    single.close()
    lm = dspy.LM("local/tiny", engine=engine, async_engine=engine.async_twin, cache=False)
    per_caller, rounds = 60, 3
    results: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def all_paused():  # every caller waits here between rounds: the worker surely goes idle, then they go on
        since = engine.scheduler.idle_wakeups
        if engine.scheduler.running:  # (it starts with the first request)
            _wait_for(lambda: engine.scheduler.idle_wakeups > since, "the worker to go idle")

    between_rounds = threading.Barrier(5, action=all_paused)

    def pause(rng):
        return rng.choice([0.0, 0.0, 0.001, 0.003, 0.012])  # 0.012 s: three idle waits

    def thread_caller(seed):
        rng = random.Random(seed)
        try:
            for step in range(per_caller):
                if step % (per_caller // rounds) == 0:
                    between_rounds.wait(timeout=60)
                prompt = rng.choice(PROMPTS)
                results.append((prompt, lm(prompt)[0]))
                time.sleep(pause(rng))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    async def asyncio_caller(seed):
        rng = random.Random(seed)

        async def one(prompt, delay):
            await asyncio.sleep(delay)
            return prompt, (await lm.acall(prompt))[0]

        for step in range(per_caller // 4):
            if step % (per_caller // 4 // rounds) == 0:
                await asyncio.to_thread(between_rounds.wait, 60)
            chosen = [rng.choice(PROMPTS) for _ in range(4)]
            results.extend(await asyncio.gather(*(one(p, pause(rng)) for p in chosen)))
            await asyncio.sleep(pause(rng))

    threads = [threading.Thread(target=thread_caller, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    asyncio.run(asyncio_caller(99))
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert len(results) == 5 * per_caller
    assert [text for _, text in results] == [alone[prompt] for prompt, _ in results]
    assert engine.scheduler.idle_wakeups >= rounds - 1 and max(engine.scheduler.batch_sizes) > 1  # both paths taken
    engine.close()
