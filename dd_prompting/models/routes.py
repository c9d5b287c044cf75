"""Routes: what really answers a model's calls, behind the caching engine.

`LMRoute` sends a call to an API model through a `dspy.LM` that holds the connection settings (DSPy's
own client or LiteLLM); a local model's route is its `TransformersEngine`. `open_route(config)` opens
the route a `ModelConfig` describes, with the model name and sampling settings an LM on it sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.lm15 import Response

from dd_prompting.config import ConfigError
from dd_prompting.models.config import ModelConfig, api_key_for
from dd_prompting.models.secrets import PLACEHOLDER_KEY, url_secrets

__all__ = ["LMRoute", "AsyncLMRoute", "OpenedRoute", "open_route"]

@dataclass
class OpenedRoute:
    """A route and its async twin, the model name an LM on it is called by, and the settings it sends."""

    route: Any
    async_route: Any
    model: str
    settings: dict[str, Any] = field(default_factory=dict)


def open_route(config: ModelConfig, *, timeout: float) -> OpenedRoute:
    """The route of an API or local model (a student is a program, not an LM)."""
    if config.kind == "api":
        route = LMRoute(_api_lm(config, timeout))
        return OpenedRoute(route, AsyncLMRoute(route), config.model,
                           {"temperature": config.temperature, "max_tokens": config.max_tokens})
    if config.kind == "local":
        from dd_prompting.local import local_lm, smollm2_lm

        if config.model == "smollm2":
            lm = smollm2_lm(max_new_tokens=config.max_new_tokens, cache=False, **config.serving)
        else:
            lm = local_lm(config.model, gguf_file=config.gguf_file, max_new_tokens=config.max_new_tokens, cache=False,
                          **config.serving)
        return OpenedRoute(lm.engine, lm.engine.async_twin, lm.model, {"temperature": config.temperature or None})
    raise ConfigError(f"{config.section}: kind='student' is a program, not an LM; load it with "
                      "dd_prompting.evals.strategies.load_student_program")


def _api_lm(config: ModelConfig, timeout: float):
    """The inner `dspy.LM` that holds the connection: DSPy's own client or LiteLLM, no cache, no retries."""
    options: dict[str, Any] = {"cache": False, "num_retries": 0, "timeout": timeout}
    if config.api_base:
        options["api_base"] = config.api_base
    key = api_key_for(config)
    if key:
        options["api_key"] = key
    elif config.api_base:
        options["api_key"] = PLACEHOLDER_KEY
    if config.engine != "auto":
        options["engine"] = config.engine
    elif url_secrets(config.api_base):
        # DSPy's own HTTP engine cannot connect to a user:password@host URL (it resolves "user:password@host"
        # as a host name); litellm's client sends the credentials as HTTP basic auth, as such proxies expect.
        options["engine"] = "litellm"
    return dspy.LM(config.model, **options)


# An inner call records nothing of its own: the outer LM keeps the one history entry and usage count. These
# are the settings DSPy's LM reads for that (public `dspy.settings` keys, not a documented switch);
# test_usage_and_history_are_counted_once fails if DSPy stops honouring them.
_QUIET = {"usage_tracker": None, "disable_history": True, "send_stream": None, "callbacks": []}


class LMRoute:
    """The API route: a `dspy.LM` (DSPy's own client or LiteLLM) that holds the connection settings.

    The inner LM is built with its cache off and no retries. Its call runs with DSPy's usage tracker,
    history, callbacks and stream turned off, so the outer LM alone records the call, once.
    """

    def __init__(self, lm: dspy.LM):
        self.lm = lm

    def complete(self, request) -> Response:
        with dspy.context(**_QUIET):
            return self.lm(request)

    def close(self) -> None:
        self.lm.close()

    @property
    def supports_function_calling(self) -> bool:
        return self.lm.supports_function_calling

    @property
    def supports_reasoning(self) -> bool:
        return self.lm.supports_reasoning

    @property
    def supports_response_schema(self) -> bool:
        return self.lm.supports_response_schema

    @property
    def supported_params(self) -> set[str]:
        return self.lm.supported_params


class AsyncLMRoute:
    """The async twin of `LMRoute`, on the same inner LM."""

    def __init__(self, route: LMRoute):
        self.route = route

    async def complete(self, request) -> Response:
        with dspy.context(**_QUIET):
            return await self.route.lm.acall(request)

    async def aclose(self) -> None:
        await self.route.lm.aclose()
