"""The on-disk cache of model calls: a rerun is free, and a killed run never pays for a finished call twice.

One cache for every caller (`dd-evals` runs, `dd-distill` teachers). A key hashes everything that
changes the reply: the model, the endpoint it is served from (`api_base`, without credentials), the
messages or prompt, and the generation settings, including `rollout_id`, which DSPy uses to ask for
distinct samples. Nothing that only carries the request enters a key: API keys, headers, time-outs,
retry counts.

Values are stored as JSON, never pickled. A cache directory may be shared between runs and users,
and unpickling what a directory holds can run any code planted there; an entry that is not JSON
(written by another program, or by an older version that pickled) is ignored with a warning and
answered afresh, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from dd_prompting.models.secrets import safe_url

__all__ = ["CallCache", "call_key", "CLIENT_ONLY_KEYS"]

logger = logging.getLogger(__name__)

# Settings that change how a request travels, not what the model says.
CLIENT_ONLY_KEYS = frozenset({
    "api_key", "headers", "extra_headers", "timeout", "num_retries", "api_version", "organization",
})
_ENDPOINT_KEYS = ("api_base", "base_url")


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
    """A sha256 key for one call: the model, its endpoint, the input and the settings; never a credential.

    >>> a = call_key(model="openai/m", messages=None, prompt="hi", settings={"api_base": "http://a/v1"})
    >>> b = call_key(model="openai/m", messages=None, prompt="hi", settings={"api_base": "http://b/v1"})
    >>> a == b
    False
    >>> a == call_key(model="openai/m", messages=None, prompt="hi",
    ...               settings={"api_base": "http://user:pw@a/v1", "api_key": "sk-x"})
    True
    """
    kept = {}
    for key, value in settings.items():
        if key in CLIENT_ONLY_KEYS or value is None:
            continue
        kept["api_base" if key in _ENDPOINT_KEYS else key] = safe_url(value) if key in _ENDPOINT_KEYS else value
    payload = {"model": model, "messages": messages, "prompt": prompt, "settings": kept}
    text = json.dumps(_jsonable(payload), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _json_disk():
    import diskcache
    from diskcache.core import MODE_RAW, MODE_TEXT

    class JSONOnlyDisk(diskcache.Disk):
        """Stores values as JSON text and refuses to unpickle anything, keys included."""

        def put(self, key):
            if not isinstance(key, str):
                raise TypeError(f"CallCache keys are strings, got {type(key).__name__}")
            return super().put(key)

        def get(self, key, raw):
            if not raw:
                raise _NotJSON("a pickled key")
            return super().get(key, raw)

        def store(self, value, read, key=diskcache.core.UNKNOWN):
            return super().store(json.dumps(value, ensure_ascii=False), False, key)

        def fetch(self, mode, filename, value, read):
            if mode not in (MODE_RAW, MODE_TEXT):
                raise _NotJSON(f"a value stored in mode {mode} (pickled or binary)")
            text = super().fetch(mode, filename, value, False)
            if not isinstance(text, str):
                raise _NotJSON("a binary value")
            try:
                return json.loads(text)
            except json.JSONDecodeError as err:
                raise _NotJSON(f"text that is not JSON ({err.msg})") from err

    return JSONOnlyDisk


class _NotJSON(OSError):
    # An OSError, so that diskcache treats the entry as missing (as it does a file deleted under it).
    def __init__(self, what: str):
        super().__init__(what)
        logger.warning("Call cache: ignoring an entry that holds %s; it is answered afresh and overwritten. "
                       "Entries are JSON and are never unpickled.", what)


_CREDIT = "credit:"


class CallCache:
    """A thread- and process-safe cache of call records (JSON objects) by `call_key`, in one directory."""

    def __init__(self, directory: str | Path):
        import diskcache

        self.directory = Path(directory).expanduser()
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"cache_dir {self.directory} is a file; the call cache needs a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        # One SQLite file: writes take about a millisecond, far less than a model call. Paid calls must never
        # be evicted: no size limit, no culling.
        self._cache = diskcache.Cache(str(self.directory), timeout=60, eviction_policy="none", disk=_json_disk())

    def get(self, key: str) -> dict[str, Any] | None:
        record = self._cache.get(key)
        return record if isinstance(record, dict) else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        self._cache.set(key, record)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    # A batch's reply is paid once, by the batch; the first task that reads it (and finishes) carries its bill.
    def owe(self, key: str) -> None:
        """Mark the entry `key` as paid for but not yet credited to any task."""
        self._cache.set(_CREDIT + key, {"owed": True})

    def claim(self, key: str) -> bool:
        """Take the credit for `key`'s bill: True for exactly one caller, over threads and processes."""
        return self._cache.pop(_CREDIT + key, default=None) is not None

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()
