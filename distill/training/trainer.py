"""Train one student (decomposer, solver or CoT) on prompt/completion rows with the transformers Trainer.

`train_student` runs unchanged under `accelerate launch` / `torchrun`: it is a plain `Trainer` with a
collator. Loss is on completions only (prompt labels are -100, see `distill.training.tokenization`). Short rows
are packed into sequences of `pack_length` tokens by `distill.training.collators.PackingCollator`. The model
comes from `distill.training.modeling`. Checkpoints go to `<output_dir>/checkpoints` and a rerun resumes from
the last one. With a time budget (`max_train_seconds`) the learning-rate schedule follows the clock
and training stops when the budget is spent. The finished student is `<output_dir>` itself, written
by `distill.students.artifacts` (weights, tokenizer, `student.json`, loss curves).

On a shared CPU, set ``OMP_WAIT_POLICY=PASSIVE`` before starting Python: otherwise idle OpenMP
threads spin, and training ran about 10x slower on a busy 2-core machine.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from dd_prompting.distill.rows.format import TRAINABLE_ROLES, read_rows, row_text
from dd_prompting.distill.students.artifacts import (
    METADATA_FILE,
    save_loss_curves,
    save_student,
)
from dd_prompting.distill.training.collators import PackingCollator, PaddingCollator
from dd_prompting.distill.training.modeling import (
    add_lora_adapters,
    load_model_and_tokenizer,
    merged,
)
from dd_prompting.distill.training.tokenization import tokenize_rows
from dd_prompting.distill.training.train_config import TrainConfig
from transformers import Trainer, TrainerCallback

__all__ = ["train_student", "is_trained"]

logger = logging.getLogger(__name__)

_CHECKPOINTS = "checkpoints"


def _last_checkpoint(directory: Path) -> Path | None:
    checkpoints = [p for p in directory.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _load_rows(rows) -> list[dict]:
    if isinstance(rows, (str, Path)):
        return read_rows(rows)
    if hasattr(rows, "to_list"):  # a datasets.Dataset
        return rows.to_list()
    return list(rows)


def is_trained(config: TrainConfig, output_dir: str | Path) -> bool:
    """True when `train_student` would return `output_dir` as it is: a finished student, and `config.resume`."""
    return config.resume and (Path(output_dir) / METADATA_FILE).is_file()


def train_student(
    *,
    rows,
    config: TrainConfig,
    output_dir: str | Path,
    role: str,
    eval_rows=None,
    metadata: dict | None = None,
    progress_bar: bool = True,
) -> Path:
    """Train a student on `rows` and save it to `output_dir`; returns `output_dir`.

    `rows` (and `eval_rows`, scored before and after training when given) is a JSONL path written
    by `distill.rows.format.write_rows`, a `datasets.Dataset` or a list of row dicts. `role` is
    "decomposer", "solver", "cot" or "predictor" (a DSPy predictor's model) and goes into
    `student.json`, with `metadata`. With `config.resume`, a run that
    was killed continues from its last checkpoint, and a finished student is returned as it is.
    `progress_bar=False` logs progress every tenth of the steps instead of drawing a bar (students
    trained side by side would draw their bars over each other).
    """
    import torch
    from datasets import Dataset
    from transformers import TrainingArguments

    if role not in TRAINABLE_ROLES:
        raise ValueError(f"role must be one of {TRAINABLE_ROLES}, got {role!r}.")
    output_dir = Path(output_dir)
    if is_trained(config, output_dir):
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
    _name_the_loss(model)
    if config.packing:
        _expect_packed_batches(model)
    if config.lora_r:
        model = add_lora_adapters(model, config)  # checkpoints then hold the adapters; the student is merged

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
        report_to=config.report_to,
        remove_unused_columns=False,
        dataloader_num_workers=config.dataloader_num_workers,
        disable_tqdm=not progress_bar,
    )
    callbacks = [_TimeLimit(config.max_train_seconds)] if config.max_train_seconds else []
    if not progress_bar:
        callbacks.append(_ProgressLog(role))
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
    if not progress_bar:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # it prints every loss; _ProgressLog says where training is
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
            "torch_threads": torch.get_num_threads(),
            "final_train_loss": losses[-1] if losses else None,
            "mean_train_loss": result.training_loss if not math.isnan(result.training_loss) else None,
            "eval_losses": eval_losses,
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        save_student(
            merged(trainer.model, config),
            tokenizer,
            output_dir,
            role=role,
            base_model=config.model,
            extra={**(metadata or {}), "train_config": config.to_dict(), "train_stats": stats},
        )
        save_loss_curves(trainer.state.log_history, output_dir, title=f"{role} student ({config.model})")
        logger.info("Saved %s student to %s (%d steps, %.0f s)", role, output_dir, stats["steps"], seconds)
    # Every process returns once the student is on disk: a rank that returned earlier could read a half-saved
    # student, or leave the process (and its gloo threads) while rank 0 still talks to it.
    trainer.accelerator.wait_for_everyone()
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


def _name_the_loss(model) -> None:
    """Name the loss a causal LM trains with, where transformers can't tell it from the class name.

    `GPT2LMHeadModel` matches no key of transformers' `LOSS_MAPPING`, so on the first step it warns
    "`loss_type=None` ... is unrecognized" and uses the causal-LM loss anyway: the same loss, said here.
    """
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"


def _expect_packed_batches(model) -> None:
    """Turn off, on this model only, transformers' check for padded input without an attention mask.

    Packed batches carry no `attention_mask` on purpose: transformers builds the block-diagonal mask that
    keeps packed rows apart from `position_ids` only when the mask is None (a 2-D mask would let the rows
    attend to each other). The check looks for the pad id first or last in a row, which every packed row
    that starts with BOS (= pad for the tiny students) has, so it would warn on every run.
    """
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.warn_if_padding_and_no_attention_mask = _no_padding_check


def _no_padding_check(input_ids, attention_mask) -> None:
    return None


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


class _ProgressLog(TrainerCallback):
    """Logs the step, the last loss and the steps per second at every tenth of training."""

    def __init__(self, role: str):
        self.role = role
        self.next_tenth = 1
        self.started = time.monotonic()
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.monotonic(), state.global_step
        if state.max_steps:
            self.next_tenth = state.global_step * 10 // state.max_steps + 1

    def on_step_end(self, args, state, control, **kwargs):
        if not state.max_steps or state.global_step * 10 < self.next_tenth * state.max_steps:
            return
        self.next_tenth = state.global_step * 10 // state.max_steps + 1
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        rate = (state.global_step - self.first_step) / max(time.monotonic() - self.started, 1e-9)
        logger.info("%s: step %d/%d, loss %s, %.1f steps/s", self.role, state.global_step, state.max_steps,
                    f"{losses[-1]:.4f}" if losses else "-", rate)


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
