"""One LM call's sample identity, which DSPy does not hand an engine.

DSPy strips `rollout_id` from the request an engine gets, and asks for `n` samples by sending the
same request `n` times. A cache keyed on the request alone would answer every sample with the
first one: `n=3`, `dspy.BestOfN`, `dspy.Refine`, a teacher's samples and BootstrapFewShot's rounds
would all see one answer. `CachingLM` opens a `CallScope` around each call; the caching engine
reads from it which rollout the call asks for and numbers the repeats of one request within it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

__all__ = ["CallScope", "sample_scope", "current_call"]

_CURRENT_CALL: ContextVar[CallScope | None] = ContextVar("dd_prompting_lm_call", default=None)


class CallScope:
    """The sample identity of one LM call: its `rollout_id`, its `n`, and how often each request was sent."""

    def __init__(self, *, rollout_id: Any = None, n: int = 1):
        self.rollout_id = rollout_id
        self.n = n if isinstance(n, int) and n > 0 else 1
        self._sent: Counter[str] = Counter()
        self._lock = threading.Lock()

    def next_sample(self, request_key: str) -> int:
        """0 for the first time this call sends a request, 1 for the second, ..."""
        with self._lock:
            sample = self._sent[request_key]
            self._sent[request_key] += 1
            return sample


@contextlib.contextmanager
def sample_scope(*, rollout_id: Any = None, n: int = 1) -> Iterator[CallScope]:
    """Open the scope of one LM call, in this thread or asyncio task; inside an open scope, join it.

    A caller that sends one call's samples itself (PlainTextAdapter with `n`) opens the scope around
    them, and the LM's own scope for each request joins it, so the samples are numbered 0, 1, ...
    """
    open_scope = _CURRENT_CALL.get()
    if open_scope is not None:
        yield open_scope
        return
    scope = CallScope(rollout_id=rollout_id, n=n)
    token = _CURRENT_CALL.set(scope)
    try:
        yield scope
    finally:
        _CURRENT_CALL.reset(token)


def current_call() -> CallScope | None:
    return _CURRENT_CALL.get()
