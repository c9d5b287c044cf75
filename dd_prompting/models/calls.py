"""Per-task call accounting: `recording()` collects every model call a task (an example, a teacher problem) makes.

The caching engine (`dd_prompting.models.engine`) reports each call, answered from the cache or
not, to the `CallLog` of the task being recorded in this thread or asyncio task, so a result row or
a teacher trace carries its own tokens, cost, latency and raw outputs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = ["CallRecord", "CallLog", "recording", "current_log"]

_CURRENT_LOG: ContextVar[CallLog | None] = ContextVar("dd_prompting_call_log", default=None)


@dataclass
class CallRecord:
    """One model call as a task saw it."""

    output: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    latency_s: float
    cached: bool
    attempts: int = 1
    credit: str | None = None  # the cache key of a batch reply whose bill this task carries (cached=False)


@dataclass
class CallLog:
    """The calls (and call errors) made while one task (an example, a teacher problem) ran."""

    calls: list[CallRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, record: CallRecord) -> None:
        with self._lock:
            self.calls.append(record)
            self.retries += record.attempts - 1

    def add_error(self, message: str, attempts: int) -> None:
        with self._lock:
            self.errors.append(message)
            self.retries += attempts - 1

    @property
    def prompt_tokens(self) -> int:
        return sum(call.prompt_tokens for call in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(call.completion_tokens for call in self.calls)

    @property
    def cost(self) -> float | None:
        """What the calls cost (cached ones included, at the price they were paid); None if a price is unknown."""
        costs = [call.cost for call in self.calls]
        return None if any(cost is None for cost in costs) else float(sum(costs))

    @property
    def new_cost(self) -> float:
        """What this task spent: calls not answered from the cache."""
        return float(sum(call.cost or 0.0 for call in self.calls if not call.cached))


@contextlib.contextmanager
def recording() -> Iterator[CallLog]:
    """Collect the calls made by the models `build_lm` builds, in this thread (or task), into a fresh `CallLog`."""
    log = CallLog()
    token = _CURRENT_LOG.set(log)
    try:
        yield log
    finally:
        _CURRENT_LOG.reset(token)


def current_log() -> CallLog | None:
    """The `CallLog` of the task being recorded here, if any."""
    return _CURRENT_LOG.get()
