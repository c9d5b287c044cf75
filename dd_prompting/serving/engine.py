"""`ServedEngine`: a DSPy engine (`complete(request) -> Response`) for a local model's weights served elsewhere.

`local_lm(path, server=URL)` gives the `dspy.LM` a user already has for `path`, answering from a vLLM or SGLang
server that serves the same weights: the prompt is rendered here, by the model's own renderer (its chat template,
or plain turns for a base model, as `TransformersEngine` renders it), encoded here, and sent as token ids, so the
server sees the tokens the model sees in process. Greedy replies equal the in-process engine's. Only the tokenizer
and the config are read from `path`; no weights are loaded.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events

from dd_prompting.local.decoding import context_limit
from dd_prompting.local.engine import AsyncTwin
from dd_prompting.local.prompts import (
    chooses_chat_template,
    render_prompt,
    request_turns,
    trained_on_dspy_chat,
)
from dd_prompting.local.scheduler import cut_at_stop
from dd_prompting.serving.client import ServedModel

__all__ = ["ServedEngine", "AsyncServedEngine"]


class ServedEngine:
    """Prompts rendered and encoded for the model in `model_name_or_path`; completions from its server at `url`."""

    def __init__(self, model_name_or_path: str | Path, url: str, *, model: str | None = None,
                 max_new_tokens: int = 256, use_chat_template: bool | None = None, max_in_flight: int = 32,
                 timeout: float = 120.0, retries: int = 3):
        from transformers import AutoConfig, AutoTokenizer

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.source = {"model_name_or_path": str(model_name_or_path), "url": url, "model": model,
                       "max_new_tokens": max_new_tokens, "use_chat_template": use_chat_template,
                       "max_in_flight": max_in_flight, "timeout": timeout, "retries": retries}
        self.name = Path(str(model_name_or_path)).name or str(model_name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        self.limit = context_limit(AutoConfig.from_pretrained(model_name_or_path))
        self.use_chat_template = chooses_chat_template(self.tokenizer, self.name, use_chat_template)
        self.prefers_plain_text = not trained_on_dspy_chat(model_name_or_path)
        self.max_new_tokens = max_new_tokens
        self.client = ServedModel(url, tokenizer=self.tokenizer, model=model, max_in_flight=max_in_flight,
                                  timeout=timeout, retries=retries)
        self.async_twin = AsyncServedEngine(self)

    def render_prompt(self, system: str | None, messages: list[tuple[str, str]]) -> str:
        return render_prompt(self.tokenizer, system, messages, use_chat_template=self.use_chat_template)

    def complete(self, request) -> Response:
        ids = self.tokenizer(self.render_prompt(*request_turns(request)), add_special_tokens=False)["input_ids"]
        if len(ids) >= self.limit:
            raise ValueError(f"{self.name}: the prompt is {len(ids)} tokens; the model's context is {self.limit}")
        config = request.config
        stop = tuple(config.stop or ())
        # As the in-process scheduler caps a request: its budget, and what is left of the context.
        budget = max(1, min(config.max_tokens or self.max_new_tokens, self.max_new_tokens, self.limit - len(ids)))
        reply = self.client.complete(ids, max_tokens=budget, temperature=config.temperature or 0.0,
                                     top_p=config.top_p, seed=config.seed, stop=stop,
                                     stop_token_ids=[self.tokenizer.eos_token_id])
        # The reply's text as the in-process engine writes it: decoded without special tokens, cut at a stop.
        text = self.tokenizer.decode(reply.token_ids, skip_special_tokens=True)
        cut = cut_at_stop(text, stop)
        return Response(
            id=f"served-{time.time_ns()}", model=self.name,
            message=Message.assistant([TextPart(text if cut is None else cut)]),
            finish_reason=reply.finish_reason or "stop",
            usage=Usage(input_tokens=reply.prompt_tokens or len(ids), output_tokens=len(reply.token_ids)),
        )

    def stream(self, request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass

    def dump_state(self) -> dict[str, Any]:
        """Where the tokenizer is and where the model is served, for DSPy to save a program that uses it."""
        return dict(self.source)

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> ServedEngine:
        state = dict(state)
        return cls(state.pop("model_name_or_path"), state.pop("url"), **state)


class AsyncServedEngine(AsyncTwin):
    """The async twin: the same engine, its blocking HTTP call run off the event loop."""

    async def complete(self, request) -> Response:
        return await asyncio.to_thread(self.engine.complete, request)

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncServedEngine:
        return ServedEngine.load_state(state).async_twin
