"""`CachedLM`: any `dspy.BaseLM` behind the call cache, with retries per call and per-task call accounting.

Each call is looked up in the `CallCache` first; a miss is sent, retried with exponential back-off on
transient errors (rate limits, server errors, time-outs, dropped connections) or after the server's
`Retry-After`, then stored. Retries happen here and only here: the wrapped `dspy.LM` is built with
`num_retries=0`, and no caller reruns a whole program, so a failed step never pays for the steps
before it again. Every call, hit or miss, is reported to the `CallLog` of the task being recorded
(`recording()`), so a result row or a teacher trace carries its own tokens, cost, latency and
raw outputs.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import dspy

from dd_prompting.models.cache import CallCache, call_key
from dd_prompting.models.pricing import Pricing

__all__ = ["CallRecord", "CallLog", "recording", "CallIdentity", "CachedLM"]

logger = logging.getLogger(__name__)

_CURRENT_LOG: ContextVar[CallLog | None] = ContextVar("dd_prompting_call_log", default=None)
_MAX_WAIT = 60.0


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
    """Collect the calls made by `CachedLM`s in this thread (or task) into a fresh `CallLog`."""
    log = CallLog()
    token = _CURRENT_LOG.set(log)
    try:
        yield log
    finally:
        _CURRENT_LOG.reset(token)


@dataclass(frozen=True)
class CallIdentity:
    """What a cache key says about the model: its name, endpoint and the settings that shape its replies.

    Built from the `ModelConfig` (`dd_prompting.models.identity_for`) rather than the built LM, so a
    dry run can find cached calls without loading a model or needing its API key.
    """

    model: str
    settings: tuple[tuple[str, Any], ...] = ()

    def key(self, prompt: Any = None, messages: Any = None, kwargs: dict[str, Any] | None = None) -> str:
        return call_key(model=self.model, messages=messages, prompt=prompt,
                        settings={**dict(self.settings), **(kwargs or {})})

    def with_settings(self, **settings: Any) -> CallIdentity:
        return CallIdentity(self.model, tuple(sorted({**dict(self.settings), **settings}.items())))


@contextlib.contextmanager
def _adapter_origin(lm: dspy.BaseLM, messages: Any):
    # DSPy 3.4 warns about message dictionaries unless they come straight from an adapter; ours do,
    # one wrapper removed. The marker is private, so its absence just means the warning shows.
    try:
        from dspy.clients._deprecation import adapter_message_call
    except ImportError:
        yield
        return
    if messages is None:
        yield
        return
    with adapter_message_call(lm, messages):
        yield


def _retry_after(err: Exception) -> float | None:
    value = getattr(err, "retry_after", None)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _is_retryable(err: Exception) -> bool:
    from dspy.utils.exceptions import is_retryable_lm_error

    return is_retryable_lm_error(err)


def _output_text(output: Any) -> str:
    if isinstance(output, dict):
        return str(output.get("text") or "")
    return "" if output is None else str(output)


def _plain(outputs: Any) -> Any:
    """Outputs as plain JSON data, so a cache record never holds a client object."""
    if isinstance(outputs, list):
        return [_plain(item) for item in outputs]
    if isinstance(outputs, dict):
        return {str(key): _plain(value) for key, value in outputs.items()}
    if isinstance(outputs, (str, int, float, bool)) or outputs is None:
        return outputs
    return str(outputs)


class CachedLM(dspy.BaseLM):
    """`lm` with an on-disk call cache, retries with back-off, and per-task call accounting.

    Args:
        lm: The LM to call on a cache miss (built with its own cache and retries off).
        cache: Where calls are stored; None disables caching.
        pricing: Turns token counts into USD.
        identity: The model's identity in cache keys; default: the LM's model string and settings.
        retries: Retries after a transient error; the error is raised after the last one.
        backoff: First wait in seconds, doubled each retry (with jitter), unless the server says
            how long to wait (Retry-After), capped at 60 s.
        secrets: Texts that must never be written (the key, URL credentials): callers pass error
            messages through `dd_prompting.models.redact(text, lm.secrets)`.
    """

    def __init__(self, lm: dspy.BaseLM, *, cache: CallCache | None, pricing: Pricing,
                 identity: CallIdentity | None = None, retries: int = 3, backoff: float = 1.0,
                 secrets: tuple[str, ...] = ()):
        super().__init__(model=lm.model, model_type=getattr(lm, "model_type", "chat"), cache=False, num_retries=0)
        self.lm = lm
        self.kwargs = lm.kwargs
        self.call_cache = cache
        self.pricing = pricing
        self.retries = retries
        self.backoff = backoff
        self.secrets = tuple(secrets)
        self.identity = identity or CallIdentity(
            model=lm.model, settings=tuple(sorted((k, v) for k, v in lm.kwargs.items() if isinstance(k, str)))
        )
        self.calls_made = 0
        self._count_lock = threading.Lock()

    def copy(self, **settings: Any) -> CachedLM:
        """The same model with other request settings (`temperature`, `rollout_id`), sharing the cache."""
        return CachedLM(self.lm.copy(**settings), cache=self.call_cache, pricing=self.pricing,
                        identity=self.identity.with_settings(**settings), retries=self.retries,
                        backoff=self.backoff, secrets=self.secrets)

    # Adapters read these to pick a prompt format; they describe the wrapped model.
    @property
    def prefers_plain_text(self) -> bool:
        from dd_prompting.plain_text_adapter import prefers_plain_text

        return prefers_plain_text(self.lm)

    @property
    def supports_function_calling(self) -> bool:
        return self.lm.supports_function_calling

    @property
    def supports_reasoning(self) -> bool:
        return self.lm.supports_reasoning

    @property
    def supports_response_schema(self) -> bool:
        return self.lm.supports_response_schema

    @property
    def supported_params(self) -> set[str]:
        return self.lm.supported_params

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> list[Any]:
        log = _CURRENT_LOG.get()
        key = self.identity.key(prompt, messages, kwargs) if self.call_cache is not None else None
        if key is not None:
            record = self.call_cache.get(key)
            if record is not None:
                if log is not None:
                    log.add(CallRecord(
                        output=_output_text(record["outputs"][0]) if record["outputs"] else "",
                        prompt_tokens=record["prompt_tokens"], completion_tokens=record["completion_tokens"],
                        cost=record["cost"], latency_s=0.0, cached=True,
                    ))
                return _plain(record["outputs"])  # a fresh copy: callers may mutate what they get
        outputs, usage, latency, attempts = self._call_with_retries(prompt, messages, kwargs, log)
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        cost = self.pricing.cost(prompt_tokens, completion_tokens)
        record = {"outputs": _plain(outputs), "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "cost": cost, "latency_s": latency, "model": self.lm.model}
        if key is not None:
            self.call_cache.put(key, record)
        if log is not None:
            log.add(CallRecord(output=_output_text(outputs[0]) if outputs else "", prompt_tokens=prompt_tokens,
                               completion_tokens=completion_tokens, cost=cost, latency_s=latency, cached=False,
                               attempts=attempts))
        return outputs

    async def acall(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> list[Any]:
        # The cache and the retries are synchronous; run them off the event loop.
        import asyncio

        return await asyncio.to_thread(self.__call__, prompt, messages=messages, **kwargs)

    def _call_with_retries(self, prompt, messages, kwargs, log):
        from dspy.utils.usage_tracker import UsageTracker

        attempt = 0
        while True:
            attempt += 1
            tracker = UsageTracker()
            start = time.perf_counter()
            try:
                with dspy.context(usage_tracker=tracker), _adapter_origin(self.lm, messages):
                    outputs = self.lm(prompt, messages=messages, **kwargs)
            except Exception as err:
                if attempt <= self.retries and _is_retryable(err):
                    wait = _retry_after(err)
                    if wait is None:
                        wait = self.backoff * 2 ** (attempt - 1) * (0.5 + random.random())
                    wait = min(max(wait, 0.0), _MAX_WAIT)
                    logger.info("%s: %s; retry %d of %d in %.2fs", self.lm.model, type(err).__name__, attempt,
                                self.retries, wait)
                    time.sleep(wait)
                    continue
                if log is not None:
                    log.add_error(f"{type(err).__name__}: {err}", attempt)
                raise
            latency = time.perf_counter() - start
            with self._count_lock:
                self.calls_made += 1
            usage: dict[str, Any] = {}
            for entry in tracker.usage_data.values():
                for item in entry:
                    for name in ("prompt_tokens", "completion_tokens"):
                        usage[name] = usage.get(name, 0) + int(item.get(name) or 0)
            return outputs, usage, latency, attempt

    def forward(self, prompt=None, messages=None, **kwargs):
        raise NotImplementedError("CachedLM is called directly; it has no forward()")
