"""One round of a batched run: the calls a pass over the problems could not answer from the call cache.

While a round is open on a model's `CachingEngine` (`engine.round`), a call the cache cannot answer is not sent:
its body, as the synchronous route would send it (`BodyCapture`), is collected under its cache key, and the call
raises `CallPending`, which stops that problem's program. The problem writes nothing this round; when the batch
has answered, the next pass finds the reply in the cache and the program goes one step further.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from dd_prompting.batches.capture import BodyCapture, CapturedCall

__all__ = ["Round", "CallPending", "BatchLineFailed", "is_pending"]


class CallPending(Exception):
    """A call a batch will answer: the program stops here; its problem waits for the next round."""

    def __init__(self, key: str):
        super().__init__(f"call {key[:12]}... waits for a batch")
        self.key = key


class BatchLineFailed(Exception):
    """A call whose batch line failed or expired more often than the retries allow: the problem fails, as a
    synchronous call that failed after its retries does."""


def is_pending(err: BaseException | None) -> bool:
    """Whether `err`, or what it was raised from, is `CallPending` (DSPy wraps an engine's own exceptions)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, CallPending):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


class Round:
    """The calls collected in one pass, each once (two programs that share a call share its line).

    Args:
        capture: Gives each call's body as the model's synchronous route sends it.
        given_up: Keys whose lines failed too often, with why: their calls raise `BatchLineFailed`.
    """

    def __init__(self, capture: BodyCapture, *, given_up: Mapping[str, str] | None = None):
        self.capture = capture
        self.given_up = dict(given_up or {})
        self.calls: dict[str, CapturedCall] = {}
        self._lock = threading.Lock()

    def collect(self, key: str, request) -> Exception:
        """Collect the call (once per key); returns the exception the engine raises in its place."""
        if key in self.given_up:
            return BatchLineFailed(self.given_up[key])
        with self._lock:
            known = key in self.calls
        if not known:
            captured = self.capture.capture(request)
            with self._lock:
                self.calls.setdefault(key, captured)
        return CallPending(key)

    def __len__(self) -> int:
        return len(self.calls)
