"""Students in process vs the same students over HTTP, and how much of the solver's prompts a server's prefix
cache serves (the paper's KV reuse, done by vLLM / SGLang's automatic prefix caching).

One run, side by side, on the same held-out problems, greedy:

- in process: `StudentPipeline.solve(batch_size=32)` (batched, each problem's key/value cache kept across steps);
- over HTTP: `ServedStudentPipeline` against `dd_prompting.testing.CompletionsModel`, the in-repo server speaking
  vLLM's `/v1/completions` fields (token-id prompts, `return_token_ids`, `stop_token_ids`, `cached_tokens` counted
  in 16-token blocks as vLLM's prefix cache does), one server per student, 32 problems in flight.

It prints problems per second for both and their ratio, how many answers are equal (all, for greedy decoding),
and per student the share of prompt tokens the server reports as cached (the goal is at least 0.5 for the solver
on the offline task). The test server decodes one request at a time where vLLM batches them, so the ratio is this
client and protocol over a non-batching server on this CPU, not vLLM's speed; the cached share is the server-side
reuse a real vLLM would report for these prompts.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_serving.py                       # runs/offline if it is there
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_serving.py --run-dir runs/offline --problems 128
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "offline",
                        help="A dd-distill run directory (default runs/offline; quick students are trained if absent).")
    parser.add_argument("--problems", type=int, default=64, help="Held-out generated problems to solve.")
    parser.add_argument("--in-flight", type=int, default=32, help="Requests open at once per server.")
    parser.add_argument("--train-steps", type=int, default=150, help="Steps per quick student (no run directory).")
    args = parser.parse_args(argv)

    import torch

    from bench_students import timed, train_quick_students
    from dd_prompting.distill.serving.served_students import ServedStudentPipeline
    from dd_prompting.distill.students.pipelines import StudentPipeline
    from dd_prompting.distill.teach.generator import generate_problems
    from dd_prompting.testing import CompletionsModel, OpenAICompatibleServer

    with tempfile.TemporaryDirectory() as scratch:
        students = args.run_dir / "students"
        if not (students / "solver").is_dir():
            print(f"{args.run_dir} has no students; training quick ones", flush=True)
            students = train_quick_students(Path(scratch), steps=args.train_steps)
        questions = [p.question for p in generate_problems(args.problems, seed=2024)]
        print(f"{len(questions)} problems, students from {students}, {torch.get_num_threads()} torch threads",
              flush=True)

        pipeline = StudentPipeline.from_pretrained(students / "decomposer", students / "solver")
        pipeline.solve(questions[:2], batch_size=2)  # warm-up
        local, local_s = timed(lambda: pipeline.solve(questions, batch_size=32))

        models = {role: CompletionsModel(students / role, name=role) for role in ("decomposer", "solver")}
        servers = {role: OpenAICompatibleServer(completions=model, models=model.models).start()
                   for role, model in models.items()}
        try:
            served_pipeline = ServedStudentPipeline.from_directories(
                students / "decomposer", students / "solver", max_in_flight=args.in_flight,
                servers={role: server.base_url for role, server in servers.items()})
            served, served_s = timed(lambda: served_pipeline.solve(questions))
        finally:
            for server in servers.values():
                server.stop()

    same = sum(a.__dict__ == b.__dict__ for a, b in zip(local, served))
    stats = served_pipeline.stats()
    print(f"in process (batch 32, cache kept):       {local_s:7.2f} s  {len(questions) / local_s:6.1f} problems/s")
    print(f"over HTTP ({args.in_flight} in flight, test server):   {served_s:7.2f} s  "
          f"{len(questions) / served_s:6.1f} problems/s  (in process / HTTP: {served_s / local_s:.2f}x)")
    print(f"identical results: {same}/{len(questions)}")
    for role, numbers in stats.items():
        share = numbers["cached_share"]
        print(f"{role}: {numbers['requests']} requests, {numbers['prompt_tokens']} prompt tokens, "
              f"{numbers['cached_tokens']} served from the prefix cache ({share:.2f} of them)")
    print(f"solver prompt tokens from the server's prefix cache: {stats['solver']['cached_share']:.2f} (goal >= 0.5)")
    return 0 if same == len(questions) else 1


if __name__ == "__main__":
    raise SystemExit(main())
