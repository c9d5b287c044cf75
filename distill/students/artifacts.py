"""What a saved student is: its directory layout, and writing, checking and loading one.

A student directory holds the safetensors weights and config, the tokenizer, `student.json` (role,
row format version, base model, and whatever the trainer adds: its config and stats) and the loss
curves (`loss.json`, `loss.csv`, `loss.png`). `load_student` checks the role and the format version
before loading, so a student is never run on prompts it was not trained on. Nothing here imports the
transformers `Trainer`: loading a student for inference does not pay for the training stack.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dd_prompting.distill.rows.format import FORMAT_VERSION, TRAINABLE_ROLES

__all__ = ["METADATA_FILE", "save_student", "read_student_metadata", "check_student", "load_student",
           "save_loss_curves"]

METADATA_FILE = "student.json"


def save_student(model, tokenizer, directory: str | Path, *, role: str, base_model: str, extra: dict | None = None) -> Path:
    """Save a student: safetensors weights, tokenizer and `student.json` (role, format version, ...)."""
    if role not in TRAINABLE_ROLES:
        raise ValueError(f"role must be one of {TRAINABLE_ROLES}, got {role!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True  # trained without a cache (packing); saved ready for generation
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    metadata = {"role": role, "format_version": FORMAT_VERSION, "base_model": base_model, **(extra or {})}
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return directory


def read_student_metadata(directory: str | Path, *, role: str | None = None) -> dict[str, Any]:
    """Read `student.json`; with `role`, check the student was trained for it and in this format version."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {directory} is not a student saved by save_student (dd-distill train)."
        )
    metadata = json.loads(path.read_text(encoding="utf-8"))
    if role is not None and metadata.get("role") != role:
        raise ValueError(f"{directory} holds a {metadata.get('role')!r} student, not a {role!r} one.")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory} was trained on row format version {metadata.get('format_version')}; this version of "
            f"distill reads format {FORMAT_VERSION}. Retrain the student, or use the distill version that made it."
        )
    return metadata


def check_student(directory: str | Path, *, role: str) -> None:
    """Raise in one sentence unless `directory` holds a `role` student that `load_student` can load.

    Reads `student.json` (role, format version) and looks for the weights' config and the tokenizer,
    without loading torch: callers check every student a job will need before it does any work.
    """
    read_student_metadata(directory, role=role)
    directory = Path(directory)
    missing = [name for name in ("config.json", "tokenizer_config.json") if not (directory / name).is_file()]
    if not any(directory.glob("*.safetensors")) and not any(directory.glob("*.bin")):
        missing.append("the weights (*.safetensors)")
    if missing:
        raise FileNotFoundError(f"{directory} holds an incomplete {role} student: {', '.join(missing)} missing. "
                                "Train it again (dd-distill train --run-dir <its run>).")


def load_student(directory: str | Path, *, role: str):
    """Load a saved student (model in eval mode, tokenizer), checking its role and format version."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    read_student_metadata(directory, role=role)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    return model, tokenizer


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
