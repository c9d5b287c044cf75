"""Deprecated: `CachedLM` became `CachingLM` on a `CachingEngine` (dd_prompting.models.lm, .engine).

`CachedLM(lm, cache=..., pricing=...)` still works for this release, with a DeprecationWarning, and
returns a `CachingLM` whose engine answers through `lm`. Build models with `build_lm(ModelConfig(...))`.
"""

from __future__ import annotations

import warnings

import dspy

from dd_prompting.models.cache import CallCache
from dd_prompting.models.calls import CallLog, CallRecord, recording
from dd_prompting.models.factory import wrap_lm
from dd_prompting.models.identity import CallIdentity
from dd_prompting.models.lm import CachingLM
from dd_prompting.models.pricing import Pricing

__all__ = ["CallRecord", "CallLog", "recording", "CallIdentity", "CachedLM"]


def CachedLM(lm: dspy.LM, *, cache: CallCache | None, pricing: Pricing, identity: CallIdentity | None = None,
             retries: int = 3, backoff: float = 1.0, secrets: tuple[str, ...] = ()) -> CachingLM:  # noqa: N802
    """Deprecated: `lm` behind the call cache, as a `CachingLM`; use `build_lm(ModelConfig(...))`."""
    warnings.warn("dd_prompting.models.CachedLM is deprecated and will be removed in the next release: build the "
                  "model with dd_prompting.models.build_lm(ModelConfig(...)), which returns a CachingLM on a "
                  "CachingEngine (or wrap an engine in dd_prompting.models.CachingEngine yourself).",
                  DeprecationWarning, stacklevel=2)
    return wrap_lm(lm, cache=cache, pricing=pricing, identity=identity, retries=retries, backoff=backoff,
                   secrets=secrets)
