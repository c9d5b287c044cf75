"""The `tiny` preset's activation: GPT-2's GELU as one fused op against GPT-2's own five-op spelling.

Trains the same solver student (the offline default's rows: 4,000 generator problems) for the same
steps twice through `distill.train.train_student`, once with `tiny_activation="gelu_new"` (what the
preset used before) and once with `"gelu_pytorch_tanh"` (its default now), alternating the two so
that a busy machine slows both alike, and prints the steps per second of each and their ratio.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_activation.py            # 2 rounds of 150 steps each
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_activation.py --steps 300 --rounds 3

Both compute GELU's tanh approximation; they differ in float rounding (at most 2.4e-7 on unit-scale
inputs), so the students they train are not bit-identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


def steps_per_second(rows, activation: str, steps: int, seed: int) -> float:
    from dd_prompting.distill.training.trainer import train_student
    from dd_prompting.distill.training.train_config import TrainConfig

    config = TrainConfig(tiny_activation=activation, max_steps=steps, logging_steps=steps, save_steps=10 * steps,
                         seed=seed)
    with tempfile.TemporaryDirectory() as out:
        train_student(rows=rows, config=config, output_dir=out, role="solver")
        stats = json.loads((Path(out) / "student.json").read_text())["train_stats"]
    return stats["steps"] / stats["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from dd_prompting.distill.rows.build import build_rows
    from dd_prompting.distill.teach.generator import generate_problems

    rows = build_rows(generate_problems(4000, seed=0))["solver"]
    speeds: dict[str, list[float]] = {name: [] for name in ACTIVATIONS}
    for round_ in range(args.rounds):
        for name in ACTIVATIONS:
            speeds[name].append(steps_per_second(rows, name, args.steps, seed=round_))
    for name in ACTIVATIONS:
        print(f"{name:18s} {', '.join(f'{s:.2f}' for s in speeds[name])} steps/s")
    ratios = [fused / old for fused, old in zip(speeds["gelu_pytorch_tanh"], speeds["gelu_new"])]
    print(f"gelu_pytorch_tanh / gelu_new: {', '.join(f'{r:.2f}x' for r in ratios)} (round by round)")


if __name__ == "__main__":
    main()
