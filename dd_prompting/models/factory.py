"""The one place a model is built: `build_lm(config)` -> a `CachingLM` that every caller uses the same way."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from dd_prompting.config import ConfigError
from dd_prompting.models.cache import CallCache
from dd_prompting.models.config import ModelConfig
from dd_prompting.models.engine import AsyncLMRoute, CachingEngine, LMRoute
from dd_prompting.models.identity import CallIdentity
from dd_prompting.models.lm import CachingLM
from dd_prompting.models.pricing import Pricing, lookup_pricing
from dd_prompting.models.secrets import PLACEHOLDER_KEY, safe_url, url_secrets

__all__ = ["build_lm", "wrap_lm", "engine_from_state", "identity_for", "api_key_for", "secrets_for", "DEFAULT_RETRIES", "DEFAULT_RETRY_BACKOFF",
           "DEFAULT_TIMEOUT"]

DEFAULT_RETRIES = 3
DEFAULT_RETRY_BACKOFF = 1.0
DEFAULT_TIMEOUT = 120.0


def identity_for(config: ModelConfig) -> CallIdentity:
    """What identifies a model's replies in cache keys: kind, model, endpoint and reply-shaping settings."""
    if config.kind == "api":
        settings = {"api_base": safe_url(config.api_base), "temperature": config.temperature,
                    "max_tokens": config.max_tokens}
    elif config.kind == "local":
        settings = {"gguf_file": config.gguf_file, "max_new_tokens": config.max_new_tokens,
                    "temperature": config.temperature}
    else:
        settings = {"run_dir": str(Path(config.run_dir).resolve()), "student": config.student,
                    "weights": _weights_stamp(Path(config.run_dir))}
    return CallIdentity(model=f"{config.kind}:{config.model}", settings=tuple(sorted(settings.items())))


def _weights_stamp(run_dir: Path) -> str:
    """Sizes and modification times of a run's weight files: retraining a student invalidates its cache."""
    files = sorted(run_dir.rglob("*.safetensors")) + sorted(run_dir.rglob("*.bin"))
    return ";".join(f"{path.relative_to(run_dir)}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in files)


def api_key_for(config: ModelConfig, *, required: bool = True) -> str | None:
    """The key in the variable `api_key_env` names (None when no variable is named)."""
    if config.api_key_env is None:
        return None
    key = os.environ.get(config.api_key_env)
    if not key and required:
        raise ConfigError(f"{config.section}: the environment variable {config.api_key_env} named by api_key_env "
                          "is not set; export the API key in it (keys are never read from config files)")
    return key or None


def secrets_for(config: ModelConfig) -> tuple[str, ...]:
    """What must never be written about this model: its key and the credentials inside its api_base."""
    key = api_key_for(config, required=False)
    return tuple(value for value in (key, *url_secrets(config.api_base)) if value)


def build_lm(config: ModelConfig, *, cache: CallCache | None, retries: int | None = None,
             retry_backoff: float | None = None, timeout: float | None = None) -> CachingLM:
    """The model of `config` as a `dspy.LM` on a `CachingEngine`; `retries`, `retry_backoff` and `timeout`
    are the run's defaults, which the config's own values override.

    A key reaches only its provider: with `api_key_env` the key is read from that variable; with a custom
    `api_base` and no `api_key_env`, the server gets a placeholder (vLLM and Ollama accept any key), never
    the provider key litellm would otherwise take from the environment.
    """
    defaults = {"retries": retries, "retry_backoff": retry_backoff, "timeout": timeout}
    retries = _first(config.retries, retries, DEFAULT_RETRIES)
    retry_backoff = _first(config.retry_backoff, retry_backoff, DEFAULT_RETRY_BACKOFF)
    timeout = _first(config.timeout, timeout, DEFAULT_TIMEOUT)
    settings: dict[str, Any] = {}
    if config.kind == "api":
        route = LMRoute(_api_lm(config, timeout))
        async_route = AsyncLMRoute(route)
        settings = {"temperature": config.temperature, "max_tokens": config.max_tokens}
        model = config.model
    elif config.kind == "local":
        from dd_prompting.local_lm import local_lm, smollm2_lm

        if config.model == "smollm2":
            lm = smollm2_lm(max_new_tokens=config.max_new_tokens, cache=False)
        else:
            lm = local_lm(config.model, gguf_file=config.gguf_file, max_new_tokens=config.max_new_tokens, cache=False)
        route, model = lm.engine, lm.model
        async_route = route.async_twin
        settings = {"temperature": config.temperature or None}
    else:
        raise ConfigError(f"{config.section}: kind='student' is a program, not an LM; load it with "
                          "dd_prompting.evals.strategies.load_student_program")
    engine = CachingEngine(route, async_route=async_route, cache=cache, pricing=lookup_pricing(config),
                           identity=identity_for(config), retries=retries, backoff=retry_backoff,
                           secrets=secrets_for(config), source=_source(config, cache, defaults))
    return CachingLM.around(engine, model, **settings)


def wrap_lm(lm, *, cache: CallCache | None, pricing: Pricing, identity: CallIdentity | None = None,
            retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_RETRY_BACKOFF,
            secrets: tuple[str, ...] = ()) -> CachingLM:
    """A `dspy.LM` built elsewhere (a DSPy program's teacher) behind the call cache, as a `CachingLM`.

    Its engine answers through a copy of `lm` with DSPy's cache and retries off. Its identity in cache
    keys is its model string and settings unless `identity` says otherwise. A program holding the
    result cannot be saved (nothing records how `lm` was built): use `build_lm` for that.
    """
    if isinstance(lm, CachingLM):
        return lm
    identity = identity or CallIdentity(
        model=lm.model, settings=tuple(sorted((k, v) for k, v in lm.kwargs.items() if isinstance(k, str)))
    )
    route = LMRoute(lm.copy(cache=False, num_retries=0))
    engine = CachingEngine(route, async_route=AsyncLMRoute(route), cache=cache, pricing=pricing, identity=identity,
                           retries=retries, backoff=backoff, secrets=secrets)
    return CachingLM.around(engine, lm.model, temperature=lm.kwargs.get("temperature"),
                            max_tokens=lm.kwargs.get("max_tokens"))


def _api_lm(config: ModelConfig, timeout: float):
    """The inner `dspy.LM` that holds the connection: DSPy's own client or LiteLLM, no cache, no retries."""
    options: dict[str, Any] = {"cache": False, "num_retries": 0, "timeout": timeout}
    if config.api_base:
        options["api_base"] = config.api_base
    key = api_key_for(config)
    if key:
        options["api_key"] = key
    elif config.api_base:
        options["api_key"] = PLACEHOLDER_KEY
    if config.engine != "auto":
        options["engine"] = config.engine
    elif url_secrets(config.api_base):
        # DSPy's own HTTP engine cannot connect to a user:password@host URL (it resolves "user:password@host"
        # as a host name); litellm's client sends the credentials as HTTP basic auth, as such proxies expect.
        options["engine"] = "litellm"
    import dspy

    return dspy.LM(config.model, **options)


def _source(config: ModelConfig, cache: CallCache | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """What a saved program stores to build the engine again: no key, and an api_base without credentials."""
    fields = {name: value for name, value in dataclasses.asdict(config).items() if value is not None}
    if fields.get("api_base"):
        fields["api_base"] = safe_url(fields["api_base"])
    return {"config": fields, "cache_dir": str(cache.directory) if cache is not None else None,
            **{name: value for name, value in defaults.items() if value is not None}}


def engine_from_state(state: dict[str, Any]) -> CachingEngine:
    """The engine a saved program describes (`CachingEngine.dump_state`), built again by `build_lm`."""
    state = dict(state)
    config = ModelConfig(**state.pop("config"))
    cache_dir = state.pop("cache_dir", None)
    lm = build_lm(config, cache=CallCache(cache_dir) if cache_dir else None, **state)
    return lm.engine


def _first(*values):
    return next(value for value in values if value is not None)
