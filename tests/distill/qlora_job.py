"""QLoRA on a tiny "pretrained" student, as a test job in its own process, with bitsandbytes on its path.

    PYTHONPATH=<bitsandbytes dir> python qlora_job.py OUT

bitsandbytes is kept out of the project's environment: transformers' Trainer imports peft whenever it is
installed, peft imports bitsandbytes whenever that is installed, and bitsandbytes warns at import on a CPU
without its optional kernels, so every `dd-distill` would print a warning about a feature it does not use.
Writes OUT/result.json: the training stats, the first logged loss, and the base and trained weights' names
that differ, with the rank of the first adapted projection's change.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from dd_prompting.distill.students.artifacts import read_student_metadata
from dd_prompting.distill.rows.build import build_rows
from dd_prompting.distill.rows.format import row_text
from dd_prompting.distill.teach.generator import generate_problems
from dd_prompting.distill.training.modeling import build_tiny_model
from dd_prompting.distill.training.tokenization import train_number_tokenizer
from dd_prompting.distill.training.trainer import train_student
from dd_prompting.distill.training.train_config import TrainConfig

out = Path(sys.argv[1])
rows = build_rows(generate_problems(40, seed=0))
tokenizer = train_number_tokenizer([row_text(row) for role in rows.values() for row in role], vocab_size=400)

# A "pretrained" model in a directory: QLoRA quantizes a checkpoint, not a model built in the run.
base_dir = out / "base"
build_tiny_model(tokenizer, TrainConfig(tiny_layers=2, tiny_hidden=48, tiny_heads=2, seed=0)).save_pretrained(base_dir)
tokenizer.save_pretrained(base_dir)
base = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()

config = TrainConfig(model=str(base_dir), batch_size=8, logging_steps=1, save_steps=100, max_steps=8,
                     learning_rate=1e-2, warmup_ratio=0.0, lora_r=4, load_in_4bit=True)
student = train_student(rows=rows["solver"][:32], config=config, output_dir=out / "qlora", role="solver")

reloaded = AutoModelForCausalLM.from_pretrained(student)  # plain float32 weights: no bitsandbytes, no peft needed
after = reloaded.state_dict()
delta = after["transformer.h.0.attn.c_attn.weight"] - base["transformer.h.0.attn.c_attn.weight"]
(out / "result.json").write_text(json.dumps({
    "stats": read_student_metadata(student, role="solver")["train_stats"],
    "first_loss": json.loads((student / "loss.json").read_text())[0]["loss"],
    "quantization_config": getattr(reloaded.config, "quantization_config", None) is not None,
    "all_float32": all(value.dtype == torch.float32 for value in after.values() if value.is_floating_point()),
    "changed": sorted(name for name, value in after.items() if name in base and not torch.equal(value, base[name])),
    "delta_rank": torch.linalg.matrix_rank(delta).item(),
    "bitsandbytes": sys.modules.get("bitsandbytes").__file__ if "bitsandbytes" in sys.modules else None,
}))
