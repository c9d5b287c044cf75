"""Student pipeline speed: batching + key/value cache reuse vs a naive loop, and the CoT student's time.

Runs the same decomposer + solver on the same held-out generated problems three ways, greedy:

- `StudentPipeline.solve(batch_size=B)`: problems decoded together, each problem's key/value cache kept
  across its solver steps;
- the same at batch size 1 with the cache kept (what the cache alone buys);
- the naive loop: batch size 1, and every solver step re-encodes the problem and all earlier steps;

checks that all three give the same answers, and prints the speed-up (target >= 3x), then the CoT
student's time on the same problems. Students come from a `dd-distill` run directory
(`--run-dir runs/offline`) or are trained here for a minute (a 2-layer `tiny` preset; slow students
with realistic output lengths are all the benchmark needs).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_students.py
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_students.py --run-dir runs/offline --problems 128

On a shared machine timings are noisy: compare the lines of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def train_quick_students(directory: Path, *, steps: int) -> Path:
    """Students that write well-formed output (not necessarily right answers), trained in about a minute."""
    from dd_prompting.distill.rows.build import build_rows
    from dd_prompting.distill.teach.generator import generate_problems
    from dd_prompting.distill.training.trainer import train_student
    from dd_prompting.distill.training.train_config import TrainConfig

    rows = build_rows(generate_problems(1500, seed=0))
    for role in ("decomposer", "solver", "cot"):
        config = TrainConfig(tiny_layers=2, max_steps=steps, logging_steps=steps, save_steps=10 * steps, seed=0)
        print(f"training a quick {role} student ({steps} steps)...", flush=True)
        train_student(rows=rows[role], config=config, output_dir=directory / role, role=role)
    return directory


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, help="A dd-distill run directory (students/<role>/ inside).")
    parser.add_argument("--problems", type=int, default=64, help="Held-out generated problems to solve.")
    parser.add_argument("--batch-size", type=int, default=32, help="Problems per batch for the fast path.")
    parser.add_argument("--train-steps", type=int, default=150, help="Steps per quick student (no --run-dir).")
    args = parser.parse_args(argv)

    import torch

    from dd_prompting.answers import answers_match
    from dd_prompting.distill.teach.generator import generate_problems
    from dd_prompting.distill.students.pipelines import CoTStudent, StudentPipeline

    with tempfile.TemporaryDirectory() as scratch:
        if args.run_dir:
            students = args.run_dir / "students" if (args.run_dir / "students").is_dir() else args.run_dir
        else:
            students = train_quick_students(Path(scratch), steps=args.train_steps)
        pipeline = StudentPipeline.from_pretrained(students / "decomposer", students / "solver")
        cot = CoTStudent.from_pretrained(students / "cot") if (students / "cot").is_dir() else None

        problems = generate_problems(args.problems, seed=2024)
        questions = [p.question for p in problems]
        print(f"{len(questions)} problems, {torch.get_num_threads()} torch threads", flush=True)
        pipeline.solve(questions[:2], batch_size=2)  # warm-up

        fast, fast_s = timed(lambda: pipeline.solve(questions, batch_size=args.batch_size))
        cached, cached_s = timed(lambda: pipeline.solve(questions, batch_size=1))
        naive, naive_s = timed(lambda: pipeline.solve(questions, batch_size=1, reuse_cache=False))
        same = sum(a.__dict__ == b.__dict__ == c.__dict__ for a, b, c in zip(fast, cached, naive))
        accuracy = sum(answers_match(r.answer, p.gold) for r, p in zip(fast, problems)) / len(problems)
        steps = sum(len(r.subanswers) for r in fast)

        print(f"naive loop (batch 1, context re-encoded every step): {naive_s:7.2f} s")
        print(f"batch 1, cache kept across steps:                     {cached_s:7.2f} s  ({naive_s / cached_s:.2f}x)")
        print(f"batch {args.batch_size}, cache kept across steps:                    {fast_s:7.2f} s  ({naive_s / fast_s:.2f}x)")
        print(f"identical results in all three: {same}/{len(questions)}; {steps} solver steps; pair accuracy {accuracy:.1%}")
        print(f"speed-up of the student pipeline over the naive loop: {naive_s / fast_s:.2f}x (target >= 3x)")
        if cot is not None:
            cot_fast, cot_s = timed(lambda: cot.solve(questions, batch_size=args.batch_size))
            _, cot_one_s = timed(lambda: cot.solve(questions, batch_size=1))
            cot_accuracy = sum(answers_match(r.answer, p.gold) for r, p in zip(cot_fast, problems)) / len(problems)
            print(
                f"CoT student: batch {args.batch_size} {cot_s:.2f} s, batch 1 {cot_one_s:.2f} s (accuracy {cot_accuracy:.1%}); "
                f"student pair / CoT time at batch {args.batch_size}: {fast_s / cot_s:.2f}x"
            )
            # Decoding is one forward pass per generated token, so the time ratio follows the tokens each
            # side writes: the pair writes the sub-questions as well as the steps the CoT student writes.
            count = lambda tokenizer, texts: sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
            decomposer_tokens = count(pipeline.decomposer_tokenizer, [r.decomposition for r in fast]) / len(fast)
            solver_tokens = count(pipeline.solver_tokenizer, [a for r in fast for a in r.subanswers]) / len(fast)
            cot_tokens = count(cot.tokenizer, [r.text for r in cot_fast]) / len(cot_fast)
            print(
                f"tokens written per problem: student pair {decomposer_tokens + solver_tokens:.1f} (decomposer "
                f"{decomposer_tokens:.1f} + solver {solver_tokens:.1f} in {steps / len(fast):.1f} steps), CoT student "
                f"{cot_tokens:.1f}: ratio {(decomposer_tokens + solver_tokens) / cot_tokens:.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
