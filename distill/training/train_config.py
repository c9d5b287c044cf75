"""`TrainConfig`: how one student is trained (model, tokenizer, optimisation, packing, checkpoints).

The defaults are the offline `tiny` preset, tuned on this project's 2-core CPU: a 2-layer x 128
GPT-2 (0.56M parameters) built from a config, with a BPE tokenizer trained on the rows that keeps
every whole number as one token (their embeddings start as Fourier features of the value), learning
rate 3e-3 with a cosine schedule, 16 packed rows per step. On generated problems the number of
optimizer steps decides accuracy, so the preset is small and the batches short: with a time budget
(`max_train_seconds`) the schedule anneals within the budget. For a pretrained model (`model="gpt2"`, a local
directory, a GGUF file) the learning rate defaults to 5e-5 instead; see the `help` of each field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["TINY", "TrainConfig"]

_NUMBER_INITS = ("fourier", "random")
_POSITION_INITS = ("sinusoidal", "random")
_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new", "gelu", "relu")
_TIMED_SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup")

TINY = "tiny"
"""The `model` value that builds a small GPT-2 from a config instead of loading a checkpoint."""


@dataclass
class TrainConfig:
    """Configuration of one student's training run (fields map one to one to `dd-distill train` flags)."""

    model: str = field(
        default=TINY,
        metadata={
            "help": "'tiny' (a GPT-2 built from a config, tokenizer trained on the rows), a model name on the "
            "Hugging Face hub ('gpt2', 'gpt2-medium', ...) or a local directory."
        },
    )
    gguf_file: str | None = field(
        default=None,
        metadata={"help": "A GGUF file name inside `model` (a directory) to load, e.g. SmolLM2's Q4_1 file."},
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Where to load the tokenizer from (default: `model`). Ignored for 'tiny'."}
    )
    tiny_layers: int = field(default=2, metadata={"help": "'tiny' preset: transformer layers."})
    tiny_hidden: int = field(default=128, metadata={"help": "'tiny' preset: hidden size."})
    tiny_heads: int = field(default=4, metadata={"help": "'tiny' preset: attention heads."})
    tiny_vocab_size: int = field(
        default=1024,
        metadata={"help": "'tiny' preset: BPE vocabulary for text; whole numbers get their own tokens on top."},
    )
    tiny_max_number: int = field(
        default=9999, metadata={"help": "'tiny' preset: largest whole number kept as a single token."}
    )
    tiny_number_init: str = field(
        default="fourier",
        metadata={
            "help": "'tiny' preset: 'fourier' starts number tokens' embeddings with sine/cosine features of their "
            "value; 'random' is the usual init."
        },
    )
    tiny_number_scale: float = field(
        default=0.3, metadata={"help": "'tiny' preset: amplitude of the Fourier number features."}
    )
    tiny_position_init: str = field(
        default="sinusoidal",
        metadata={
            "help": "'tiny' preset: 'sinusoidal' starts the position embeddings as the Transformer's sine/cosine "
            "table (so attending a fixed distance back is one linear map at every position); 'random' is GPT-2's."
        },
    )
    tiny_position_scale: float = field(
        default=0.05, metadata={"help": "'tiny' preset: amplitude of the sinusoidal position features."}
    )
    tiny_activation: str = field(
        default="gelu_pytorch_tanh",
        metadata={
            "help": "'tiny' preset: the MLP activation. 'gelu_pytorch_tanh' is GPT-2's GELU (tanh approximation) as "
            "one fused op; 'gelu_new', GPT-2's own spelling of the same function, takes five elementwise ops "
            "(benchmarks/bench_activation.py)."
        },
    )
    max_length: int = field(
        default=256,
        metadata={"help": "Longest row in tokens (longer rows are truncated, and counted); 'tiny' position table size."},
    )
    packing: bool = field(
        default=True,
        metadata={
            "help": "Pack several rows into each sequence of `pack_length` tokens (attention does not cross rows) "
            "instead of padding every row to the longest in its batch."
        },
    )
    pack_length: int | None = field(
        default=None, metadata={"help": "Tokens per packed sequence (default: `max_length`)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Rows per device per step (before packing)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps to accumulate per update."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the rows (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer updates to run; -1 uses `epochs`."})
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate (default: 3e-3 for 'tiny', 5e-5 for a pretrained model)."},
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Fraction of the steps spent warming up."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    dropout: float = field(default=0.0, metadata={"help": "'tiny' preset: dropout (fresh problems rarely overfit)."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (autocast on CPU too)."})
    seed: int = field(default=0, metadata={"help": "Seed for the model init and the data order."})
    logging_steps: int = field(default=10, metadata={"help": "Log the loss every this many updates."})
    save_steps: int = field(default=200, metadata={"help": "Write a checkpoint every this many updates."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints to keep."})
    resume: bool = field(
        default=True,
        metadata={"help": "Resume from the last checkpoint in the output directory, if any; reuse a finished student."},
    )
    max_train_seconds: float | None = field(
        default=None,
        metadata={
            "help": "Time budget: stop training (and save) after this many seconds. The learning-rate schedule "
            "follows whichever of steps and time runs out first, so a cut-short run still anneals."
        },
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    lora_r: int = field(
        default=0,
        metadata={"help": "LoRA rank: above 0, only low-rank adapters train (peft; `pip install dd-prompting[lora]`), "
                          "and the saved student has them merged in. 0 trains every weight."},
    )
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling (alpha / r multiplies the update)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA adapters' input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules that get adapters, e.g. ['c_attn', 'c_proj']; default: peft's choice for the "
                          "architecture (GPT-2: c_attn)."},
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: load the pretrained model's weights in 4 bits (NF4, bitsandbytes) and train LoRA "
                          "adapters (lora_r) on top; the saved student is the full-precision model with them merged. "
                          "`pip install dd-prompting[qlora]`."},
    )
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={
            "help": "Where the Trainer also logs: 'none', or its integrations, e.g. ['tensorboard'], ['wandb'], "
            "['mlflow'] (each needs its own package installed); as TrainingArguments.report_to."
        },
    )

    def __post_init__(self):
        positive = {
            "tiny_layers": self.tiny_layers,
            "tiny_hidden": self.tiny_hidden,
            "tiny_heads": self.tiny_heads,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "logging_steps": self.logging_steps,
            "save_steps": self.save_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {value}.")
        if self.lora_r < 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"TrainConfig.lora_r must be >= 0 and lora_dropout in [0, 1), got {self.lora_r} and "
                             f"{self.lora_dropout}.")
        if self.load_in_4bit and (not self.lora_r or self.is_tiny or self.gguf_file):
            raise ValueError("TrainConfig.load_in_4bit (QLoRA) trains LoRA adapters on a pretrained model's 4-bit "
                             f"weights: it needs lora_r > 0 and a hub or directory model, got lora_r={self.lora_r}, "
                             f"model={self.model!r}{', a GGUF file' if self.gguf_file else ''}.")
        if self.tiny_hidden % self.tiny_heads:
            raise ValueError(
                f"TrainConfig.tiny_hidden ({self.tiny_hidden}) must be divisible by tiny_heads ({self.tiny_heads})."
            )
        if self.tiny_position_init not in _POSITION_INITS:
            raise ValueError(
                f"TrainConfig.tiny_position_init must be one of {_POSITION_INITS}, got {self.tiny_position_init!r}."
            )
        if self.tiny_activation not in _ACTIVATIONS:
            raise ValueError(f"TrainConfig.tiny_activation must be one of {_ACTIVATIONS}, got {self.tiny_activation!r}.")
        if self.tiny_number_init not in _NUMBER_INITS:
            raise ValueError(f"TrainConfig.tiny_number_init must be one of {_NUMBER_INITS}, got {self.tiny_number_init!r}.")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError(f"TrainConfig: set epochs > 0 or max_steps > 0; got epochs={self.epochs}, max_steps={self.max_steps}.")
        if self.pack_length is not None and self.pack_length < self.max_length:
            raise ValueError(
                f"TrainConfig.pack_length ({self.pack_length}) must be at least max_length ({self.max_length}), "
                "or every long row would need a sequence of its own."
            )
        if self.max_train_seconds is not None:
            if self.max_train_seconds <= 0:
                raise ValueError(f"TrainConfig.max_train_seconds must be positive, got {self.max_train_seconds}.")
            if self.lr_scheduler_type not in _TIMED_SCHEDULES:
                raise ValueError(
                    f"TrainConfig.lr_scheduler_type={self.lr_scheduler_type!r} cannot follow a time budget "
                    f"(max_train_seconds); use one of {_TIMED_SCHEDULES}."
                )
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be positive, got {self.learning_rate}.")

    @property
    def is_tiny(self) -> bool:
        return self.model == TINY

    @property
    def resolved_learning_rate(self) -> float:
        """`learning_rate`, or the preset's default when it is unset."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 3e-3 if self.is_tiny else 5e-5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
