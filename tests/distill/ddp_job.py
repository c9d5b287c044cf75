"""Train one small student with `train_student`, as a test job: alone, or one process of `torchrun`.

    python ddp_job.py OUT BATCH                       # one process
    torchrun --nproc_per_node 2 ddp_job.py OUT BATCH  # each process takes BATCH rows per step

Rank 0 writes OUT/result.json: the logged training losses and every weight of the saved student. Every
process writes OUT/returned-<rank>.json: whether the student was on disk when `train_student` returned to it.
It leaves the process group the way `dd-distill` does.
"""

import json
import os
import sys
from pathlib import Path

from dd_prompting.distill.rows.build import build_rows
from dd_prompting.distill.students.artifacts import METADATA_FILE
from dd_prompting.distill.teach.generator import generate_problems
from dd_prompting.distill.training.distributed import is_main_process, leave_process_group
from dd_prompting.distill.training.train_config import TrainConfig
from dd_prompting.distill.training.trainer import train_student

out, batch = Path(sys.argv[1]), int(sys.argv[2])
rows = build_rows(generate_problems(64, seed=0))["cot"]
config = TrainConfig(tiny_layers=1, tiny_hidden=32, tiny_heads=2, batch_size=batch, max_steps=8, learning_rate=1e-2,
                     warmup_ratio=0.0, logging_steps=1, save_steps=1000, seed=0)
student = train_student(rows=rows, config=config, output_dir=out / "student", role="cot")
rank = os.environ.get("RANK", "0")
(out / f"returned-{rank}.json").write_text(json.dumps({"student_saved": (student / METADATA_FILE).is_file()}))

if is_main_process():
    from safetensors.torch import load_file

    losses = [entry["loss"] for entry in json.loads((student / "loss.json").read_text()) if "loss" in entry]
    weights = {name: tensor.flatten().tolist() for name, tensor in load_file(student / "model.safetensors").items()}
    (out / "result.json").write_text(json.dumps({"losses": losses, "weights": weights}))
leave_process_group()
