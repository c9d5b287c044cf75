"""One model behind an OpenAI-compatible `/v1/completions` (vLLM, SGLang, `transformers serve`), token ids in and out.

vLLM and SGLang take a prompt as token ids and, with `return_token_ids`, answer with the generated ids: the
caller then decides the next prompt's ids itself, and the server's prefix cache (16-token blocks in vLLM)
matches them exactly. A server that rejects token-id prompts or vLLM's extra fields (HTTP 400/422, as
`transformers serve`, TGI and llama.cpp do) is sent the prompt decoded to text and its reply is encoded again
(`ServedModel.text_only` turns True, said once): answers may then differ at token boundaries and prefix reuse
may break.

The requests go through the `openai` client: retries with backoff on 408/409/429/5xx and dropped connections, a
timeout per request. At most `max_in_flight` requests are open at once per server, whatever the threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ServedModel", "Completion", "ServerError", "MalformedReply", "ServingStats", "describe_serving"]

logger = logging.getLogger(__name__)

# vLLM's fields beyond OpenAI's; a server that refuses them (422) or token-id prompts (400) gets text.
_TOKEN_FIELDS = ("stop_token_ids", "return_token_ids", "skip_special_tokens")


class ServerError(RuntimeError):
    """A served model could not answer: the message names the server."""


class MalformedReply(ServerError):
    """The server answered, but not with a completion this client can read."""


@dataclass
class Completion:
    """One reply. `token_ids` are the generated ids (the stop token included, as vLLM returns them); on the text
    path they are the reply's text encoded as the caller's tokenizer would. `cached_tokens` is None unless the
    server reports its prefix-cache hits (vLLM `--enable-prompt-tokens-details`, SGLang `--enable-cache-report`)."""

    token_ids: list[int]
    text: str
    finish_reason: str | None
    stop_reason: int | str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None
    from_text: bool = False


@dataclass
class ServingStats:
    """Prompt tokens sent to a server, and how many of them its prefix cache served (where it says)."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    reported: int = 0  # requests whose reply said how many were cached
    malformed: int = 0  # replies that were not a completion
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, prompt_tokens: int, cached_tokens: int | None) -> None:
        with self._lock:  # requests come from many threads
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            if cached_tokens is not None:
                self.cached_tokens += cached_tokens
                self.reported += 1

    def add_malformed(self) -> None:
        with self._lock:
            self.malformed += 1

    def to_dict(self) -> dict[str, Any]:
        share = self.cached_tokens / self.prompt_tokens if self.reported and self.prompt_tokens else None
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens if self.reported else None, "cached_share": share,
                "malformed": self.malformed}


def describe_serving(stats: dict[str, Any]) -> str:
    """`ServingStats.to_dict()` in words, for reports: requests, prompt tokens and the prefix cache's share."""
    share = stats.get("cached_share")
    cached = "its prefix cache not reported" if share is None else f"{100 * share:.1f}% of them from its prefix cache"
    return f"{stats['requests']} requests, {stats['prompt_tokens']:,} prompt tokens, {cached}"


class ServedModel:
    """A model on an OpenAI-compatible server, completed from token ids.

    Args:
        url: The server's OpenAI-compatible base, e.g. "http://127.0.0.1:8000/v1".
        tokenizer: The model's tokenizer (for the text path only: decoding prompts, encoding replies).
        model: The served model's name; None asks `GET /models` and takes its one model.
        max_in_flight: Requests open at once to this server.
        timeout: Seconds a request may take (each retry again).
        retries: Retries of a request that failed with 408/409/429/5xx or a dropped connection.
        api_key: The server's key, if it has one (vLLM `--api-key`); sent to this server only, never logged.
    """

    def __init__(self, url: str, *, tokenizer=None, model: str | None = None, max_in_flight: int = 32,
                 timeout: float = 120.0, retries: int = 3, api_key: str | None = None):
        import openai

        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.url = url.rstrip("/")
        self.tokenizer = tokenizer
        self._model = model
        self.max_in_flight = max_in_flight
        self.text_only = False
        self._client = openai.OpenAI(base_url=self.url, api_key=api_key or "EMPTY", timeout=timeout,
                                     max_retries=retries)
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ServedModel({self.url!r}, model={self._model!r})"

    # ---------------------------------------------------------------- the server
    def models(self) -> list[dict[str, Any]]:
        """`GET /models`: what the server serves (vLLM adds `max_model_len` and `root`, the model's path)."""
        import openai

        try:
            page = self._client.models.list()
        except openai.APIConnectionError as err:
            raise ServerError(f"Can't reach the server at {self.url}: {_cause(err)}") from err
        except openai.APIStatusError as err:
            raise ServerError(f"{self.url}/models answered HTTP {err.status_code}: {_message(err)}") from err
        return [entry.model_dump() for entry in page.data]

    @property
    def model(self) -> str:
        """The served model's name: as given, else the server's only model."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    names = [entry["id"] for entry in self.models()]
                    if len(names) != 1:
                        raise ServerError(f"{self.url} serves {len(names)} models ({', '.join(names) or 'none'}); "
                                          "name the one to use ({'url': ..., 'model': ...})")
                    self._model = names[0]
        return self._model

    def max_model_len(self) -> int | None:
        """The context the server allows its model (vLLM and SGLang say it in `/models`), or None."""
        entries = self.models()
        for entry in entries:
            if entry["id"] == self.model:
                value = entry.get("max_model_len")
                return int(value) if value else None
        raise ServerError(f"{self.url} does not serve {self.model!r} (it serves "
                          f"{', '.join(entry['id'] for entry in entries)})")

    # ---------------------------------------------------------------- completing
    def complete(self, prompt_ids: Sequence[int], *, max_tokens: int, temperature: float = 0.0,
                 top_p: float | None = None, seed: int | None = None, stop: Sequence[str] = (),
                 stop_token_ids: Sequence[int] = (), text_stop: Sequence[str] = ()) -> Completion:
        """Complete `prompt_ids`: greedy at temperature 0 (always sent: vLLM and SGLang sample at 1.0 by default).

        `stop` strings and `stop_token_ids` stop the reply; on the text path, where a server can't stop on ids,
        `text_stop` strings are sent beside `stop` in their place.
        """
        settings: dict[str, Any] = {"max_tokens": int(max_tokens), "temperature": float(temperature)}
        if top_p is not None:
            settings["top_p"] = float(top_p)
        if seed is not None:
            settings["seed"] = int(seed)
        with self._slots:
            if not self.text_only:
                try:
                    return self._complete_ids(list(prompt_ids), settings, list(stop), list(stop_token_ids))
                except _TokenPromptsRejected as rejected:
                    self._switch_to_text(rejected.reason)
            return self._complete_text(list(prompt_ids), settings, [*stop, *text_stop])

    def _complete_ids(self, prompt_ids: list[int], settings: dict[str, Any], stop: list[str],
                      stop_token_ids: list[int]) -> Completion:
        extra = {"return_token_ids": True, "skip_special_tokens": False}
        if stop_token_ids:
            extra["stop_token_ids"] = stop_token_ids
        if stop:
            settings = {**settings, "stop": stop}
        reply = self._create(prompt_ids, settings, extra, token_prompt=True)
        choice = reply.choices[0]
        token_ids = _extra(choice, "token_ids")
        if token_ids is None:  # the server took the ids but returns text only: the reply's ids come from the text
            self._say_text_replies_once()
            token_ids = self._encode(choice.text or "")
        return _completion(reply, list(token_ids), from_text=False)

    def _complete_text(self, prompt_ids: list[int], settings: dict[str, Any], stop: list[str]) -> Completion:
        if self.tokenizer is None:
            raise ServerError(f"{self.url} takes text prompts only, and this model has no tokenizer to write them")
        prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        if stop:
            settings = {**settings, "stop": list(stop)}
        reply = self._create(prompt, settings, {}, token_prompt=False)
        return _completion(reply, self._encode(reply.choices[0].text or ""), from_text=True)

    def _create(self, prompt, settings: dict[str, Any], extra: dict[str, Any], *, token_prompt: bool):
        import openai

        try:
            reply = self._client.completions.create(model=self.model, prompt=prompt, extra_body=extra or None,
                                                    **settings)
        except openai.APIConnectionError as err:  # the time-out is one of these
            raise ServerError(f"Can't reach the server at {self.url}: {_cause(err)}") from err
        except openai.APIStatusError as err:
            if token_prompt and err.status_code in (400, 422) and not _is_length_error(err):
                raise _TokenPromptsRejected(f"HTTP {err.status_code}: {_message(err)}") from err
            raise ServerError(f"{self.url}/completions answered HTTP {err.status_code}: {_message(err)}") from err
        except (openai.APIResponseValidationError, ValueError) as err:  # a body that is not a completion
            raise MalformedReply(f"{self.url}/completions sent a reply that is not a completion: {err}") from err
        choices = getattr(reply, "choices", None)
        if not choices or not isinstance(getattr(choices[0], "text", None), (str, type(None))):
            raise MalformedReply(f"{self.url}/completions sent a reply without a completion choice")
        return reply

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _switch_to_text(self, reason: str) -> None:
        with self._lock:
            if not self.text_only:
                self.text_only = True
                logger.warning("%s does not take token-id prompts (%s): sending text instead. Prompts are "
                               "re-tokenized by the server, so answers may differ at token boundaries and its "
                               "prefix cache may miss.", self.url, reason)

    def _say_text_replies_once(self) -> None:
        with self._lock:
            if not getattr(self, "_said_text_replies", False):
                self._said_text_replies = True
                logger.warning("%s returns no token ids (vLLM and SGLang do with return_token_ids): replies are "
                               "encoded from their text, so the next prompt may differ at token boundaries.", self.url)


class _TokenPromptsRejected(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _completion(reply, token_ids: list[int], *, from_text: bool) -> Completion:
    choice = reply.choices[0]
    usage = reply.usage
    details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return Completion(
        token_ids=token_ids,
        text=choice.text or "",
        finish_reason=choice.finish_reason,
        stop_reason=_extra(choice, "stop_reason"),
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        cached_tokens=None if cached is None else int(cached),
        from_text=from_text,
    )


def _extra(obj, name: str) -> Any:
    value = getattr(obj, name, None)
    if value is None and getattr(obj, "model_extra", None):
        value = obj.model_extra.get(name)
    return value


def _message(err) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
        if message:
            return str(message)[:500]
        detail = body.get("detail")
        if detail:
            return str(detail)[:500]
    return str(getattr(err, "message", err))[:500]


def _cause(err) -> str:
    cause = err.__cause__ or err.__context__
    return f"{type(err).__name__}" + (f" ({cause})" if cause else "")


def _is_length_error(err) -> bool:
    # A prompt longer than the server's context is a 400 too; that is not a refusal of token ids.
    text = _message(err).lower()
    return "context length" in text or "max_model_len" in text or "maximum context" in text
