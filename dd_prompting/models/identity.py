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
from dataclasses import dataclass
from typing import Any

from dd_prompting.models.cache import call_key

__all__ = ["CallIdentity", "chat_messages", "request_settings"]


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
