"""Which batch API a model's calls go to, and with which key: checked before any call is made.

OpenAI models ('openai/...') and OpenAI-compatible servers (an api_base: a litellm proxy, Azure's OpenAI
endpoint, vLLM's batch runner) take OpenAI's Batch API; Anthropic models ('anthropic/...') take Message Batches.
"""

from __future__ import annotations

import os

from dd_prompting.batches.anthropic_batches import ANTHROPIC_URL, AnthropicBatches
from dd_prompting.batches.openai_batches import OpenAIBatches
from dd_prompting.config import ConfigError
from dd_prompting.models.config import ModelConfig, api_key_for
from dd_prompting.models.secrets import PLACEHOLDER_KEY

__all__ = ["batch_api_for", "check_batchable", "key_variable", "cancel_pending", "BATCH_APIS"]

OPENAI_URL = "https://api.openai.com/v1"
BATCH_APIS = {"openai": OpenAIBatches, "anthropic": AnthropicBatches}
_PROVIDER_URLS = {"openai": OPENAI_URL, "anthropic": ANTHROPIC_URL}
_PROVIDER_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def check_batchable(config: ModelConfig, *, cache: bool, key: bool = True) -> None:
    """One sentence, before any call, when `config` cannot be called in batches (`key=False`: a dry run, which
    calls nothing, needs no key)."""
    if not config.batch:
        return
    if not cache:
        raise ConfigError(f"{config.section}: batch = true needs the call cache (a round's replies wait there for "
                          "the next round); set a cache_dir instead of 'none'")
    _place(config, need_key=key)


def batch_api_for(config: ModelConfig, *, timeout: float = 120.0) -> OpenAIBatches | AnthropicBatches:
    """The batch API of the server `config` calls synchronously, with the key that server gets."""
    api, url, key = _place(config)
    return BATCH_APIS[api](url, key, timeout=timeout)


def api_name(config: ModelConfig) -> str:
    return "anthropic" if _provider(config) == "anthropic" else "openai"


def key_variable(config: ModelConfig) -> str | None:
    """The name of the variable holding the batch API's key (None: the server takes a placeholder)."""
    if config.api_key_env:
        return config.api_key_env
    provider = _provider(config)
    return None if config.api_base and provider != "anthropic" else _PROVIDER_KEYS.get(provider)


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
        cancelled[batch_id] = BATCH_APIS[entry.get("api") or "openai"](entry["url"], key).cancel(batch_id)
        manifest.finish(batch_id, "cancelled")
    return cancelled


def cancel_batches_in(directory, *, command: str) -> list[str]:
    """What `dd-evals cancel-batches` and `dd-distill cancel-batches` do: cancel the pending batches of the run in
    `directory` (its `batches.json`), under the run's lock so that no run waiting on them is writing it; returns
    the lines to print. Raises `RunLockError` while a run holds the directory, `ConfigError` for a missing key."""
    from pathlib import Path

    from dd_prompting.batches.manifest import MANIFEST_FILE, BatchManifest
    from dd_prompting.run_lock import RunLock

    manifest = BatchManifest(Path(directory) / MANIFEST_FILE)
    with RunLock(directory, command=command):
        cancelled = cancel_pending(manifest)
    lines = [f"{batch_id}: {status}" for batch_id, status in cancelled.items()]
    return lines + [f"{len(cancelled)} pending batch(es) cancelled" if cancelled else f"{manifest.path}: no pending batch"]


def _provider(config: ModelConfig) -> str:
    return config.model.split("/", 1)[0] if "/" in config.model else "openai"


def _place(config: ModelConfig, *, need_key: bool = True) -> tuple[str, str, str]:
    """The batch API's kind, base URL and key."""
    provider = _provider(config)
    if provider == "anthropic":
        api = "anthropic"
    elif provider == "openai" or config.api_base:
        api = "openai"
    else:
        raise ConfigError(f"{config.section}: batch = true is supported for OpenAI ('openai/...') and Anthropic "
                          f"('anthropic/...') models and OpenAI-compatible servers (api_base), not {provider!r}; "
                          "drop batch to call it synchronously")
    url = config.api_base or _PROVIDER_URLS[api]
    variable = key_variable(config)
    key = api_key_for(config) or (os.environ.get(variable) if variable else PLACEHOLDER_KEY)
    if not key and need_key:
        raise ConfigError(f"{config.section}: batch = true calls {api}'s batch API, which needs a key: export "
                          f"{variable} (or name another variable in api_key_env)")
    return api, url, key
