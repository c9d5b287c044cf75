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
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact", "safe_url", "url_secrets", "environment_secrets", "PLACEHOLDER_KEY"]

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
