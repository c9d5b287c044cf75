"""Language models for an eval run: building them from config, pricing them, and caching their calls.

`CachedLM` wraps any `dspy.BaseLM`. Each call is looked up in the run's `CallCache` first; a miss is
sent with retries and exponential back-off on transient errors (rate limits, server errors,
time-outs), then stored. Every call, hit or miss, is reported to the `CallLog` of the example being
evaluated, so a result row carries its own tokens, cost, latency and raw outputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from dd_prompting.evals.cache import CallCache, call_key
from dd_prompting.evals.config import ModelConfig

__all__ = [
    "CallRecord",
    "CallLog",
    "recording",
    "CachedLM",
    "CallIdentity",
    "identity_for",
    "Pricing",
    "lookup_pricing",
    "build_lm",
    "api_key_for",
    "redact",
]

logger = logging.getLogger(__name__)

_CURRENT_LOG: ContextVar[CallLog | None] = ContextVar("evals_call_log", default=None)
_KEY_SHAPES = re.compile(r"(?:sk|pk|rk|gsk|xai|hf)-[A-Za-z0-9_\-]{8,}|(?i:bearer)\s+[A-Za-z0-9_\-.=]{8,}")


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """`text` with every known secret, and anything shaped like an API key, replaced by '***'."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEY_SHAPES.sub("***", text)


@dataclass
class CallRecord:
    """One model call as an example saw it."""

    output: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    latency_s: float
    cached: bool
    attempts: int = 1


@dataclass
class CallLog:
    """The calls (and call errors) made while evaluating one example."""

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
    """What a cache key says about the model: its name and the settings that shape its replies.

    Taken from the config rather than the built LM, so a dry run can find cached calls without
    loading a model or needing its API key.
    """

    model: str
    settings: tuple[tuple[str, Any], ...] = ()

    def key(self, prompt: Any = None, messages: Any = None, kwargs: dict[str, Any] | None = None) -> str:
        return call_key(model=self.model, messages=messages, prompt=prompt,
                        settings={**dict(self.settings), **(kwargs or {})})


def identity_for(config: ModelConfig) -> CallIdentity:
    if config.kind == "api":
        settings = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    elif config.kind == "local":
        settings = {"gguf_file": config.gguf_file, "max_new_tokens": config.max_new_tokens}
    else:
        settings = {"run_dir": str(Path(config.run_dir).resolve()), "student": config.student,
                    "weights": _weights_stamp(Path(config.run_dir))}
    return CallIdentity(model=f"{config.kind}:{config.model}", settings=tuple(sorted(settings.items())))


def _weights_stamp(run_dir: Path) -> str:
    """Sizes and modification times of a run's weight files: retraining a student invalidates its cache."""
    files = sorted(run_dir.rglob("*.safetensors")) + sorted(run_dir.rglob("*.bin"))
    return ";".join(f"{path.relative_to(run_dir)}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in files)


@dataclass(frozen=True)
class Pricing:
    """USD per token, with where the price came from. None means unknown (not free)."""

    input_per_token: float | None
    output_per_token: float | None
    source: str

    @property
    def known(self) -> bool:
        return self.input_per_token is not None and self.output_per_token is not None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if not self.known:
            return None
        return prompt_tokens * self.input_per_token + completion_tokens * self.output_per_token


def lookup_pricing(config: ModelConfig) -> Pricing:
    """The price of a model: the config's own, else litellm's bundled price map; local models are free."""
    if config.input_cost_per_million is not None or config.output_cost_per_million is not None:
        if config.input_cost_per_million is None or config.output_cost_per_million is None:
            raise ValueError(f"models[{config.name}]: set both input_cost_per_million and output_cost_per_million")
        return Pricing(config.input_cost_per_million / 1e6, config.output_cost_per_million / 1e6, "config")
    if config.kind != "api":
        return Pricing(0.0, 0.0, "local (free)")
    # litellm's import fetches its price map from the network unless told to use the bundled copy.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    names = [config.model, config.model.split("/", 1)[-1], config.model.rsplit("/", 1)[-1]]
    for name in dict.fromkeys(names):
        info = litellm.model_cost.get(name)
        if info and info.get("input_cost_per_token") is not None and info.get("output_cost_per_token") is not None:
            return Pricing(float(info["input_cost_per_token"]), float(info["output_cost_per_token"]),
                           f"litellm price map: {name}")
    return Pricing(None, None, "unknown")


def api_key_for(config: ModelConfig, *, required: bool = True) -> str | None:
    if config.api_key_env is None:
        return None
    key = os.environ.get(config.api_key_env)
    if not key and required:
        raise ValueError(
            f"models[{config.name}]: the environment variable {config.api_key_env} named by api_key_env is not set"
        )
    return key or None


def build_lm(config: ModelConfig, *, timeout: float) -> dspy.BaseLM | None:
    """The uncached `dspy.LM` for a model config (None for students, whose pipeline brings its own LMs).

    DSPy's own response cache is off: `CachedLM` caches in the run's directory instead, and retries
    are done there too, so `num_retries=0`.
    """
    if config.kind == "api":
        options: dict[str, Any] = {"cache": False, "num_retries": 0, "timeout": timeout,
                                   "temperature": config.temperature, "max_tokens": config.max_tokens}
        if config.api_base:
            options["api_base"] = config.api_base
        key = api_key_for(config)
        if key:
            options["api_key"] = key
        elif config.api_base:
            # Self-hosted servers (vLLM, Ollama) take any key; a placeholder keeps a provider key from the
            # environment from being sent to them.
            options["api_key"] = "EMPTY"
        if config.engine != "auto":
            options["engine"] = config.engine
        return dspy.LM(config.model, **options)
    if config.kind == "local":
        from dd_prompting import local_lm, smollm2_lm

        if config.model == "smollm2":
            return smollm2_lm(max_new_tokens=config.max_new_tokens, cache=False)
        return local_lm(config.model, gguf_file=config.gguf_file, max_new_tokens=config.max_new_tokens, cache=False)
    return None


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


class CachedLM(dspy.BaseLM):
    """`lm` with an on-disk call cache, retries with back-off, and per-example call accounting.

    Args:
        lm: The LM to call on a cache miss (built with its own cache and retries off).
        cache: Where calls are stored; None disables caching.
        pricing: Turns token counts into USD.
        identity: The model's identity in cache keys; default: the LM's model string and settings.
        retries: Retries after a transient error; the error is raised after the last one.
        backoff: First wait in seconds, doubled each retry (with jitter), unless the server says
            how long to wait (Retry-After), capped at 60 s.
    """

    def __init__(
        self,
        lm: dspy.BaseLM,
        *,
        cache: CallCache | None,
        pricing: Pricing,
        identity: CallIdentity | None = None,
        retries: int = 3,
        backoff: float = 1.0,
    ):
        super().__init__(model=lm.model, model_type=getattr(lm, "model_type", "chat"), cache=False, num_retries=0)
        self.lm = lm
        self.kwargs = lm.kwargs
        self.call_cache = cache
        self.pricing = pricing
        self.retries = retries
        self.backoff = backoff
        self.identity = identity or CallIdentity(
            model=lm.model, settings=tuple(sorted((k, v) for k, v in lm.kwargs.items() if isinstance(k, str)))
        )
        self.calls_made = 0
        self._count_lock = threading.Lock()

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
                    logger.info("%s: %s; retry %d of %d in %.2fs", self.lm.model, type(err).__name__, attempt,
                                self.retries, min(wait, 60.0))
                    time.sleep(min(max(wait, 0.0), 60.0))
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


def _plain(outputs: Any) -> Any:
    """Outputs as plain data, so a cache record never holds a client object."""
    if isinstance(outputs, list):
        return [_plain(item) for item in outputs]
    if isinstance(outputs, dict):
        return {str(key): _plain(value) for key, value in outputs.items()}
    if isinstance(outputs, (str, int, float, bool)) or outputs is None:
        return outputs
    return str(outputs)
