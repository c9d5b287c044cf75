"""A DSPy fine-tuning provider for local transformers models: `dspy.BootstrapFinetune` on this machine.

    student = local_lm("gpt2", provider=TransformersProvider())   # or student.provider = TransformersProvider()
    program.set_lm(student)
    compiled = dspy.BootstrapFinetune(metric=numeric_match).compile(program, trainset=..., teacher=teacher)

DSPy hands the provider each predictor's calls in its chat format (`{"messages": [...]}`). Each call
becomes one prompt/completion row: the prompt is the messages up to the last assistant turn,
rendered exactly as `TransformersEngine` renders them at inference (`dd_prompting.local.prompts.
render_prompt`), the completion is that turn, with the loss on it alone. Training is
`distill.training.trainer.train_student`: the transformers Trainer, packing, checkpoints, resume. It lives in
`distill` because it trains through distill's training stack; the core's `local_lm` takes it as
`provider=` (the core imports nothing from `distill`). The model is
saved with `save_pretrained` in `<output_dir>/<name>-<hash>` (or `train_kwargs["output_dir"]`), the
hash being of the rows and the settings, so compiling again on the same data reuses it and a killed
job resumes from its last checkpoint. DSPy then loads it as `local/<directory>`. Nothing is served:
the model runs in process, so `launch` and `kill` have nothing to do.

`train_kwargs` are `TrainConfig` fields (`max_steps`, `learning_rate`, `batch_size`, `model="tiny"`
for a GPT-2 built from a config, ...), checked by the config engine; TRL's names for the common
ones (`num_train_epochs`, `per_device_train_batch_size`, `max_seq_length`) are read too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from dspy import Provider, TrainingJob
from dspy.clients.utils_finetune import TrainDataFormat

__all__ = ["TransformersProvider", "LocalTrainingJob", "chat_rows"]

logger = logging.getLogger(__name__)

# TRL's / DSPy LocalProvider's names for TrainConfig fields, so their train_kwargs work here as well.
_ALIASES = {"num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size", "max_seq_length": "max_length"}


class LocalTrainingJob(TrainingJob):
    """A fine-tuning job running in a thread of this process."""

    def status(self) -> str:
        if not self.done():
            return "running"
        return "failed" if isinstance(self.result(), Exception) else "succeeded"


class TransformersProvider(Provider):
    """Fine-tunes in-process transformers models (`dd_prompting.local_lm(...)`) with the transformers Trainer.

    Args:
        output_dir: Where fine-tuned models are saved, one directory per job.
        **train_defaults: `TrainConfig` fields for every job, under the job's own `train_kwargs`.
    """

    def __init__(self, output_dir: str | Path = "dspy_finetuned", **train_defaults: Any):
        super().__init__()
        self.finetunable = True
        self.TrainingJob = LocalTrainingJob
        self.output_dir = Path(output_dir)
        self.train_defaults = train_defaults

    @staticmethod
    def is_provider_model(model: str) -> bool:
        return model.startswith("local/")

    def launch(self, lm, launch_kwargs=None) -> None:
        pass  # the model runs in this process; there is no server to start

    def kill(self, lm, launch_kwargs=None) -> None:
        pass

    def finetune(self, job, model: str, train_data: list[dict[str, Any]], train_data_format: Any,
                 train_kwargs: dict[str, Any] | None = None) -> str:
        """Train on `train_data` and return the fine-tuned model's name, `local/<directory>`."""
        from dd_prompting.model_loading import MODEL_LOCK

        # DSPy starts one thread per job (multitask=False: one per predictor), and loads each result in
        # it; they run one after the other, as loading models is not thread-safe (see MODEL_LOCK) and
        # the jobs share one CPU or GPU anyway.
        with MODEL_LOCK:
            return self._finetune(model, train_data, train_data_format, train_kwargs or {})

    def _finetune(self, model: str, train_data: list[dict[str, Any]], train_data_format: Any,
                  train_kwargs: dict[str, Any]) -> str:
        from dd_prompting.distill.training.trainer import train_student

        from dd_prompting.model_loading import load_pretrained_tokenizer

        if train_data_format not in (TrainDataFormat.CHAT, "chat"):
            raise ValueError(f"TransformersProvider trains on DSPy's chat-format data, not {train_data_format!r}.")
        if not train_data:
            logger.warning("No calls to fine-tune %s on (no trace passed the metric for this predictor); "
                           "keeping it as it is.", model)
            return model
        config, output_dir = self._job_settings(model, train_kwargs)
        tokenizer = None if config.is_tiny else load_pretrained_tokenizer(
            config.model, gguf_file=config.gguf_file, tokenizer_name_or_path=config.tokenizer)
        rows = chat_rows(train_data, tokenizer)
        output_dir = output_dir or self.output_dir / f"{Path(config.model).name}-{_digest(rows, config)}"
        from dd_prompting.local.prompts import DSPY_CHAT_FORMAT

        logger.info("Fine-tuning %s on %d calls into %s", config.model, len(rows), output_dir)
        train_student(rows=rows, config=config, output_dir=output_dir, role="predictor",
                      metadata={"prompt_format": DSPY_CHAT_FORMAT})
        return f"local/{Path(output_dir).resolve()}"

    def _job_settings(self, model: str, train_kwargs: dict[str, Any]):
        from dd_prompting.distill.training.train_config import TrainConfig

        from dd_prompting.config import from_dict

        weights = model.removeprefix("local/")
        settings = {"model": weights, "max_length": 1024, **self.train_defaults}
        if weights.endswith(".gguf"):  # a GGUF file (SmolLM2's): the model is its directory, dequantised to train
            settings.update(model=str(Path(weights).parent), gguf_file=Path(weights).name)
        for name, value in train_kwargs.items():
            settings[_ALIASES.get(name, name)] = value
        output_dir = settings.pop("output_dir", None)
        return from_dict(TrainConfig, settings, "train_kwargs"), (Path(output_dir) if output_dir else None)


def chat_rows(train_data: list[dict[str, Any]], tokenizer=None) -> list[dict[str, str]]:
    """Prompt/completion rows from DSPy's chat-format calls: the last assistant turn is the completion.

    `tokenizer` decides the rendering (its chat template, or plain turns; None: plain turns, as for
    the `tiny` preset, whose tokenizer is trained on these rows).
    """
    from dd_prompting.local.prompts import render_prompt

    class _Plain:
        chat_template = None

    rows = []
    for index, item in enumerate(train_data):
        messages = [_role_and_text(m) for m in item.get("messages") or ()] if isinstance(item, dict) else None
        if not messages or messages[-1][0] != "assistant":
            raise ValueError(f"train_data[{index}]: expected {{'messages': [...]}} ending in an assistant turn")
        system = messages[0][1] if messages[0][0] == "system" else None
        turns = messages[1 if system is not None else 0 : -1]
        prompt = render_prompt(tokenizer if tokenizer is not None else _Plain(), system, turns)
        rows.append({"prompt": prompt, "completion": messages[-1][1]})
    return rows


def _role_and_text(message: Any) -> tuple[str, str]:
    """A chat message's role and text: an OpenAI-style dict (DSPy 3.4's data) or a `dspy.lm15.Message`."""
    if isinstance(message, dict):
        content = message.get("content")
        text = content if isinstance(content, str) else "".join(
            part.get("text", "") for part in content or () if isinstance(part, dict))
        return str(message.get("role")), text
    return str(message.role), message.text or ""


def _digest(rows: list[dict[str, str]], config) -> str:
    payload = json.dumps({"rows": rows, "config": config.to_dict()}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]
