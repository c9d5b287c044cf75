"""Train one student (decomposer, solver or CoT) on prompt/completion rows with the transformers Trainer.

`train_student` runs unchanged under `accelerate launch` / `torchrun`: it is a plain `Trainer` with a
collator. Loss is on completions only (prompt labels are -100, see `distill.tokenization`). Short rows
are packed into sequences of `pack_length` tokens by `PackingCollator`; the rows in a sequence do not
attend to each other (position ids restart at each row and no attention mask is passed, so
transformers >= 5 builds a block-diagonal causal mask; `test_packed_rows_do_not_attend_across`
checks it). Checkpoints go to `<output_dir>/checkpoints` and a rerun resumes from the last one.
The finished student is `<output_dir>` itself: safetensors weights, tokenizer, `student.json`
(role, format version, base model, training config and stats) and the loss curves (`loss.csv`,
`loss.json`, `loss.png`).

On a shared CPU, set ``OMP_WAIT_POLICY=PASSIVE`` before starting Python: otherwise idle OpenMP
threads spin, and training ran about 10x slower on a busy 2-core machine.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from dd_prompting.distill.formats import FORMAT_VERSION, ROLES, read_rows, row_text
from dd_prompting.distill.tokenization import IGNORE_INDEX, tokenize_rows, train_number_tokenizer
from dd_prompting.distill.train_config import TrainConfig

__all__ = [
    "METADATA_FILE",
    "PackingCollator",
    "PaddingCollator",
    "build_tiny_model",
    "load_model_and_tokenizer",
    "train_student",
    "save_student",
    "read_student_metadata",
    "save_loss_curves",
]

logger = logging.getLogger(__name__)

METADATA_FILE = "student.json"
_CHECKPOINTS = "checkpoints"


@dataclass
class PackingCollator:
    """Pack tokenized rows into as few sequences of at most `pack_length` tokens as fit (first-fit decreasing).

    Returns `input_ids`, `labels` and `position_ids`, and no `attention_mask`: position ids restart at
    every row, which transformers (>= 5) turns into a block-diagonal causal mask, so no row attends to
    another. Padding at the end of a sequence gets its own restarting positions and -100 labels. The
    first label of every row is -100 (it would be predicted from the previous row's last token).
    The model must run without a key/value cache in training (`train_student` sets `use_cache=False`),
    or the mask falls back to plain causal; `test_packed_rows_do_not_attend_across` checks the
    installed transformers (5.24 here) still builds the block-diagonal mask.

    >>> collator = PackingCollator(pad_token_id=0, pack_length=6)
    >>> batch = collator([
    ...     {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    ...     {"input_ids": [8, 9], "labels": [8, 9]},
    ...     {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]},
    ... ])
    >>> batch["input_ids"].tolist()
    [[1, 2, 3, 4, 8, 9], [5, 6, 7, 0, 0, 0]]
    >>> batch["position_ids"].tolist()
    [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    >>> batch["labels"].tolist()
    [[-100, -100, 3, 4, -100, 9], [-100, 6, 7, -100, -100, -100]]
    """

    pad_token_id: int
    pack_length: int

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        bins: list[list[dict[str, Any]]] = []
        free: list[int] = []
        for feature in sorted(features, key=lambda f: len(f["input_ids"]), reverse=True):
            length = len(feature["input_ids"])
            if length > self.pack_length:
                raise ValueError(
                    f"A row of {length} tokens does not fit pack_length={self.pack_length}; "
                    "truncate rows to max_length <= pack_length first."
                )
            for index, room in enumerate(free):
                if length <= room:
                    bins[index].append(feature)
                    free[index] -= length
                    break
            else:
                bins.append([feature])
                free.append(self.pack_length - length)
        width = max(self.pack_length - room for room in free)
        input_ids, labels, positions = [], [], []
        for rows, room in zip(bins, free):
            ids, lab, pos = [], [], []
            for row in rows:
                ids += row["input_ids"]
                lab += [IGNORE_INDEX] + list(row["labels"][1:])
                pos += range(len(row["input_ids"]))
            pad = width - len(ids)
            input_ids.append(ids + [self.pad_token_id] * pad)
            labels.append(lab + [IGNORE_INDEX] * pad)
            positions.append(pos + list(range(pad)))
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
        }


@dataclass
class PaddingCollator:
    """Pad every row to the longest in the batch (right padding, attention mask, -100 labels on padding).

    >>> batch = PaddingCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    ...                                         {"input_ids": [8, 9], "labels": [-100, 9]}])
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    ([[5, 6, 7], [8, 9, 0]], [[1, 1, 1], [1, 1, 0]])
    >>> batch["labels"].tolist()
    [[-100, 6, 7], [-100, 9, -100]]
    """

    pad_token_id: int

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        input_ids, labels, mask = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            input_ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }


def build_tiny_model(tokenizer, config: TrainConfig):
    """A GPT-2-architecture model sized by the `tiny_*` fields, its vocabulary fitted to `tokenizer`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(config.seed)
    eos = tokenizer.eos_token_id
    model_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.max_length,
        n_embd=config.tiny_hidden,
        n_layer=config.tiny_layers,
        n_head=config.tiny_heads,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(model_config)
    if config.tiny_number_init == "fourier":
        _init_number_embeddings(model, tokenizer, scale=config.tiny_number_scale)
    return model


_NUMBER_PERIODS = (2, 5, 10, 20, 50, 100, 200, 500, 1000, 10000)


def _init_number_embeddings(model, tokenizer, *, scale: float) -> list[int]:
    """Start each whole-number token's embedding with Fourier features of its value; returns their rows.

    Dimensions 2i and 2i+1 of the embedding of n hold scale * cos/sin(2 pi n / T_i) over periods T_i from
    2 to 10,000; the rest stay random. With tied input/output embeddings this hands the model a
    representation in which adding numbers is rotating angles (the circuit small transformers find
    for modular addition), rather than leaving it to discover one from scratch.
    """
    import torch

    weight = model.get_input_embeddings().weight
    width = 2 * len(_NUMBER_PERIODS)
    if weight.shape[1] < 2 * width:
        return []
    periods = torch.tensor(_NUMBER_PERIODS, dtype=torch.float32)
    rows = []
    with torch.no_grad():
        for token, index in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string([token]).strip()
            if not text.isdigit() or (len(text) > 1 and text[0] == "0"):
                continue
            angles = 2 * math.pi * int(text) / periods
            weight[index, 0:width:2] = scale * torch.cos(angles)
            weight[index, 1:width:2] = scale * torch.sin(angles)
            rows.append(index)
    return rows


def load_model_and_tokenizer(config: TrainConfig, *, texts: Sequence[str] = (), tokenizer_dir: str | Path | None = None):
    """The model and tokenizer to train: a fresh `tiny` GPT-2, or a pretrained checkpoint.

    For `tiny`, the tokenizer is loaded from `tokenizer_dir` when given (a resumed run must reuse
    its vocabulary), else trained on `texts`. A pretrained tokenizer without a pad token pads with EOS.
    A GGUF checkpoint is dequantised into a plain float32 model, so it can be trained and saved.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.is_tiny:
        if tokenizer_dir is not None:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        else:
            if not texts:
                raise ValueError("The 'tiny' preset trains its tokenizer on the rows; got no texts.")
            tokenizer = train_number_tokenizer(texts, vocab_size=config.tiny_vocab_size, max_number=config.tiny_max_number)
        return build_tiny_model(tokenizer, config), tokenizer

    gguf = {"gguf_file": config.gguf_file} if config.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.model, **gguf)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"The tokenizer of {config.model!r} has no EOS token; students need one to end completions.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32, **gguf)
    if getattr(model, "hf_quantizer", None) is not None:
        model = _dequantized_copy(model)
    return model, tokenizer


def _dequantized_copy(model):
    # A GGUF checkpoint loads with its weights already in float32, but flagged as quantized, which the
    # Trainer refuses to fine-tune and save_pretrained refuses to write: copy it into a plain model.
    model_config = model.config
    if hasattr(model_config, "quantization_config"):
        del model_config.quantization_config
    plain = type(model)(model_config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def save_student(model, tokenizer, directory: str | Path, *, role: str, base_model: str, extra: dict | None = None) -> Path:
    """Save a student: safetensors weights, tokenizer and `student.json` (role, format version, ...)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    metadata = {"role": role, "format_version": FORMAT_VERSION, "base_model": base_model, **(extra or {})}
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return directory


def read_student_metadata(directory: str | Path, *, role: str | None = None) -> dict[str, Any]:
    """Read `student.json`; with `role`, check the student was trained for it and in this format version."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a student saved by distill.train.")
    metadata = json.loads(path.read_text(encoding="utf-8"))
    if role is not None and metadata.get("role") != role:
        raise ValueError(f"{directory} holds a {metadata.get('role')!r} student, not a {role!r} one.")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory} was trained on row format version {metadata.get('format_version')}; this version of "
            f"distill reads format {FORMAT_VERSION}. Retrain the student, or use the distill version that made it."
        )
    return metadata


def save_loss_curves(log_history: Sequence[dict[str, Any]], directory: str | Path, *, title: str = "") -> dict[str, Path]:
    """Write the Trainer's log history as `loss.json`, `loss.csv` (step, epoch, loss, lr, eval loss) and `loss.png`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "loss.json", "csv": directory / "loss.csv", "png": directory / "loss.png"}
    paths["json"].write_text(json.dumps(list(log_history), indent=1) + "\n", encoding="utf-8")
    columns = ["step", "epoch", "loss", "learning_rate", "eval_loss"]
    records = [entry for entry in log_history if "loss" in entry or "eval_loss" in entry]
    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)

    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    train = [(e["step"], e["loss"]) for e in records if "loss" in e]
    held_out = [(e["step"], e["eval_loss"]) for e in records if "eval_loss" in e]
    if train:
        ax.plot(*zip(*train), label="training loss")
    if held_out:
        ax.plot(*zip(*held_out), "o-", label="held-out loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=100)
    return paths


def _last_checkpoint(directory: Path) -> Path | None:
    checkpoints = [p for p in directory.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _load_rows(rows) -> list[dict]:
    if isinstance(rows, (str, Path)):
        return read_rows(rows)
    if hasattr(rows, "to_list"):  # a datasets.Dataset
        return rows.to_list()
    return list(rows)


def train_student(
    *,
    rows,
    config: TrainConfig,
    output_dir: str | Path,
    role: str,
    eval_rows=None,
) -> Path:
    """Train a student on `rows` and save it to `output_dir`; returns `output_dir`.

    `rows` (and `eval_rows`, scored before and after training when given) is a JSONL path written
    by `distill.formats.write_rows`, a `datasets.Dataset` or a list of row dicts. `role` is
    "decomposer", "solver" or "cot" and goes into `student.json`. With `config.resume`, a run that
    was killed continues from its last checkpoint, and a finished student is returned as it is.
    """
    import torch
    from datasets import Dataset
    from transformers import TrainingArguments

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}.")
    output_dir = Path(output_dir)
    if config.resume and (output_dir / METADATA_FILE).is_file():
        logger.info("%s already holds a trained %s student; not training again.", output_dir, role)
        return output_dir
    checkpoints = output_dir / _CHECKPOINTS
    last = _last_checkpoint(checkpoints) if config.resume and checkpoints.is_dir() else None

    train_rows = _load_rows(rows)
    if not train_rows:
        raise ValueError(f"No {role} rows to train on.")
    held_out = _load_rows(eval_rows) if eval_rows is not None else []
    texts = [row_text(row) for row in train_rows]
    model, tokenizer = load_model_and_tokenizer(config, texts=texts, tokenizer_dir=last if config.is_tiny else None)
    model.config.use_cache = False  # packed rows need the mask built from position ids, which a cache disables

    max_length = config.max_length
    if not config.is_tiny:
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        max_length = min(max_length, limit) if limit else max_length
    train_data = Dataset.from_list(tokenize_rows(train_rows, tokenizer, max_length=max_length))
    eval_data = Dataset.from_list(tokenize_rows(held_out, tokenizer, max_length=max_length)) if held_out else None
    tokens = sum(len(ids) for ids in train_data["input_ids"])

    if config.packing:
        collator = PackingCollator(pad_token_id=tokenizer.pad_token_id, pack_length=config.pack_length or max_length)
    else:
        collator = PaddingCollator(pad_token_id=tokenizer.pad_token_id)
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.resolved_learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        bf16=config.bf16,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=config.dataloader_num_workers,
        disable_tqdm=False,
    )
    callbacks = [_TimeLimit(config.max_train_seconds)] if config.max_train_seconds else []
    trainer = _StudentTrainer(
        time_budget=config.max_train_seconds,
        warmup_ratio=config.warmup_ratio,
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    initial_eval = trainer.evaluate() if eval_data is not None and last is None else None
    if last is not None:
        logger.info("Resuming %s training from %s", role, last)
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(last) if last is not None else None)
    seconds = time.monotonic() - started
    if eval_data is not None:
        trainer.evaluate()
    if initial_eval is not None:  # train() starts a fresh log, so the score before training goes in front
        trainer.state.log_history.insert(0, {"step": 0, "epoch": 0.0, "eval_loss": initial_eval["eval_loss"]})

    if trainer.is_world_process_zero():
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        eval_losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
        stats = {
            "rows": len(train_rows),
            "tokens_per_epoch": tokens,
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "train_seconds": round(seconds, 2),
            "final_train_loss": losses[-1] if losses else None,
            "mean_train_loss": result.training_loss if not math.isnan(result.training_loss) else None,
            "eval_losses": eval_losses,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        save_student(
            trainer.model,
            tokenizer,
            output_dir,
            role=role,
            base_model=config.model,
            extra={"train_config": config.to_dict(), "train_stats": stats},
        )
        save_loss_curves(trainer.state.log_history, output_dir, title=f"{role} student ({config.model})")
        logger.info("Saved %s student to %s (%d steps, %.0f s)", role, output_dir, stats["steps"], seconds)
    return output_dir


def _schedule_factor(progress: float, *, warmup: float, shape: str) -> float:
    """The learning-rate multiplier at `progress` (0 to 1) of training: linear warm-up, then `shape` decay."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return progress / warmup
    if shape.startswith("constant"):
        return 1.0
    rest = (progress - warmup) / max(1.0 - warmup, 1e-9)
    if shape == "linear":
        return 1.0 - rest
    return 0.5 * (1.0 + math.cos(math.pi * rest))


class _StudentTrainer(Trainer):
    """A Trainer whose learning-rate schedule also follows the clock when there is a time budget.

    With `time_budget` seconds, progress through the schedule is the larger of the step fraction and
    the time fraction, so a run cut short by the budget still warms up and anneals to zero instead
    of stopping at its peak learning rate. (After a resume, the clock counts from the restart.)
    """

    def __init__(self, *, time_budget: float | None, warmup_ratio: float, **kwargs):
        super().__init__(**kwargs)
        self.time_budget = time_budget
        self.warmup_ratio = warmup_ratio

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.time_budget is None:
            return super().create_scheduler(num_training_steps, optimizer)
        from torch.optim.lr_scheduler import LambdaLR

        if self.lr_scheduler is None:
            started, budget = time.monotonic(), self.time_budget
            shape = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))

            def factor(step: int) -> float:
                progress = max(step / max(num_training_steps, 1), (time.monotonic() - started) / budget)
                return _schedule_factor(progress, warmup=self.warmup_ratio, shape=shape)

            self.lr_scheduler = LambdaLR(self.optimizer if optimizer is None else optimizer, factor)
            self._created_lr_scheduler = True
        return self.lr_scheduler


class _TimeLimit(TrainerCallback):
    """Stops training once `seconds` have passed; `train_student` then saves the student as usual."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = math.inf

    def on_train_begin(self, args, state, control, **kwargs):
        self.deadline = time.monotonic() + self.seconds

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() >= self.deadline:
            logger.info("Stopping at step %d: max_train_seconds=%s reached.", state.global_step, self.seconds)
            control.should_training_stop = True
