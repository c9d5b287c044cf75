"""`CachingLM`: the `dspy.LM` that `build_lm` returns, on a `CachingEngine`.

All the work (cache, retries, call log) is in the engine. The LM adds what only a call can know:
- which sample it asks for. DSPy hands an engine neither `rollout_id` nor the index of a repeated
  request (`n=3` sends one request three times), so each call opens a `sample_scope` that the
  engine keys on (`dd_prompting.models.sampling`);
- that DSPy's own response cache stays off. Its key ignores the engine and the endpoint (two
  servers of one model string would share answers), so a call's `cache=True` is dropped here:
  the engine's cache is the one cache.
DSPy's retries are off too (`num_retries=0`): the engine retries, once, with its own back-off.
"""

from __future__ import annotations

from typing import Any

import dspy

from dd_prompting.models.engine import AsyncCachingEngine, CachingEngine
from dd_prompting.models.sampling import sample_scope

__all__ = ["CachingLM"]


class CachingLM(dspy.LM):
    """A `dspy.LM` whose calls go through a `CachingEngine` (and its async twin).

    Build it with `dd_prompting.models.build_lm(ModelConfig(...))`. A program holding it saves
    with `program.save(...)` and loads with `program.load(..., allow_unsafe_lm_state=True)`: the
    saved state names this class and the engine's model config (never a key).
    """

    def __init__(self, model: str, *, engine: Any, async_engine: Any = None, **kwargs: Any):
        kwargs.update(cache=False, num_retries=0)
        super().__init__(model, engine=engine, async_engine=async_engine, **kwargs)

    @classmethod
    def around(cls, engine: CachingEngine, model: str, *, temperature: float | None = None,
               max_tokens: int | None = None) -> CachingLM:
        """The LM on `engine` and its async twin, with the sampling settings that are set."""
        settings = {name: value for name, value in (("temperature", temperature), ("max_tokens", max_tokens))
                    if value is not None}
        return cls(model, engine=engine, async_engine=AsyncCachingEngine(engine), **settings)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Texts never to write (the key, URL credentials): pass error messages through `redact(text, lm.secrets)`."""
        return self.engine.secrets

    @property
    def call_cache(self):
        return self.engine.cache

    @property
    def calls_made(self) -> int:
        """Calls this model's engine sent (cache misses), over all copies of this LM."""
        return self.engine.calls_made

    @property
    def prefers_plain_text(self) -> bool:
        return self.engine.prefers_plain_text

    # Arguments pass through as given (a Request, a prompt, or in DSPy 3.4 an adapter's messages).
    def __call__(self, *args, **kwargs):
        kwargs.pop("cache", None)
        with self._scope(kwargs):
            return super().__call__(*args, **kwargs)

    async def acall(self, *args, **kwargs):
        kwargs.pop("cache", None)
        with self._scope(kwargs):
            return await super().acall(*args, **kwargs)

    def _scope(self, kwargs: dict[str, Any]):
        settings = {**self.kwargs, **kwargs}
        return sample_scope(rollout_id=settings.get("rollout_id"), n=settings.get("n") or 1)

    @classmethod
    def load_state(cls, state: dict[str, Any], *, allow_custom_lm_class: bool = False):
        state = {key: value for key, value in state.items() if key not in ("cache", "num_retries")}
        return super().load_state(state, allow_custom_lm_class=allow_custom_lm_class)
