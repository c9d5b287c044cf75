"""How close the dry-run estimate comes to what a run really costs, from the prior and from an 8-problem pilot.

    .venv/bin/python benchmarks/bench_estimate.py            # 200 problems per strategy and dataset
    .venv/bin/python benchmarks/bench_estimate.py --problems 40 --pilot 8 --show   # and the dry runs' tables

Against the in-repo test server, which bills in o200k tokens as OpenAI counts them, with a scripted
gpt-4o-mini (priced by litellm's map) whose replies are real solutions: GSM8K's Socratic sub-questions
and steps (the bundled test split), and the built-in generator's decompositions; chain of thought
writes the steps as its reasoning. One problem in 20 first answers without field headers, so
DSPy's ChatAdapter falls back to JSON (one call more). For each dataset and strategy it runs every
problem for real (the actual cost), estimates with `--dry-run` alone (the prior) and with
`--dry-run --pilot 8` (the pilot's own cost plus its estimate of the rest), each in its own output
directory and cache, and prints estimated / actual.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "evals"))

from scripted import SolutionModel, gsm8k_solutions  # noqa: E402

from dd_prompting.evals.cli import print_estimate  # noqa: E402
from dd_prompting.evals.config import EvalConfig  # noqa: E402
from dd_prompting.evals.harness import Harness  # noqa: E402
from dd_prompting.result_store import ResultStore, latest_rows  # noqa: E402
from dd_prompting.testing import OpenAICompatibleServer, tokenizer_name  # noqa: E402

STRATEGIES = [{"kind": "direct"}, {"kind": "cot"}, {"kind": "decomposed", "mode": "joint"},
              {"kind": "decomposed", "mode": "iterative"}]


def generator_dataset(directory: Path, count: int) -> tuple[Path, dict[str, tuple[list[str], list[str], str]]]:
    from dd_prompting.distill.teach.generator import generate_problems

    traces = generate_problems(count, seed=0)
    path = directory / "generated.jsonl"
    path.write_text("".join(json.dumps({"id": trace.id, "question": trace.question, "answer": trace.gold}) + "\n"
                            for trace in traces))
    return path, {trace.question: (trace.subquestions, trace.subanswers, trace.gold) for trace in traces}


def cost_by_strategy(output_dir: Path) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    path = output_dir / "results.jsonl"
    if path.exists():
        for row in latest_rows(ResultStore(path).read()):
            totals[row["strategy"]] += row["cost"] or 0.0
    return totals


def measure(name: str, dataset: dict, solutions: dict, directory: Path, *, problems: int, pilot: int,
            show: bool) -> list[tuple]:
    unformatted = {question for index, question in enumerate(sorted(solutions)) if index % 20 == 7}
    with OpenAICompatibleServer(SolutionModel(solutions=solutions, unformatted=unformatted)) as server:
        def config(out: str, **options) -> EvalConfig:
            return EvalConfig(models=[{"name": "gpt-4o-mini", "model": "openai/gpt-4o-mini",
                                       "api_base": server.base_url}],
                              strategies=STRATEGIES, datasets=[dataset], limit=problems,
                              output_dir=str(directory / f"{name}-{out}"), threads=8, retries=0, timeout=30,
                              progress=False, plots=False, **options)

        started = time.perf_counter()
        Harness(config("actual")).run()
        actual = cost_by_strategy(directory / f"{name}-actual")
        prior = {e.strategy: e for e in Harness(config("prior", dry_run=True)).estimate().values()}
        piloted = Harness(config("pilot", dry_run=True, pilot=pilot)).run()
        pilot_spent = cost_by_strategy(directory / f"{name}-pilot")
        seconds = time.perf_counter() - started
    if show:
        print(f"$ dd-evals run <{name} config> --dry-run --pilot {pilot}")
        print_estimate(piloted.estimates, max_cost=None, pilot_rows=piloted.pilot_rows, spent=piloted.spent,
                       output_dir=str(directory / f"{name}-pilot"))
        print()
    lines = []
    for strategy, real in actual.items():
        after = piloted.estimates[f"{dataset['name']} | gpt-4o-mini | {strategy}"]
        with_pilot = pilot_spent[strategy] + after.cost
        low, high = pilot_spent[strategy] + after.low, pilot_spent[strategy] + after.high
        lines.append((name, strategy, real, prior[strategy].cost, with_pilot, low, high))
    print(f"({name}: {problems} problems x {len(STRATEGIES)} strategies run, estimated twice, in {seconds:.0f} s)",
          file=sys.stderr)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=200, help="Problems per dataset (default 200).")
    parser.add_argument("--pilot", type=int, default=8, help="Pilot problems per cell (default 8).")
    parser.add_argument("--show", action="store_true", help="Print each pilot dry run as dd-evals prints it.")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="bench_estimate_"))
    generated, generated_solutions = generator_dataset(directory, args.problems)
    rows = measure("gsm8k", {"kind": "gsm8k", "name": "gsm8k"}, gsm8k_solutions(), directory,
                   problems=args.problems, pilot=args.pilot, show=args.show)
    rows += measure("generator", {"kind": "file", "name": "generator", "path": str(generated), "id": "id"},
                    generated_solutions, directory, problems=args.problems, pilot=args.pilot, show=args.show)
    print(f"Estimated / actual cost, {args.problems} problems per strategy, scripted gpt-4o-mini billed in "
          f"{tokenizer_name()} tokens; pilot: {args.pilot} problems per cell (its cost + its estimate of the rest)")
    print(f"{'dataset':<10} {'strategy':<22} {'actual':>9} {'prior':>9} {'ratio':>6} {'pilot':>9} {'ratio':>6}  "
          "80% range / actual")
    for name, strategy, real, prior, with_pilot, low, high in rows:
        print(f"{name:<10} {strategy:<22} ${real:>8.4f} ${prior:>8.4f} {prior / real:>5.2f}x ${with_pilot:>8.4f} "
              f"{with_pilot / real:>5.2f}x  {low / real:.2f}-{high / real:.2f}")
    worst = max(max(estimate / real, real / estimate) for _, _, real, _, estimate, _, _ in rows)
    print(f"Worst pilot estimate: {worst:.2f}x off (goal: within 1.5x).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
