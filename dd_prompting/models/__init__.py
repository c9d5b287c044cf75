"""The model layer under `dd-evals` and `dd-distill`: one description, one factory, one call cache.

`ModelConfig` describes a model; `build_lm` builds it as a `CachedLM` (retries per call, calls
cached on disk as JSON, tokens and cost recorded per task with `recording()`); `redact` and
`safe_url` keep keys and URL credentials out of anything written.
"""

from dd_prompting.models.cache import CallCache, call_key
from dd_prompting.models.cached_lm import CachedLM, CallIdentity, CallLog, CallRecord, recording
from dd_prompting.models.config import MODEL_KINDS, ModelConfig
from dd_prompting.models.factory import api_key_for, build_lm, identity_for, secrets_for
from dd_prompting.models.pricing import Pricing, lookup_model_pricing, lookup_pricing
from dd_prompting.models.secrets import PLACEHOLDER_KEY, environment_secrets, redact, safe_url, url_secrets

__all__ = [
    "ModelConfig",
    "MODEL_KINDS",
    "build_lm",
    "identity_for",
    "api_key_for",
    "secrets_for",
    "CachedLM",
    "CallIdentity",
    "CallLog",
    "CallRecord",
    "recording",
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
]
