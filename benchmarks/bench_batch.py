"""Synchronous calls vs the Batch API (`batch = true`), one dd-evals run each, side by side (issue 27).

Both runs evaluate the same GSM8K test problems with chain of thought and joint and iterative decomposition on
the in-repo test server (`dd_prompting.testing`), which answers like a teacher that knows the gold answer: two
sub-questions, their answers, the answer. The model is priced as `openai/gpt-4o-mini` (litellm's prices; its
batch prices are half). The batched run's server answers a batch within a few polls 0.01 s apart; a provider
takes minutes to hours, so its wall time is reported without that wait.

It prints, per run: rows, rows equal to the other run's (answer, correctness, sub-questions), calls sent (HTTP
calls, or batch lines), batches and passes, cost, and wall time; then the cost ratio (batched / synchronous).

    python benchmarks/bench_batch.py                # 100 problems
    python benchmarks/bench_batch.py --problems 300
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAME = ("cell", "example_id", "prediction", "correct", "subquestions", "subanswers", "reasoning", "error")


def teacher():
    """A server reply for each request: sub-questions, or sub-answers and the gold answer, in DSPy's chat format."""
    from dd_prompting import load_gsm8k
    from dd_prompting.testing import chat_reply, last_user_text, output_fields

    # The run draws its problems from the whole split (with its seed): know them all.
    gold = {example.question.strip(): example.answer for example in load_gsm8k("test")}

    def respond(request):
        text = last_user_text(request)  # a question may hold blank lines: find it whole
        answer = next(answer for question, answer in gold.items() if question in text)
        values = {}
        for name in output_fields(request):
            values[name] = {"subquestions": ["What do we know?", "What is asked?"],
                            "subanswers": ["We read the problem.", f"The answer is {answer}."],
                            "answer": answer}.get(name, f"We work it out: the answer is {answer}.")
        return chat_reply(values)

    return respond


def config_text(server_url: str, output_dir: Path, problems: int, batch: bool) -> str:
    return f"""
output_dir = "{output_dir}"
threads = 8
limit = {problems}

[[models]]
name = "teacher"
model = "openai/gpt-4o-mini"
api_base = "{server_url}"
batch = {str(batch).lower()}
batch_poll_seconds = 0.01

[[strategies]]
kind = "cot"

[[strategies]]
kind = "decomposed"
mode = "joint"

[[strategies]]
kind = "decomposed"
mode = "iterative"

[[datasets]]
kind = "gsm8k"
split = "test"
"""


def one_run(server, root: Path, problems: int, batch: bool) -> dict:
    from dd_prompting.evals.config import load_config
    from dd_prompting.evals.harness import Harness
    from dd_prompting.result_store import ResultStore, latest_rows

    name = "batched" if batch else "synchronous"
    path = root / f"{name}.toml"
    path.write_text(config_text(server.base_url, root / name, problems, batch))
    calls, lines = server.call_count, len(server.batches.lines)
    started = time.perf_counter()
    harness = Harness(load_config(path, overrides={"progress": False}))
    summary = harness.run()
    wall = time.perf_counter() - started
    rows = latest_rows(ResultStore(root / name / "results.jsonl").read())
    rounds = harness._batches.get("teacher")
    return {
        "name": name, "rows": {(row["cell"], row["example_id"]): row for row in rows}, "cost": summary.spent,
        "http_calls": server.call_count - calls, "lines": len(server.batches.lines) - lines,
        "batches": len(rounds.batches) if rounds else 0, "passes": rounds.passes if rounds else 1,
        "wall": wall - (rounds.waited_s if rounds else 0.0), "waited": rounds.waited_s if rounds else 0.0,
        "correct": sum(bool(row["correct"]) for row in rows),
    }


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=100, help="GSM8K test problems per strategy.")
    args = parser.parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from dd_prompting.testing import OpenAICompatibleServer

    with tempfile.TemporaryDirectory() as tmp, OpenAICompatibleServer(teacher()) as server:
        runs = [one_run(server, Path(tmp), args.problems, batch) for batch in (False, True)]
    sync, batched = runs
    equal = sum(json.dumps({k: row.get(k) for k in SAME}, sort_keys=True) ==
                json.dumps({k: batched["rows"].get(key, {}).get(k) for k in SAME}, sort_keys=True)
                for key, row in sync["rows"].items())
    print(f"{args.problems} GSM8K test problems x 3 strategies (cot, joint, iterative), openai/gpt-4o-mini prices, "
          "in-repo test server\n")
    print("| run | rows | equal rows | correct | HTTP calls | batch lines | batches | passes | cost (USD) | "
          "wall s (without the batch wait) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['name']} | {len(run['rows'])} | {equal} | {run['correct']} | {run['http_calls']} | "
              f"{run['lines']} | {run['batches']} | {run['passes']} | {run['cost']:.4f} | {run['wall']:.1f} |")
    ratio = batched["cost"] / sync["cost"] if sync["cost"] else float("nan")
    print(f"\ncost batched / synchronous: {ratio:.3f}; the batched run waited {batched['waited']:.1f} s on the test "
          "server's scripted batch statuses (a provider: up to 24 h a round)")
    return 0 if equal == len(sync["rows"]) == len(batched["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
