"""The one place a model is built: `build_lm(config)` -> a `CachingLM` that every caller uses the same way."""

from __future__ import annotations

from dd_prompting.models.cache import CallCache
from dd_prompting.models.config import ModelConfig
from dd_prompting.models.engine import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_TIMEOUT,
    CachingEngine,
)
from dd_prompting.models.identity import CallIdentity
from dd_prompting.models.lm import CachingLM
from dd_prompting.models.pricing import Pricing
from dd_prompting.models.routes import AsyncLMRoute, LMRoute

__all__ = ["build_lm", "wrap_lm", "DEFAULT_RETRIES", "DEFAULT_RETRY_BACKOFF", "DEFAULT_TIMEOUT"]


def build_lm(config: ModelConfig, *, cache: CallCache | None, retries: int | None = None,
             retry_backoff: float | None = None, timeout: float | None = None) -> CachingLM:
    """The model of `config` as a `dspy.LM` on a `CachingEngine`; `retries`, `retry_backoff` and `timeout`
    are the run's defaults, which the config's own values override.

    A key reaches only its provider: with `api_key_env` the key is read from that variable; with a custom
    `api_base` and no `api_key_env`, the server gets a placeholder (vLLM and Ollama accept any key), never
    the provider key litellm would otherwise take from the environment.
    """
    engine = CachingEngine.from_config(config, cache=cache, retries=retries, retry_backoff=retry_backoff,
                                       timeout=timeout)
    return CachingLM.around(engine, engine.model, **engine.settings)


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
