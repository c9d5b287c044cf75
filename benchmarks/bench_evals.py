"""Eval-harness speed against a local OpenAI-compatible server that answers after a fixed delay.

Measured side by side in one run, on the same program (`dspy.Predict(SolveProblem)`), the same
problems, threads and server:

1. the harness's throughput as a share of the ideal, calls x delay / threads (claim: >= 80%);
2. `dspy.Evaluate` with the same threads (claim: the harness matches or beats it, while it also caches
   every call, appends a row per example and writes a report);
3. a warm rerun (claim: no calls, >= 20x faster than the cold run), two ways: the same command again
   (finished rows are skipped), and with results.jsonl deleted, so every program runs again and every
   call comes from the on-disk cache.

    python benchmarks/bench_evals.py                       # 160 problems, 0.1 s per call, 8 threads
    python benchmarks/bench_evals.py --examples 320 --threads 16 --delay 0.2

The rows-deleted rerun still runs every DSPy program (adapter formatting and parsing, and DSPy's LM
layer on every cached call: about 0.8 ms a call here), so its ratio grows with the server's delay:
measured on this 2-core machine (2026-12-06), 15-19x at 0.1 s a call and 157x at 1 s, a typical API
latency; the plain rerun (rows done) 330-540x and 4025x. Side by side with dd-prompting 0.1.0 at
0.1 s a call: throughput 94-95% vs 96% of ideal; rows-deleted rerun 15-19x vs 31x, as a cached call
now passes through `dspy.LM` (request canonicalisation, history) where 0.1.0's CachedLM bypassed it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _responder(delay: float, gold: dict[str, str]):
    from dd_prompting.testing import Reply, last_user_text

    def respond(request):
        text = last_user_text(request)
        question = text.split("[[ ## question ## ]]\n", 1)[-1].split("\n\n", 1)[0].strip()
        return Reply(text=f"[[ ## answer ## ]]\n{gold.get(question, '0')}\n\n[[ ## completed ## ]]", delay=delay)

    return respond


def _config(output_dir: Path, base_url: str, *, threads: int, limit: int):
    from dd_prompting.evals.config import EvalConfig

    return EvalConfig(
        models=[{"name": "scripted", "model": "openai/gpt-4o-mini", "api_base": base_url}],
        strategies=[{"kind": "direct"}],
        datasets=[{"kind": "gsm8k", "split": "test"}],
        limit=limit, seed=0, threads=threads, output_dir=str(output_dir), progress=False, plots=False,
        retries=0, timeout=30,
    )


def _run_dspy_evaluate(base_url: str, problems, threads: int) -> tuple[float, float]:
    import dspy

    from dd_prompting import numeric_match
    from dd_prompting.evals.strategies import SolveProblem

    lm = dspy.LM("openai/gpt-4o-mini", api_base=base_url, api_key="EMPTY", cache=False, num_retries=0,
                 temperature=0.0, max_tokens=1024)
    devset = [dspy.Example(question=p.question, answer=p.gold).with_inputs("question") for p in problems]
    evaluate = dspy.Evaluate(devset=devset, metric=numeric_match, num_threads=threads, display_progress=False)
    with dspy.context(lm=lm):
        started = time.perf_counter()
        result = evaluate(dspy.Predict(SolveProblem))
        return time.perf_counter() - started, result.score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=160, help="GSM8K test problems (one call each).")
    parser.add_argument("--threads", type=int, default=8, help="Concurrent examples, for both harnesses.")
    parser.add_argument("--delay", type=float, default=0.1, help="Seconds the server takes per call.")
    parser.add_argument("--repeats", type=int, default=3, help="Alternating repeats; medians are reported.")
    args = parser.parse_args(argv)

    from dd_prompting.testing import OpenAICompatibleServer
    from dd_prompting.evals.config import DatasetConfig

    from dd_prompting.evals.datasets import load_dataset
    from dd_prompting.evals.harness import Harness

    problems = load_dataset(DatasetConfig(kind="gsm8k"), limit=args.examples, seed=0).problems
    gold = {p.question: p.gold for p in problems}
    ideal = args.examples * args.delay / args.threads
    work = Path(tempfile.mkdtemp(prefix="bench-evals-"))
    times: dict[str, list[float]] = {"cold": [], "evaluate": [], "resumed": [], "warm": []}
    calls: dict[str, list[int]] = {key: [] for key in times}
    try:
        with OpenAICompatibleServer(_responder(args.delay, gold)) as server:
            # Warm up imports (litellm's price map, dspy's adapters) and connections for both contenders.
            Harness(_config(work / "warmup", server.base_url, threads=args.threads, limit=8)).run()
            _run_dspy_evaluate(server.base_url, problems[:8], args.threads)

            def timed_run(config) -> tuple[float, int, float]:
                # Like dspy.Evaluate, which is handed a loaded devset, the clock starts once the harness
                # has loaded its dataset and built its programs (timed separately as "planning").
                started = time.perf_counter()
                harness = Harness(config)
                harness.cells()
                planned = time.perf_counter()
                before = server.call_count
                harness.run()
                return time.perf_counter() - planned, server.call_count - before, planned - started

            for repeat in range(args.repeats):  # alternate the contenders, so load from elsewhere hits both
                before = server.call_count
                seconds, _ = _run_dspy_evaluate(server.base_url, problems, args.threads)
                times["evaluate"].append(seconds)
                calls["evaluate"].append(server.call_count - before)
                config = _config(work / f"run{repeat}", server.base_url, threads=args.threads, limit=args.examples)
                for key in ("cold", "resumed", "warm"):
                    if key == "warm":
                        (work / f"run{repeat}" / "results.jsonl").unlink()
                    seconds, count, planning_s = timed_run(config)
                    times[key].append(seconds)
                    calls[key].append(count)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"{args.examples} problems x 1 call, server delay {args.delay:.3f} s, {args.threads} threads; "
          f"ideal {ideal:.2f} s ({args.examples / ideal:.1f} calls/s); {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f}; median of {args.repeats} alternating repeats")
    print(f"harness planning (load the dataset, sample, build programs), not in the times below: {planning_s:.2f} s")
    print(f"{'':46} {'wall s':>8} {'calls':>6} {'calls/s':>8} {'of ideal':>9}   all runs (s)")
    labels = {"cold": "harness, cold cache",
              "evaluate": "dspy.Evaluate, same program/threads/server",
              "resumed": "harness rerun, rows done (resume)",
              "warm": "harness rerun, rows deleted (call cache)"}
    for key, label in labels.items():
        seconds, count = median[key], max(calls[key])
        rate = f"{count / seconds:8.1f}" if count else f"{'-':>8}"
        share = f"{ideal / seconds:9.0%}" if count else f"{'-':>9}"
        runs = " ".join(f"{value:.2f}" for value in times[key])
        print(f"{label:46} {seconds:8.2f} {count:6d} {rate} {share}   {runs}")
    print()
    efficiency = ideal / median["cold"]
    versus = median["evaluate"] / median["cold"]
    print(f"harness throughput / ideal:           {efficiency:6.0%}  (claim >= 80%: {'met' if efficiency >= 0.8 else 'NOT met'})")
    print(f"harness speed / dspy.Evaluate speed:  {versus:6.2f}x (claim: beat it, or match it (>= 0.95x) while also "
          f"caching, writing rows and a report: {'met' if versus >= 0.95 else 'NOT met'})")
    for key in ("resumed", "warm"):
        ratio = median["cold"] / median[key]
        ok = ratio >= 20 and max(calls[key]) == 0
        print(f"cold / {labels[key].split(', ', 1)[1] + ':':<27} {ratio:6.1f}x, {max(calls[key])} calls (claim >= 20x "
              f"and no calls: {'met' if ok else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
