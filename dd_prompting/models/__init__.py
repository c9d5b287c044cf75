"""The model layer under `dd-evals` and `dd-distill`: one description, one factory, one caching engine.

`ModelConfig` describes a model; `build_lm` builds it as a `CachingLM`, a `dspy.LM` on a
`CachingEngine` (calls cached on disk as JSON, retried per call, tokens and cost recorded per task
with `recording()`); `redact` and `safe_url` keep keys and URL credentials out of anything written.
"""


from dd_prompting.models.cache import CallCache, call_key
from dd_prompting.models.calls import CallLog, CallRecord, recording
from dd_prompting.models.config import MODEL_KINDS, ModelConfig, api_key_for, secrets_for
from dd_prompting.models.engine import AsyncCachingEngine, CachingEngine
from dd_prompting.models.factory import build_lm, wrap_lm
from dd_prompting.models.identity import CallIdentity, chat_messages, identity_for
from dd_prompting.models.lm import CachingLM
from dd_prompting.models.pricing import Pricing, lookup_model_pricing, lookup_pricing
from dd_prompting.models.routes import AsyncLMRoute, LMRoute
from dd_prompting.models.sampling import sample_scope
from dd_prompting.models.secrets import PLACEHOLDER_KEY, environment_secrets, redact, safe_url, url_secrets

__all__ = [
    "ModelConfig",
    "MODEL_KINDS",
    "build_lm",
    "wrap_lm",
    "identity_for",
    "api_key_for",
    "secrets_for",
    "CachingLM",
    "CachingEngine",
    "AsyncCachingEngine",
    "LMRoute",
    "AsyncLMRoute",
    "CallIdentity",
    "chat_messages",
    "CallLog",
    "CallRecord",
    "recording",
    "sample_scope",
    "CallCache",
    "call_key",
    "Pricing",
    "lookup_pricing",
    "lookup_model_pricing",
    "redact",
    "safe_url",
    "url_secrets",
    "environment_secrets",
    "PLACEHOLDER_KEY",
    "CachedLM",
]


def __getattr__(name: str):
    # Deprecated names resolve here, so importing the package never warns.
    if name == "CachedLM":
        from dd_prompting.models.cached_lm import CachedLM

        return CachedLM
    raise AttributeError(f"module 'dd_prompting.models' has no attribute {name!r}")
