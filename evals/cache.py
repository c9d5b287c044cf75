"""An on-disk cache of model calls, so a rerun is free and a killed run never pays twice.

Keys hash what determines the reply (model string, messages, generation settings) and nothing that
only reaches the server: API keys, base URLs, headers, time-outs and retry counts are left out.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["CallCache", "call_key", "CLIENT_ONLY_KEYS"]

# Settings that change how a request travels, not what the model says.
CLIENT_ONLY_KEYS = frozenset({
    "api_key", "api_base", "base_url", "headers", "extra_headers", "timeout", "num_retries", "api_version",
    "organization", "rollout_id",
})


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, type) and hasattr(value, "model_json_schema"):
        return {"pydantic_schema": value.model_json_schema()}
    return repr(value)


def call_key(*, model: str, messages: Any, prompt: Any, settings: dict[str, Any]) -> str:
    """A sha256 key for one call. Client-only settings (API keys among them) never enter it."""
    payload = {
        "model": model,
        "messages": messages,
        "prompt": prompt,
        "settings": {key: value for key, value in settings.items() if key not in CLIENT_ONLY_KEYS
                     and value is not None},
    }
    text = json.dumps(_jsonable(payload), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CallCache:
    """A thread-safe diskcache of call records ({"outputs", "usage", "cost", "latency_s"}) by `call_key`."""

    def __init__(self, directory: str | Path):
        import diskcache

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # One SQLite file: writes take about a millisecond, far less than a model call, so the writer lock
        # is not a bottleneck, and it opens in a fraction of the time a sharded FanoutCache takes.
        # Paid calls must never be evicted: no size limit, no culling (which also saves a query per write).
        self._cache = diskcache.Cache(str(self.directory), timeout=60, eviction_policy="none")

    def get(self, key: str) -> dict[str, Any] | None:
        return self._cache.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        self._cache.set(key, record)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()
