"""`CallIdentity`: what a cache key says about a model, and the key of one request to it.

A key hashes the model's identity (name, endpoint, reply-shaping settings from its `ModelConfig`),
the request's messages as chat dictionaries, and the request's generation settings. It is the key
dd-prompting 0.1.0 wrote for the same call, so a cache directory written by that release keeps
answering: the messages are the `{"role", "content"}` dictionaries its adapters sent, and the
settings are the model's merged with the call's (`temperature`, `stop`, `rollout_id`, ...).

What DSPy does not hand an engine, the caller adds: `rollout_id` (which distinct sample a copied
LM asks for) and `sample`, the index of a repeated request within one call (`n=3` asks the engine
three times with the same request).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dd_prompting.models.cache import call_key
from dd_prompting.models.config import ModelConfig
from dd_prompting.models.secrets import safe_url

__all__ = ["CallIdentity", "chat_messages", "request_settings", "identity_for"]


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(getattr(part, "text", None) or "" for part in content)


def chat_messages(request) -> list[dict[str, str]]:
    """The request's system prompt and messages as OpenAI-style `{"role", "content"}` dictionaries."""
    messages = [{"role": "system", "content": _text(request.system)}] if request.system else []
    messages += [{"role": message.role, "content": message.text or ""} for message in request.messages]
    return messages


def request_settings(request) -> dict[str, Any]:
    """The generation settings a request carries (those that are set), by their OpenAI names."""
    config = request.config
    settings = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)
                if field.name != "extensions"}
    settings = {name: value for name, value in settings.items() if value not in (None, ())}
    settings.update(dict(config.extensions or {}))
    if request.tools:
        settings["tools"] = [repr(tool) for tool in request.tools]
    return settings


@dataclass(frozen=True)
class CallIdentity:
    """What a cache key says about the model: its name, endpoint and the settings that shape its replies.

    Built from the `ModelConfig` (`dd_prompting.models.identity_for`) rather than the built LM, so a
    dry run can find cached calls without loading a model or needing its API key.
    """

    model: str
    settings: tuple[tuple[str, Any], ...] = ()

    def key(self, prompt: Any = None, messages: Any = None, kwargs: dict[str, Any] | None = None) -> str:
        return call_key(model=self.model, messages=messages, prompt=prompt,
                        settings={**dict(self.settings), **(kwargs or {})})

    def request_key(self, request, *, rollout_id: Any = None, sample: int = 0, n: int | None = None) -> str:
        """The key of one request; `sample` > 0 for the later samples of one call, `n` as a call passed it."""
        settings = request_settings(request)
        if rollout_id is not None:
            settings["rollout_id"] = rollout_id
        if n is not None and n > 1:
            settings["n"] = n
        if sample:
            settings["sample"] = sample
        return self.key(None, chat_messages(request), settings)

    def with_settings(self, **settings: Any) -> CallIdentity:
        return CallIdentity(self.model, tuple(sorted({**dict(self.settings), **settings}.items())))


def identity_for(config: ModelConfig) -> CallIdentity:
    """What identifies a model's replies in cache keys: kind, model, endpoint and reply-shaping settings."""
    if config.kind == "api":
        settings = {"api_base": safe_url(config.api_base), "temperature": config.temperature,
                    "max_tokens": config.max_tokens}
    elif config.kind == "local":
        settings = {"gguf_file": config.gguf_file, "max_new_tokens": config.max_new_tokens,
                    "temperature": config.temperature}
    else:
        settings = {"run_dir": str(Path(config.run_dir).resolve()), "student": config.student,
                    "weights": _weights_stamp(Path(config.run_dir))}
        if config.servers is not None:  # served answers are never taken for in-process ones, or the other way
            from dd_prompting.models.config import public_servers

            settings["servers"] = json.dumps(public_servers(config.servers), sort_keys=True)
    return CallIdentity(model=f"{config.kind}:{config.model}", settings=tuple(sorted(settings.items())))


def _weights_stamp(run_dir: Path) -> str:
    """Sizes and modification times of a run's weight files: retraining a student invalidates its cache."""
    files = sorted(run_dir.rglob("*.safetensors")) + sorted(run_dir.rglob("*.bin"))
    return ";".join(f"{path.relative_to(run_dir)}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in files)
