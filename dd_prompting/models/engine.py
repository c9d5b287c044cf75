"""The caching engine: every model call goes through one on-disk cache, one retry loop and one call log.

`CachingEngine` is a DSPy engine (`complete(request) -> Response`, DSPy's custom-engine contract)
that wraps another engine, the *route* that really answers: `LMRoute` (DSPy's own client or
LiteLLM, through a `dspy.LM` that holds the connection settings) for API models, or
`TransformersEngine` for local ones. `AsyncCachingEngine` is its async twin, sharing its state.

For each request:
- the cache is looked up first, by `CallIdentity.request_key`; a hit returns the stored reply with
  zero usage (nothing was spent), and is logged as cached with the tokens and cost it once took;
- a miss is sent to the route, retried here and only here on transient errors (rate limits, server
  errors, time-outs, dropped connections), after the server's `Retry-After` or an exponential
  back-off with jitter; the LM around this engine runs with `num_retries=0`, so a failed call is
  never retried by two loops, and no caller reruns a whole program;
- the reply is stored as JSON (never pickled) and reported to the `CallLog` of the task being
  recorded (`recording()`);
- while a batch round is open (`engine.round`, `dd_prompting.batches`), a miss is not sent: the round
  collects it and the call raises `CallPending`; the batch's replies come back through `store_batch_reply`,
  and the first task that reads one and finishes carries its bill.

What makes a sample distinct reaches the engine through `CachingLM`'s call scope (`sample_scope`),
since DSPy hands an engine neither `rollout_id` nor the index of a repeated request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from dspy.lm15 import Message, Response, TextPart, ThinkingPart, ToolCallPart, Usage, response_to_events
from dspy.utils.exceptions import is_retryable_lm_error

from dd_prompting.models.cache import CallCache
from dd_prompting.models.calls import CallRecord, current_log
from dd_prompting.models.config import ModelConfig, secrets_for
from dd_prompting.models.identity import CallIdentity, identity_for
from dd_prompting.models.pricing import Pricing, batch_pricing, lookup_pricing
from dd_prompting.models.routes import open_route
from dd_prompting.models.sampling import current_call
from dd_prompting.models.secrets import safe_url

__all__ = ["CachingEngine", "AsyncCachingEngine", "MAX_RETRY_WAIT", "DEFAULT_RETRIES", "DEFAULT_RETRY_BACKOFF",
           "DEFAULT_TIMEOUT"]

logger = logging.getLogger(__name__)

MAX_RETRY_WAIT = 60.0
DEFAULT_RETRIES = 3
DEFAULT_RETRY_BACKOFF = 1.0
DEFAULT_TIMEOUT = 120.0
_CAPABILITIES = ("supports_function_calling", "supports_reasoning", "supports_response_schema")


class CachingEngine:
    """A DSPy engine that answers from the call cache, or from `route` with retries, and logs every call.

    Args:
        route: The engine that really answers (`LMRoute`, `TransformersEngine`, ...).
        async_route: Its async twin; None runs `route` in a worker thread.
        cache: Where calls are stored; None disables caching.
        pricing: Turns token counts into USD.
        identity: The model's identity in cache keys.
        retries: Retries after a transient error; the error is raised after the last one.
        backoff: First wait in seconds, doubled each retry (with jitter), unless the server says how
            long to wait (Retry-After); capped at `MAX_RETRY_WAIT`.
        secrets: Texts that must never be written (the key, URL credentials): callers pass error
            messages through `dd_prompting.models.redact(text, engine.secrets)`.
        source: What `dump_state` saves to rebuild this engine (a `ModelConfig` as a dict, the cache
            directory and the run's retry defaults); None: the engine cannot be saved.
        model, settings: The model name an LM on this engine is called by, and the sampling settings it
            sends (what `from_config` read off the route; `build_lm` builds the LM with them).
        batch_pricing: What the model's tokens cost through its batch API, for a model called in batches
            (`ModelConfig.batch`); None: it is called synchronously only.
    """

    def __init__(self, route: Any, *, async_route: Any = None, cache: CallCache | None, pricing: Pricing,
                 identity: CallIdentity, retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_RETRY_BACKOFF,
                 secrets: tuple[str, ...] = (), source: dict[str, Any] | None = None, model: str | None = None,
                 settings: dict[str, Any] | None = None, batch_pricing: Pricing | None = None):
        self.route = route
        self.model = model
        self.settings = dict(settings or {})
        self.async_route = async_route
        self.cache = cache
        self.pricing = pricing
        self.identity = identity
        self.retries = retries
        self.backoff = backoff
        self.secrets = tuple(secrets)
        self.source = source
        self.batch_pricing = batch_pricing
        self.round = None  # a batch round collecting this engine's misses (dd_prompting.batches.Round)
        self.calls_made = 0
        self._count_lock = threading.Lock()
        self._said_synchronous = False

    @classmethod
    def from_config(cls, config: ModelConfig, *, cache: CallCache | None, retries: int | None = None,
                    retry_backoff: float | None = None, timeout: float | None = None) -> CachingEngine:
        """The engine of a `ModelConfig`: its route opened, its cache, prices, identity and retries; `retries`,
        `retry_backoff` and `timeout` are a run's defaults, which the config's own values override."""
        defaults = {"retries": retries, "retry_backoff": retry_backoff, "timeout": timeout}
        opened = open_route(config, timeout=_first(config.timeout, timeout, DEFAULT_TIMEOUT))
        return cls(opened.route, async_route=opened.async_route, cache=cache, pricing=lookup_pricing(config),
                   identity=identity_for(config), retries=_first(config.retries, retries, DEFAULT_RETRIES),
                   backoff=_first(config.retry_backoff, retry_backoff, DEFAULT_RETRY_BACKOFF),
                   secrets=secrets_for(config), source=_source(config, cache, defaults), model=opened.model,
                   settings=opened.settings, batch_pricing=batch_pricing(config) if config.batch else None)

    # --- what adapters read to plan a call -------------------------------------------------------------
    @property
    def supports_function_calling(self) -> bool:
        return bool(getattr(self.route, "supports_function_calling", False))

    @property
    def supports_reasoning(self) -> bool:
        return bool(getattr(self.route, "supports_reasoning", False))

    @property
    def supports_response_schema(self) -> bool:
        return bool(getattr(self.route, "supports_response_schema", False))

    @property
    def supported_params(self) -> set[str]:
        return set(getattr(self.route, "supported_params", ()) or ())

    @property
    def prefers_plain_text(self) -> bool:
        return bool(getattr(self.route, "prefers_plain_text", False))

    # --- the engine contract ---------------------------------------------------------------------------
    def complete(self, request) -> Response:
        keys = self._keys(request)
        if (hit := self._lookup(keys)) is not None:
            return hit
        self._unless_in_round(keys, request)
        response, latency, attempts = self._send(lambda: self.route.complete(request))
        return self._store(keys, response, latency, attempts)

    def stream(self, request) -> Iterator:
        # A reply streams as one piece: a cached reply has no timing to replay, and one path for both
        # keeps `streamify` and stream listeners seeing the same events.
        return response_to_events(self.complete(request))

    def close(self) -> None:
        close = getattr(self.route, "close", None)
        if callable(close):
            close()

    # --- saving ----------------------------------------------------------------------------------------
    def dump_state(self) -> dict[str, Any]:
        """How to build this engine again: its model config (no key: only the variable's name), cache, retries."""
        if self.source is None:
            raise TypeError("This engine was built around an LM object, so a saved program could not build it again: "
                            "build the model with dd_prompting.models.build_lm(ModelConfig(...)).")
        return dict(self.source)

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> CachingEngine:
        return _shared_engine(state)

    # --- batches ---------------------------------------------------------------------------------------
    def store_batch_reply(self, key: str, response: Response, *, batch_id: str) -> float | None:
        """Store a batch line's reply (read as the synchronous route reads one) under its call key, at batch
        prices, owed to the first task that reads it; returns what it cost. A key answered meanwhile keeps its
        entry (and nothing is owed)."""
        prompt_tokens = int(getattr(response.usage, "input_tokens", 0) or 0)
        completion_tokens = int(getattr(response.usage, "output_tokens", 0) or 0)
        cost = (self.batch_pricing or self.pricing).cost(prompt_tokens, completion_tokens)
        if key in self.cache:
            return cost
        self.cache.put(key, {
            "outputs": [_output_of(response)], "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "cost": cost, "latency_s": 0.0, "model": response.model or self.identity.model,
            "finish_reason": response.finish_reason, "batch": batch_id,
        })
        self.cache.owe(key)
        return cost

    def _unless_in_round(self, keys: _Keys | None, request) -> None:
        """In a batch round, collect the call and raise instead of sending it."""
        batch_round = self.round
        if batch_round is None:
            if self.batch_pricing is not None and not self._said_synchronous:
                self._said_synchronous = True
                logger.warning("%s is set to batch = true, but this call is outside a batch round (dd-evals run, "
                               "dd-distill traces): it is sent synchronously, at the synchronous price",
                               self.model or self.identity.model)
            return
        if keys is None:
            raise RuntimeError(f"{self.identity.model}: a batch round needs the call cache, and this engine has none")
        err = batch_round.collect(keys.key, request)
        from dd_prompting.batches.round import CallPending

        if isinstance(err, CallPending):
            self._release_credits()  # the task writes nothing this round: its bills go to whoever finishes
        else:
            _log_error(err, 1)
        raise err

    def _release_credits(self) -> None:
        """Give back the batch bills the current task took: it stops this round and writes nothing."""
        log = current_log()
        for record in log.calls if log is not None else ():
            if record.credit is not None:
                self.cache.owe(record.credit)
                record.credit = None

    # --- the steps -------------------------------------------------------------------------------------
    def _keys(self, request) -> _Keys | None:
        if self.cache is None:
            return None
        call = current_call()
        rollout_id = call.rollout_id if call else None
        key = self.identity.request_key(request, rollout_id=rollout_id)
        sample = call.next_sample(key) if call else 0
        if sample:
            key = self.identity.request_key(request, rollout_id=rollout_id, sample=sample)
        # dd-prompting 0.1.0 stored the n samples of one call as one entry.
        legacy = (self.identity.request_key(request, rollout_id=rollout_id, n=call.n)
                  if call is not None and call.n > 1 else None)
        return _Keys(key, legacy, sample)

    def _lookup(self, keys: _Keys | None) -> Response | None:
        if keys is None:
            return None
        record, output = self.cache.get(keys.key), None
        if record is not None:
            output = _first_output(record)
        elif keys.legacy is not None:
            # dd-prompting 0.1.0 stored a call's n samples in one entry: sample i is its i-th output.
            record = self.cache.get(keys.legacy)
            outputs = (record or {}).get("outputs") or []
            if keys.sample >= len(outputs):
                return None
            output = outputs[keys.sample]
        if record is None:
            return None
        # An entry that paid for several samples charges each its share.
        share = max(1, len(record.get("outputs") or []))
        cost = record.get("cost")
        # A batch's reply was paid by no task yet: the first to read it carries the bill, as if it had sent it.
        credit = keys.key if record.get("batch") and self.cache.claim(keys.key) else None
        _log(CallRecord(output=_output_text(output), prompt_tokens=int(record.get("prompt_tokens") or 0) // share,
                        completion_tokens=int(record.get("completion_tokens") or 0) // share,
                        cost=cost / share if isinstance(cost, (int, float)) else cost, latency_s=0.0,
                        cached=credit is None, credit=credit))
        return _response_from_output(output, model=record.get("model") or self.identity.model,
                                     finish_reason=record.get("finish_reason", "stop"))

    def _send(self, send: Callable[[], Response]) -> tuple[Response, float, int]:
        attempt = 0
        while True:
            attempt += 1
            start = time.perf_counter()
            try:
                response = send()
            except Exception as err:
                wait = self._wait_before_retry(err, attempt)
                if wait is None:
                    _log_error(err, attempt)
                    raise
                time.sleep(wait)
                continue
            return response, time.perf_counter() - start, attempt

    async def _asend(self, send) -> tuple[Response, float, int]:
        attempt = 0
        while True:
            attempt += 1
            start = time.perf_counter()
            try:
                response = await send()
            except Exception as err:
                wait = self._wait_before_retry(err, attempt)
                if wait is None:
                    _log_error(err, attempt)
                    raise
                await asyncio.sleep(wait)
                continue
            return response, time.perf_counter() - start, attempt

    def _wait_before_retry(self, err: Exception, attempt: int) -> float | None:
        """Seconds to wait before retrying after `err`, or None when it is final."""
        if attempt > self.retries or not is_retryable_lm_error(err):
            return None
        wait = _retry_after(err)
        if wait is None:
            wait = self.backoff * 2 ** (attempt - 1) * (0.5 + random.random())
        wait = min(max(wait, 0.0), MAX_RETRY_WAIT)
        logger.info("%s: %s; retry %d of %d in %.2fs", self.identity.model, type(err).__name__, attempt,
                    self.retries, wait)
        return wait

    def _store(self, keys: _Keys | None, response: Response, latency: float, attempts: int) -> Response:
        with self._count_lock:
            self.calls_made += 1
        usage = response.usage
        prompt_tokens = int(getattr(usage, "input_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "output_tokens", 0) or 0)
        cost = self.pricing.cost(prompt_tokens, completion_tokens)
        output = _output_of(response)
        if keys is not None:
            self.cache.put(keys.key, {
                "outputs": [output], "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "cost": cost, "latency_s": latency, "model": response.model or self.identity.model,
                "finish_reason": response.finish_reason,
            })
        _log(CallRecord(output=_output_text(output), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        cost=cost, latency_s=latency, cached=False, attempts=attempts))
        return response


class AsyncCachingEngine:
    """The async twin of a `CachingEngine`: the same cache, retries and log, awaited without blocking the loop."""

    def __init__(self, engine: CachingEngine):
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        if name in (*_CAPABILITIES, "supported_params", "prefers_plain_text", "secrets", "cache", "identity",
                    "calls_made"):
            return getattr(self.engine, name)
        raise AttributeError(name)

    async def complete(self, request) -> Response:
        engine = self.engine
        # The cache is SQLite on disk: a few milliseconds, but never on the event loop.
        keys = engine._keys(request)
        hit = await asyncio.to_thread(engine._lookup, keys) if keys is not None else None
        if hit is not None:
            return hit
        if engine.round is not None:
            # The loopback capture blocks; the call log is this task's, which a worker thread sees as a copy.
            await asyncio.to_thread(engine._unless_in_round, keys, request)
        else:
            engine._unless_in_round(keys, request)
        if engine.async_route is not None:
            response, latency, attempts = await engine._asend(lambda: engine.async_route.complete(request))
        else:
            response, latency, attempts = await engine._asend(
                lambda: asyncio.to_thread(engine.route.complete, request))
        return await asyncio.to_thread(engine._store, keys, response, latency, attempts)

    async def stream(self, request) -> AsyncIterator:
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        aclose = getattr(self.engine.async_route, "aclose", None)
        if callable(aclose):
            await aclose()

    def dump_state(self) -> dict[str, Any]:
        return self.engine.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncCachingEngine:
        return cls(_shared_engine(state))


class _Keys:
    __slots__ = ("key", "legacy", "sample")

    def __init__(self, key: str, legacy: str | None, sample: int):
        self.key, self.legacy, self.sample = key, legacy, sample


# A saved program stores the engine and its async twin apart; loading both must not load the model twice.
_LOADED: weakref.WeakValueDictionary[str, CachingEngine] = weakref.WeakValueDictionary()
_LOADED_LOCK = threading.Lock()


def _shared_engine(state: dict[str, Any]) -> CachingEngine:
    key = json.dumps(state, sort_keys=True, default=str)
    with _LOADED_LOCK:
        engine = _LOADED.get(key)
        if engine is None:
            engine = _engine_from_state(state)
            _LOADED[key] = engine
        return engine


def _engine_from_state(state: dict[str, Any]) -> CachingEngine:
    """The engine a saved program describes (`CachingEngine.dump_state`), built again from its config."""
    state = dict(state)
    config = ModelConfig(**state.pop("config"))
    cache_dir = state.pop("cache_dir", None)
    return CachingEngine.from_config(config, cache=CallCache(cache_dir) if cache_dir else None, **state)


def _source(config: ModelConfig, cache: CallCache | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """What a saved program stores to build the engine again: no key, and an api_base without credentials."""
    fields = {name: value for name, value in dataclasses.asdict(config).items() if value is not None}
    if fields.get("api_base"):
        fields["api_base"] = safe_url(fields["api_base"])
    return {"config": fields, "cache_dir": str(cache.directory) if cache is not None else None,
            **{name: value for name, value in defaults.items() if value is not None}}


def _first(*values):
    return next(value for value in values if value is not None)


def _log(record: CallRecord) -> None:
    log = current_log()
    if log is not None:
        log.add(record)


def _log_error(err: Exception, attempts: int) -> None:
    log = current_log()
    if log is not None:
        log.add_error(f"{type(err).__name__}: {err}", attempts)


def _retry_after(err: Exception) -> float | None:
    value = getattr(err, "retry_after", None)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _first_output(record: dict[str, Any] | None) -> Any:
    outputs = (record or {}).get("outputs") or []
    return outputs[0] if outputs else ""


def _output_text(output: Any) -> str:
    if isinstance(output, dict):
        return str(output.get("text") or "")
    return "" if output is None else str(output)


def _output_of(response: Response) -> Any:
    """A reply as the cache stores it: its text, or DSPy's output dictionary when it holds more (tool calls, thinking)."""
    # `response.text` is None beside tool calls; the text parts are what the model wrote.
    output: dict[str, Any] = {"text": "".join(part.text for part in response.message.parts
                                              if isinstance(part, TextPart))}
    thinking = [part.text for part in response.message.parts if isinstance(part, ThinkingPart)]
    if thinking:
        output["reasoning_content"] = "".join(thinking)
    if response.tool_calls:
        output["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.input, ensure_ascii=False)}}
            for call in response.tool_calls
        ]
    return output if len(output) > 1 else output["text"]


def _response_from_output(output: Any, *, model: str, finish_reason: str) -> Response:
    """A cached reply as a `Response`, with zero usage: nothing was spent."""
    parts: list[Any] = []
    if isinstance(output, dict):
        if output.get("reasoning_content"):
            parts.append(ThinkingPart(output["reasoning_content"]))
        parts.append(TextPart(_output_text(output)))
        for call in output.get("tool_calls") or ():
            function = call.get("function") or {}
            arguments = function.get("arguments") or "{}"
            parts.append(ToolCallPart(id=call.get("id") or "", name=function.get("name") or "",
                                      input=json.loads(arguments) if isinstance(arguments, str) else arguments))
    else:
        parts.append(TextPart(_output_text(output)))
    if finish_reason not in ("stop", "length", "tool_call", "content_filter", "error"):
        finish_reason = "tool_call" if any(isinstance(part, ToolCallPart) for part in parts) else "stop"
    return Response(id="cached", model=model, message=Message.assistant(parts), finish_reason=finish_reason,
                    usage=Usage(input_tokens=0, output_tokens=0))
