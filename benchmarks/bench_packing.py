"""Packing vs padding: real (non-pad) training tokens per second on GSM8K-length rows, and peak memory.

Trains the same `tiny` student for the same steps on the same batches twice, through
`distill.train.train_student` (the Trainer path users run): once packing each batch's rows into
sequences of `--pack-length` tokens (`PackingCollator`), once padding each batch to its longest row
(`PaddingCollator`). The rows are GSM8K training problems as CoT rows (question -> worked solution ->
"The answer is N."), so the length distribution is GSM8K's. Each run is a child process, so its
peak resident memory (`ru_maxrss`) is its own.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_packing.py            # prints the ratio (target >= 1.5x)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_packing.py --steps 60 --batch-size 32

On a shared machine timings are noisy: compare the two lines of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def gsm8k_cot_rows(limit: int) -> list[dict]:
    """GSM8K training problems as CoT rows: the solution lines without <<calculator>> notes, then the answer."""
    from dd_prompting import load_gsm8k
    from dd_prompting.distill.rows.format import cot_completion, cot_prompt

    rows = []
    for example in load_gsm8k("train", limit=limit):
        lines = [re.sub(r"<<[^>]*>>", "", line) for line in example.solution.split("\n") if not line.startswith("####")]
        rows.append({"prompt": cot_prompt(example.question), "completion": cot_completion(lines, example.answer)})
    return rows


def run_one(args: argparse.Namespace) -> dict:
    """One training run in this process; returns its measurements."""
    from dd_prompting.distill.training.collators import PackingCollator, PaddingCollator
    from dd_prompting.distill.training.trainer import train_student
    from dd_prompting.distill.training.train_config import TrainConfig

    counts = {"real": 0, "computed": 0}
    for collator in (PackingCollator, PaddingCollator):
        original = collator.__call__

        def counting(self, features, _original=original):
            batch = _original(self, features)
            counts["real"] += sum(len(f["input_ids"]) for f in features)
            counts["computed"] += batch["input_ids"].numel()
            return batch

        collator.__call__ = counting

    rows = gsm8k_cot_rows(args.problems)
    config = TrainConfig(
        tiny_layers=args.layers,
        tiny_hidden=args.hidden,
        max_length=args.pack_length,
        packing=args.mode == "packing",
        batch_size=args.batch_size,
        max_steps=args.steps,
        logging_steps=args.steps,
        save_steps=10 * args.steps,
        resume=False,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as out:
        train_student(rows=rows, config=config, output_dir=out, role="cot")
        stats = json.loads((Path(out) / "student.json").read_text())["train_stats"]
    return {
        "mode": args.mode,
        "steps": stats["steps"],
        "train_seconds": stats["train_seconds"],
        "real_tokens": counts["real"],
        "computed_tokens": counts["computed"],
        "real_tokens_per_second": counts["real"] / stats["train_seconds"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=2000, help="GSM8K training problems to draw rows from.")
    parser.add_argument("--steps", type=int, default=40, help="Optimizer steps per mode.")
    parser.add_argument("--batch-size", type=int, default=16, help="Rows per step.")
    parser.add_argument("--pack-length", type=int, default=512, help="Tokens per packed sequence (and max row length).")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--mode", choices=["packing", "padding"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.mode:  # a child run
        print(json.dumps(run_one(args)))
        return 0

    results = {}
    for mode in ("padding", "packing"):
        child = [sys.executable, __file__, "--mode", mode] + [
            f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items() if name != "mode"
        ]
        done = subprocess.run(child, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(
            f"{mode:8s} {r['steps']} steps x {args.batch_size} rows: {r['real_tokens']} real tokens in "
            f"{r['train_seconds']:.1f} s = {r['real_tokens_per_second']:,.0f} real tokens/s "
            f"({r['computed_tokens'] / r['real_tokens']:.2f} tokens computed per real token); "
            f"peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    pad, pack = results["padding"], results["packing"]
    if pad["real_tokens"] != pack["real_tokens"]:
        print(f"warning: the two runs saw different rows ({pad['real_tokens']} vs {pack['real_tokens']} real tokens)")
    ratio = pack["real_tokens_per_second"] / pad["real_tokens_per_second"]
    print(f"packing / padding real tokens per second: {ratio:.2f}x (target >= 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
