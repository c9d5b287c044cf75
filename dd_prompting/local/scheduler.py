"""`BatchScheduler`: one worker thread decodes the requests that callers submit, together.

Callers (DSPy threads from `dspy.Evaluate`/`dspy.Parallel`, or asyncio tasks through the async
engine) only `submit` token ids and wait on a future; the scheduler alone decides what runs
together, as in vLLM, SGLang or transformers' continuous batching. Whatever is waiting when the
worker is free becomes one batch (up to `max_batch_size` rows and `max_batch_tokens` prompt and
reply tokens, which bounds the key/value cache's memory), decoded step by step with one `Decoder`:

- the prompt prefix the batch's rows share (the predictor's instructions and demos) is encoded
  once and its cache repeated into every row; a prefix kept from an earlier batch (`PrefixCache`)
  is not encoded again at all;
- each row stops on its own: EOS, one of its stop sequences (cut from the text), its token budget
  or the end of the model's context, and stops costing anything but padding;
- each row samples with its own settings: greedy, or its temperature, top-p and seed.

Greedy rows give the text they would give alone: padding sits between chunks, hidden by the
attention mask, and positions count real tokens only. A request that cannot run (a prompt longer
than the context) fails alone, when it is submitted.

The worker outlives idle time and its own faults: it wakes every `idle_seconds` only to see whether
its scheduler is still in use, and an error anywhere in its loop fails the requests it had taken,
with that error, and the loop goes on. No future is left unresolved.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from dd_prompting.local.decoding import Decoder, context_limit

__all__ = ["BatchScheduler", "Generation"]

logger = logging.getLogger(__name__)

# A shared prefix shorter than this is not worth a separate forward pass; prompts whose first this many
# tokens agree are one family (one predictor's calls), batched together.
_MIN_SHARED_PREFIX = 32


@dataclass
class Generation:
    """One request's result: the text (stop sequence cut), prompt and new token counts, why it ended."""

    text: str
    prompt_tokens: int
    new_tokens: int
    finish_reason: str


@dataclass
class _Request:
    ids: list[int]
    max_new_tokens: int
    stop: tuple[str, ...]
    temperature: float | None
    top_p: float | None
    seed: int | None
    future: Future = field(default_factory=Future)
    generated: list[int] = field(default_factory=list)
    generator: Any = None


class BatchScheduler:
    """Decode submitted requests in batches on one worker thread (started on the first request).

    Args:
        model, tokenizer: The loaded model (in eval mode, on its device) and its tokenizer.
        max_batch_size: Most rows decoded at once.
        max_batch_tokens: Most prompt + reply tokens in one batch (rows x the longest row): what bounds
            the key/value cache. 16,384 tokens of SmolLM2-135M's cache is about 0.75 GB in float32.
        prefix_cache: Keeps prompt prefixes' caches across batches (None: only within a batch).
        lock: Held while the model runs (loading or training elsewhere in the process must wait).
        gather_seconds: How long a batch that is not full waits for more requests before it starts. Callers
            that finish one batch together (the threads of `dspy.Evaluate`) send their next calls a few
            milliseconds apart; without the wait the first of them would start a batch alone.
        idle_seconds: How long the idle worker sleeps between checks that its scheduler is still in use (it
            holds the scheduler weakly, so an engine nobody references is collected and its worker ends).
    """

    def __init__(self, model, tokenizer, *, max_batch_size: int = 16, max_batch_tokens: int = 16384,
                 prefix_cache=None, lock: threading.RLock | None = None, gather_seconds: float = 0.02,
                 idle_seconds: float = 1.0):
        if max_batch_size < 1 or max_batch_tokens < 1:
            raise ValueError(f"max_batch_size and max_batch_tokens must be at least 1, got {max_batch_size} "
                             f"and {max_batch_tokens}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_batch_tokens = max_batch_size, max_batch_tokens
        self.prefix_cache = prefix_cache
        self.gather_seconds = gather_seconds
        self.idle_seconds = idle_seconds
        self.idle_wakeups = 0  # waits that ended with nothing to do, for tests
        self.limit = context_limit(model)
        self.batch_sizes: list[int] = []  # every batch's size, for benchmarks and tests
        self._lock = lock or threading.RLock()
        self._queue: deque[_Request] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._holds = 0
        self._taken: list[_Request] = []  # the batch the worker holds, failed if its loop goes wrong
        self._thread: threading.Thread | None = None
        _LIVE.add(self)

    def submit(self, ids: list[int], *, max_new_tokens: int, stop: tuple[str, ...] = (),
               temperature: float | None = None, top_p: float | None = None, seed: int | None = None) -> Future:
        """Queue one request; its future resolves to a `Generation`. A request that cannot run raises here."""
        if len(ids) >= self.limit:
            # Past its position table the model fails deep inside torch ("index out of range in self").
            raise ValueError(
                f"the prompt is {len(ids)} tokens, but this model attends over at most {self.limit} positions. "
                "Shorten the prompt (fewer or no demos, e.g. DecomposedSolver(..., demos=None), shorter inputs), or "
                "use a model with a longer context (a dd-distill student: a larger student.max_length)."
            )
        if not ids:
            raise ValueError("the prompt is empty")
        request = _Request(list(ids), max(1, min(max_new_tokens, self.limit - len(ids))), tuple(stop),
                           temperature, top_p, seed)
        with self._wake:
            if self._closed:
                raise RuntimeError("this engine is closed")
            self._queue.append(request)
            if self._thread is None or not self._thread.is_alive():  # the first request, or a worker that died
                self._thread = threading.Thread(target=_work, args=(weakref.ref(self),), daemon=True,
                                                name="dd-prompting-local-engine")
                self._thread.start()
            self._wake.notify()
        return request.future

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive (it starts with the first request and stops on `close`)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        with self._wake:
            return len(self._queue)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Start no batch while held: requests queue up and are decoded together on release (up to the limits)."""
        with self._wake:
            self._holds += 1
        try:
            yield
        finally:
            with self._wake:
                self._holds -= 1
                self._wake.notify_all()

    def close(self) -> None:
        """Stop the worker once the current batch is done; requests still queued fail."""
        with self._wake:
            self._closed = True
            pending, self._queue = list(self._queue), deque()
            self._wake.notify_all()
        _fail(pending, RuntimeError("the engine was closed before this request ran"))
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- the worker ----------------------------------------------------------------------------------
    def _next_batch(self) -> list[_Request] | None:
        """The next batch; [] when there is none yet (the worker checks in and waits again); None once closed."""
        with self._wake:
            if (not self._queue or self._holds) and not self._closed:
                self._wake.wait(self.idle_seconds)
            if self._closed:
                return None
            if not self._queue:
                self.idle_wakeups += 1
                return []
            if self._holds:
                return []
            # A lone caller (the last batch and the queue hold one request) never waits.
            concurrent = len(self._queue) > 1 or (self.batch_sizes and self.batch_sizes[-1] > 1)
            deadline = time.monotonic() + (self.gather_seconds if concurrent else 0.0)
            while self._queue and len(self._queue) < self.max_batch_size and not self._closed and not self._holds:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            if self._closed:
                return None
            # The oldest request, and the waiting ones of its family (the same predictor: its instructions
            # and demos), so the batch's shared prefix is encoded once; the others wait for the next batch.
            batch = self._taken = [self._queue.popleft()]
            family = batch[0].ids[:_MIN_SHARED_PREFIX]
            for request in list(self._queue):
                if len(batch) >= self.max_batch_size:
                    break
                if request.ids[:_MIN_SHARED_PREFIX] != family:
                    continue
                width = max(len(r.ids) + r.max_new_tokens for r in [*batch, request])
                if width * (len(batch) + 1) > self.max_batch_tokens:
                    break
                self._queue.remove(request)
                batch.append(request)
            return batch

    def _step(self) -> bool:
        """Take one batch and decode it; False once the scheduler is closed."""
        batch = self._next_batch()
        if batch is None:
            return False
        if batch:
            self._run(batch)
        return True

    def _run(self, batch: list[_Request]) -> None:
        import torch

        self.batch_sizes.append(len(batch))
        try:
            with self._lock, torch.inference_mode():
                self._decode(batch)
        except BaseException as err:  # noqa: BLE001 - the callers get the error, the worker goes on
            _fail(batch, err)
        finally:
            self._taken = []

    def _recover(self, err: BaseException) -> None:
        """After an error in the worker's own loop: fail what it had taken, so no caller waits forever.

        With nothing taken, the error came before a batch was formed and would come again: the queued
        requests fail with it instead of the loop spinning on them.
        """
        logger.error("the local engine's worker failed; its requests get the error and it goes on", exc_info=err)
        with self._wake:
            failed, self._taken = self._taken, []
            if not failed:
                failed, self._queue = list(self._queue), deque()
        _fail(failed, err)

    def _decode(self, batch: list[_Request]) -> None:
        import torch
        decoder, chunks = self._start(batch)
        for request in batch:
            if request.temperature and request.seed is not None:
                request.generator = torch.Generator(device=decoder.device).manual_seed(int(request.seed))
        running = [True] * len(batch)
        logits = decoder.feed(chunks)
        eos = self.tokenizer.eos_token_id
        for step in range(max(request.max_new_tokens for request in batch)):
            tokens = self._choose(batch, logits, running)
            feed: list[list[int]] = [[] for _ in batch]
            for row, request in enumerate(batch):
                if not running[row]:
                    continue
                if request.future.cancelled():  # its caller gave up (an asyncio task cancelled): stop decoding it
                    running[row] = False
                    continue
                token = tokens[row]
                if token == eos:
                    running[row] = False
                    self._finish(request, "stop")
                    continue
                request.generated.append(token)
                if self._stopped(request):
                    running[row] = False
                elif len(request.generated) >= request.max_new_tokens or decoder.room(row) <= 1:
                    running[row] = False
                    self._finish(request, "length")
                else:
                    feed[row] = [token]
            if not any(running):
                return
            logits = decoder.feed(feed)

    def _start(self, batch: list[_Request]) -> tuple[Decoder, list[list[int]]]:
        """A decoder with the batch's shared prompt prefix encoded once, and what each row still has to feed."""
        prompts = [request.ids for request in batch]
        if len(batch) > 1:
            shared = _common_prefix_length(prompts)  # what every row has; a kept prefix may cover part of it
        else:  # a lone request shares what it has in common with recent prompts
            shared = self.prefix_cache.shared_prefix(prompts[0]) if self.prefix_cache is not None else 0
        shared = min(shared, min(len(ids) for ids in prompts) - 1)  # every row feeds one token at least
        if shared < _MIN_SHARED_PREFIX:
            return Decoder(self.model, self.tokenizer, rows=len(batch)), prompts
        prefix = prompts[0][:shared]
        decoder = Decoder(self.model, self.tokenizer, rows=1)
        kept = self.prefix_cache.lookup(prefix) if self.prefix_cache is not None else None
        if kept is not None:
            decoder.start_from(prefix[: kept[0]], kept[1])
        if len(decoder.history[0]) < len(prefix):
            decoder.feed([prefix[len(decoder.history[0]):]])
            if self.prefix_cache is not None:
                self.prefix_cache.keep(prefix, decoder.cache)
        decoder.expand(len(batch))
        return decoder, [ids[shared:] for ids in prompts]

    def _choose(self, batch: list[_Request], logits, running: list[bool]) -> list[int]:
        """Each running row's next token: the argmax, or a sample with the row's temperature, top-p and seed."""
        import torch
        tokens = logits.argmax(-1).tolist()
        for row, request in enumerate(batch):
            if running[row] and request.temperature:
                probs = torch.softmax(logits[row].float() / request.temperature, dim=-1)
                if request.top_p and request.top_p < 1.0:
                    ordered, order = probs.sort(descending=True)
                    outside = ordered.cumsum(0) - ordered > request.top_p
                    probs = probs.scatter(0, order, ordered.masked_fill(outside, 0.0))
                tokens[row] = int(torch.multinomial(probs, 1, generator=request.generator))
        return tokens

    def _stopped(self, request: _Request) -> bool:
        if not request.stop:
            return False
        text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        cut = cut_at_stop(text, request.stop)
        if cut is None:
            return False
        self._finish(request, "stop", text=cut)
        return True

    def _finish(self, request: _Request, reason: str, *, text: str | None = None) -> None:
        if text is None:
            text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        with contextlib.suppress(InvalidStateError):  # its caller cancelled it meanwhile
            request.future.set_result(Generation(text, len(request.ids), len(request.generated), reason))


def cut_at_stop(text: str, stop) -> str | None:
    """`text` up to its first stop sequence, or None when it holds none."""
    cut = min((text.find(sequence) for sequence in stop if sequence in text), default=-1)
    return text[:cut] if cut >= 0 else None


# Workers are stopped before the interpreter tears down (a daemon thread left inside torch can abort it).
_LIVE: weakref.WeakSet[BatchScheduler] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for scheduler in list(_LIVE):
        scheduler.close()


def _work(scheduler_ref: weakref.ref) -> None:
    """The worker's loop; it holds the scheduler weakly, so a scheduler nobody uses is collected and the loop ends."""
    while True:
        scheduler = scheduler_ref()
        if scheduler is None:
            return
        try:
            if not scheduler._step():
                return
        except BaseException as err:  # noqa: BLE001 - a worker that died would leave every later request waiting
            scheduler._recover(err)
        del scheduler


def _fail(requests: list[_Request], err: BaseException) -> None:
    for request in requests:
        with contextlib.suppress(InvalidStateError):  # resolved or cancelled already
            request.future.set_exception(err)


def _common_prefix_length(sequences: list[list[int]]) -> int:
    first, length = sequences[0], len(sequences[0])
    for other in sequences[1:]:
        length = min(length, len(other))
        for index in range(length):
            if first[index] != other[index]:
                length = index
                break
    return length
