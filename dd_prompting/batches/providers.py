"""Which batch API a model's calls go to, and with which key: checked before any call is made."""

from __future__ import annotations

import os

from dd_prompting.batches.openai_batches import OpenAIBatches
from dd_prompting.config import ConfigError
from dd_prompting.models.config import ModelConfig, api_key_for
from dd_prompting.models.secrets import PLACEHOLDER_KEY

__all__ = ["batch_api_for", "check_batchable", "key_variable", "cancel_pending"]

OPENAI_URL = "https://api.openai.com/v1"


def check_batchable(config: ModelConfig, *, cache: bool) -> None:
    """One sentence, before any call, when `config` cannot be called in batches."""
    if not config.batch:
        return
    if not cache:
        raise ConfigError(f"{config.section}: batch = true needs the call cache (a round's replies wait there for "
                          "the next round); set a cache_dir instead of 'none'")
    _place(config)


def batch_api_for(config: ModelConfig, *, timeout: float = 120.0) -> OpenAIBatches:
    """The batch API of the server `config` calls synchronously, with the key that server gets."""
    url, key = _place(config)
    return OpenAIBatches(url, key, timeout=timeout)


def key_variable(config: ModelConfig) -> str | None:
    """The name of the variable holding the batch API's key (None: the server takes a placeholder)."""
    if config.api_key_env:
        return config.api_key_env
    return None if config.api_base else "OPENAI_API_KEY"


def cancel_pending(manifest) -> dict[str, str]:
    """Cancel every batch a run's manifest lists as pending, at the server that holds it; returns each one's
    status after the cancel. Answers already in the call cache stay there."""
    cancelled = {}
    for batch_id, entry in manifest.pending().items():
        variable = entry.get("key_env")
        key = os.environ.get(variable) if variable else PLACEHOLDER_KEY
        if not key:
            raise ConfigError(f"{manifest.path}: batch {batch_id} at {entry['url']} needs the key in {variable} "
                              "to be cancelled; export it and run again")
        cancelled[batch_id] = OpenAIBatches(entry["url"], key).cancel(batch_id)
        manifest.finish(batch_id, "cancelled")
    return cancelled


def _place(config: ModelConfig) -> tuple[str, str]:
    """The server's base URL and key: the model's api_base (an OpenAI-compatible server: a litellm proxy, vLLM's
    batch runner, Azure's OpenAI endpoint) or OpenAI's own for an 'openai/' model."""
    if config.api_base:
        return config.api_base, api_key_for(config) or PLACEHOLDER_KEY
    provider = config.model.split("/", 1)[0] if "/" in config.model else "openai"
    if provider != "openai":
        raise ConfigError(f"{config.section}: batch = true is supported for OpenAI models ('openai/...') and "
                          f"OpenAI-compatible servers (api_base) so far, not {provider!r}; drop batch to call "
                          "it synchronously")
    key = api_key_for(config) or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ConfigError(f"{config.section}: batch = true calls OpenAI's Batch API, which needs a key: export "
                          "OPENAI_API_KEY (or name another variable in api_key_env)")
    return OPENAI_URL, key
