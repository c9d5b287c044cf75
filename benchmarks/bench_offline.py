"""The offline default `dd-distill`, stage by stage: students one after another (`--train-workers 1`, the old
setting) against side by side (the default), each in a fresh run directory, in turn, in one run.

Prints the CPU, then each setting's wall time from the command's start to its report, the time of each
stage and of each student's training (with its torch threads), and the held-out accuracies (pair, CoT
student) with the exact McNemar p-value of the pair against the CoT student. Both commands run in
fresh directories (cold caches; nothing is resumed). `--rounds 2` alternates the order
(old, new, new, old) so that a machine that speeds up or slows down during the benchmark shows.

    .venv/bin/python benchmarks/bench_offline.py                 # seed 0, one round: about 13 minutes on 2 cores
    .venv/bin/python benchmarks/bench_offline.py --seed 1 --rounds 2

Run it alone on the machine: another busy process changes both settings' times, and not by the same factor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"one after another": ["--train-workers", "1"], "side by side": []}


def cpu_name() -> str:
    """The CPU's model name and the features that decide training speed here (a VM may hide the exact model)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    features = [label for flag, label in (("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"), ("amx_tile", "AMX"))
                if flag in flags]
    return f"{name} ({', '.join(features)})" if features else name


def run_once(flags: list[str], *, seed: int, where: Path) -> dict:
    command = [sys.executable, "-m", "dd_prompting.distill", "--output-dir", str(where), "--name", "run",
               "--seed", str(seed), "--quiet", *flags]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    metrics = json.loads((where / "run" / "metrics.json").read_text(encoding="utf-8"))
    evaluation = metrics["evaluation"]
    return {
        "wall": wall,
        "stages": metrics["stage_seconds"],
        "students": {role: (info["train_seconds"], info.get("torch_threads")) for role, info in metrics["students"].items()},
        "pair": evaluation["pair"]["accuracy"],
        "cot": evaluation["cot"]["accuracy"],
        "p": (evaluation.get("paired") or {}).get("p_value"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="Rounds; each runs both settings, the order alternating.")
    args = parser.parse_args(argv)

    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs; dd-distill --seed {args.seed}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for round_index in range(args.rounds):
        order = list(SETTINGS) if round_index % 2 == 0 else list(reversed(SETTINGS))
        for name in order:
            print(f"round {round_index + 1}: {name}...", flush=True)
            with tempfile.TemporaryDirectory(prefix="bench-offline-") as where:
                result = run_once(SETTINGS[name], seed=args.seed, where=Path(where))
            results[name].append(result)
            students = ", ".join(f"{role} {seconds:.0f} s ({threads} thread{'s' if threads != 1 else ''})"
                                 for role, (seconds, threads) in result["students"].items())
            stages = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in result["stages"].items())
            p = f", McNemar p = {result['p']:.3g}" if result["p"] is not None else ""
            print(f"  {name}: {result['wall']:.0f} s in all; stages: {stages}; training: {students}; "
                  f"pair {100 * result['pair']:.1f}%, CoT {100 * result['cot']:.1f}%{p}", flush=True)

    print()
    print("| setting | wall (s) | train stage (s) | pair | CoT |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        walls = ", ".join(f"{r['wall']:.0f}" for r in runs)
        trains = ", ".join(f"{r['stages'].get('train', 0):.0f}" for r in runs)
        pairs = ", ".join(f"{100 * r['pair']:.1f}%" for r in runs)
        cots = ", ".join(f"{100 * r['cot']:.1f}%" for r in runs)
        print(f"| {name} | {walls} | {trains} | {pairs} | {cots} |")
    old, new = (results[name] for name in SETTINGS)
    ratios = [a["wall"] / b["wall"] for a, b in zip(old, new)]
    train_ratios = [a["stages"]["train"] / b["stages"]["train"] for a, b in zip(old, new)]
    print(f"\nside by side is {', '.join(f'{r:.2f}x' for r in ratios)} as fast in all "
          f"({', '.join(f'{r:.2f}x' for r in train_ratios)} in the train stage)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
