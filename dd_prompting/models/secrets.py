"""Keeping credentials out of everything written: files, logs, error texts and cache keys.

A key reaches a provider only through the `dspy.LM` built for it (`dd_prompting.models.build_lm`);
anything else that holds text a key or a password could appear in (an error message, a config saved
next to a run, a row of results) goes through `redact` or `safe_url` first.

>>> safe_url("http://user:s3cret@proxy.internal:8000/v1?token=abc")
'http://proxy.internal:8000/v1'
>>> redact("POST http://user:s3cret@proxy/v1 failed: sk-abcdefghijklmnop", ["s3cret"])
'POST http://***@proxy/v1 failed: ***'
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from dd_prompting.config import ConfigError

if TYPE_CHECKING:
    from dd_prompting.models.config import ModelConfig

__all__ = ["redact", "safe_url", "url_secrets", "environment_secrets", "api_key_for", "secrets_for", "PLACEHOLDER_KEY"]

# What a self-hosted OpenAI-compatible server (vLLM, Ollama, a proxy) gets as its key when none is named:
# such servers accept any key, and a placeholder keeps a provider's key in the environment from reaching them.
PLACEHOLDER_KEY = "EMPTY"

_KEY_SHAPES = re.compile(r"(?:sk|pk|rk|gsk|xai|hf)-[A-Za-z0-9_\-]{8,}|(?i:bearer)\s+[A-Za-z0-9_\-.=]{8,}")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@]+@")
_SECRET_ENV_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)


def safe_url(url: str | None) -> str | None:
    """`url` without `user:password@` and without its query string (where some proxies take tokens)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts._replace(query=""))


def url_secrets(url: str | None) -> list[str]:
    """The user name and password inside a URL, for `redact`."""
    if not url:
        return []
    parts = urlsplit(url)
    return [value for value in (parts.password, parts.username) if value]


def environment_secrets(names: Iterable[str] = ()) -> list[str]:
    """The values of the variables `names` and of every key-like environment variable (KEY, TOKEN, ...)."""
    wanted = set(names) | {name for name in os.environ if _SECRET_ENV_NAME.search(name)}
    values = {os.environ[name] for name in wanted if len(os.environ.get(name) or "") >= 8}
    return sorted(values, key=len, reverse=True)  # longest first, so a key's prefix never masks half of it


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret, URL credentials and anything shaped like an API key replaced by '***'."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _URL_CREDENTIALS.sub(lambda match: f"{match.group('scheme')}***@", text)
    return _KEY_SHAPES.sub("***", text)


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
