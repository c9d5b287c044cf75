"""`TransformersEngine`: a DSPy engine (`complete(request) -> Response`) on a transformers causal LM in process.

Calls from threads and from the async twin (`acall`, which never blocks the event loop) are decoded
together by the engine's `BatchScheduler`. Chat models get their chat template, base models plain
turns (`dd_prompting.local.prompts`). Generation is greedy unless a temperature is set, stops at the
request's stop sequences (cut from the text) or EOS, and is capped by `max_new_tokens`, since DSPy's
adapters send no cap of their own. torch and transformers are imported only when a model is loaded.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events

from dd_prompting.local.prefix_cache import PrefixCache
from dd_prompting.local.prompts import (
    chooses_chat_template,
    render_prompt,
    request_turns,
    trained_on_dspy_chat,
)
from dd_prompting.local.scheduler import BatchScheduler
from dd_prompting.model_loading import MODEL_LOCK

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TransformersEngine", "AsyncTransformersEngine", "AsyncTwin", "default_device"]


class TransformersEngine:
    """A DSPy engine that generates with an in-process transformers model.

    Calls from any number of threads (`dspy.Evaluate(num_threads=8)`) or asyncio tasks (the async
    twin) are decoded together by one `BatchScheduler` (`dd_prompting.local.scheduler`): up to
    `max_batch_size` rows and `max_batch_tokens` tokens at once (what bounds memory), the prompt
    prefix they share encoded once, each request stopped and sampled on its own. Greedy text is the
    text each request gives alone. `prefers_plain_text` tells `DecomposedSolver` to prompt the model in plain
    text, as small models cannot follow DSPy's chat format; a model fine-tuned on DSPy's chat format
    (by `dd_prompting.distill.training.provider`) does, and is loaded with it off.

    "Engine" is DSPy's word: an object that answers `complete(request)` with a `Response`. This one
    computes the answer; `dd_prompting.models.CachingEngine` wraps one like it with a cache and retries.

    An engine loaded by `from_pretrained` remembers where from, so a program that uses it can be
    saved and loaded (`dump_state` / `load_state`, DSPy's engine interface).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str = "local",
        max_new_tokens: int = 256,
        use_chat_template: bool | None = None,
        prefix_cache_size: int = 8,
        prefers_plain_text: bool = True,
        source: dict[str, Any] | None = None,
        max_batch_size: int = 16,
        max_batch_tokens: int = 16384,
    ):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.prefers_plain_text = prefers_plain_text
        self.source = source
        self.use_chat_template = chooses_chat_template(tokenizer, name, use_chat_template)
        self.prefixes = PrefixCache(size=prefix_cache_size)
        self.scheduler = BatchScheduler(self.model, tokenizer, max_batch_size=max_batch_size,
                                        max_batch_tokens=max_batch_tokens, prefix_cache=self.prefixes,
                                        lock=MODEL_LOCK)
        self.async_twin = AsyncTransformersEngine(self)

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | Path,
        *,
        gguf_file: str | None = None,
        max_new_tokens: int = 256,
        use_chat_template: bool | None = None,
        trust_remote_code: bool = False,
        torch_dtype: str = "float32",
        device: str | None = None,
        max_batch_size: int = 16,
        max_batch_tokens: int = 16384,
    ) -> TransformersEngine:
        """Load a model (a hub id, a directory, or a directory's GGUF file) on `device` (default: a GPU if
        there is one, else the CPU); `max_batch_size` and `max_batch_tokens` bound its scheduler's batches."""
        from dd_prompting.model_loading import load_pretrained

        # A missing model fails here in one sentence; a GGUF file is dequantised once and cached.
        with MODEL_LOCK:
            model, tokenizer = load_pretrained(model_name_or_path, gguf_file=gguf_file, torch_dtype=torch_dtype,
                                               trust_remote_code=trust_remote_code)
            model = model.to(default_device() if device is None else device)
        name = Path(str(model_name_or_path)).name or str(model_name_or_path)
        source = {"model_name_or_path": str(model_name_or_path), "gguf_file": gguf_file,
                  "max_new_tokens": max_new_tokens, "use_chat_template": use_chat_template, "torch_dtype": torch_dtype,
                  "device": device, "max_batch_size": max_batch_size, "max_batch_tokens": max_batch_tokens}
        return cls(model, tokenizer, name=name, max_new_tokens=max_new_tokens, use_chat_template=use_chat_template,
                   prefers_plain_text=not trained_on_dspy_chat(model_name_or_path), source=source,
                   max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens)

    def serving_settings(self) -> dict[str, Any]:
        """How this engine generates and batches, and where: what a copy on other weights keeps."""
        return {"max_new_tokens": self.max_new_tokens, "device": str(self.model.device),
                "max_batch_size": self.scheduler.max_batch_size, "max_batch_tokens": self.scheduler.max_batch_tokens}

    def dump_state(self) -> dict[str, Any]:
        """Where the model was loaded from, for DSPy to save a program that uses this engine."""
        if self.source is None:
            raise TypeError(
                f"The engine of {self.name!r} was built from a model object, so a saved program could not load it "
                "again: save the model with save_pretrained and use local_lm(<its directory>)."
            )
        return dict(self.source)  # remote code is never re-enabled by a saved file

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> TransformersEngine:
        # A saved program stores the engine and its async twin apart: both load one model.
        key = json.dumps(state, sort_keys=True)
        with MODEL_LOCK:
            engine = _LOADED.get(key)
            if engine is None:
                state = dict(state)
                engine = cls.from_pretrained(state.pop("model_name_or_path"), **state)
                _LOADED[key] = engine
        return engine

    def render_prompt(self, system: str | None, messages: list[tuple[str, str]]) -> str:
        """The text the model continues: its chat template, or plain turns for a base model."""
        return render_prompt(self.tokenizer, system, messages, use_chat_template=self.use_chat_template)

    def generate(self, prompt: str, *, max_new_tokens: int, stop: tuple[str, ...] = (),
                 temperature: float | None = None, top_p: float | None = None,
                 seed: int | None = None) -> tuple[str, int, int, str]:
        """Generate a continuation of `prompt`: (text, prompt tokens, new tokens, finish reason)."""
        future = self.submit(prompt, max_new_tokens=max_new_tokens, stop=stop, temperature=temperature, top_p=top_p,
                             seed=seed)
        result = future.result()
        return result.text, result.prompt_tokens, result.new_tokens, result.finish_reason

    def submit(self, prompt: str, *, max_new_tokens: int, stop: tuple[str, ...] = (), temperature: float | None = None,
               top_p: float | None = None, seed: int | None = None) -> Future:
        """Queue `prompt` for the scheduler; the future resolves to a `Generation`. A prompt too long fails here."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        try:
            return self.scheduler.submit(ids, max_new_tokens=max_new_tokens, stop=tuple(stop),
                                         temperature=temperature, top_p=top_p, seed=seed)
        except ValueError as err:  # a prompt that cannot run: say which model
            raise ValueError(f"{self.name}: {err}") from err

    def complete(self, request) -> Response:
        return self._response(self._submit_request(request).result())

    def _submit_request(self, request) -> Future:
        system, messages = request_turns(request)
        config = request.config
        return self.submit(
            self.render_prompt(system, messages),
            max_new_tokens=min(config.max_tokens or self.max_new_tokens, self.max_new_tokens),
            stop=tuple(config.stop or ()),
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed,
        )

    def _response(self, result) -> Response:
        return Response(
            id=f"local-{time.time_ns()}",
            model=self.name,
            message=Message.assistant([TextPart(result.text)]),
            finish_reason=result.finish_reason,
            usage=Usage(input_tokens=result.prompt_tokens, output_tokens=result.new_tokens),
        )

    def stream(self, request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Stop the scheduler's worker thread (it also ends with the process, or when the engine is collected)."""
        self.scheduler.close()


class AsyncTwin:
    """An engine's async face (`engine.async_twin`), DSPy's `async_engine`: the same engine and state; a subclass
    says how `complete` awaits it."""

    def __init__(self, engine):
        self.engine = engine

    @property
    def prefers_plain_text(self) -> bool:
        return self.engine.prefers_plain_text

    async def complete(self, request) -> Response:
        raise NotImplementedError

    async def stream(self, request):
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        pass

    def dump_state(self) -> dict[str, Any]:
        return self.engine.dump_state()


class AsyncTransformersEngine(AsyncTwin):
    """The async twin of a `TransformersEngine` (`engine.async_twin`): the same model and scheduler.

    A call queues its request and awaits the scheduler's future, so the event loop stays free and an
    `asyncio.gather` of many calls is decoded together, with no thread pool capping the batch.
    """

    async def complete(self, request) -> Response:
        return self.engine._response(await asyncio.wrap_future(self.engine._submit_request(request)))

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncTransformersEngine:
        return TransformersEngine.load_state(state).async_twin


_LOADED: weakref.WeakValueDictionary[str, TransformersEngine] = weakref.WeakValueDictionary()


def default_device() -> str:
    """"cuda" when a GPU is there, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


