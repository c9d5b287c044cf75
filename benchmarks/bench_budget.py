"""How much of a `--max-cost` budget a run spends before the cost guard stops it, on the scripted server.

    .venv/bin/python benchmarks/bench_budget.py

The dry-run estimate assumes typical reply lengths (4 sub-questions for decomposition), so it
overshoots these problems' real cost; the guard calibrates it on the first examples. The issue asked
for at least 80% of the budget spent; before calibration the guard stopped at 26-35% on GSM8K.
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "evals"))
from scripted import ScriptedModel
from dd_prompting.testing import OpenAICompatibleServer
from dd_prompting.evals.config import EvalConfig
from dd_prompting.evals.harness import Harness
tmp = Path(tempfile.mkdtemp())
problems = [(f"p{i}", f"Ann has {i} apples and buys {i + 3} more. How many apples does she have?", 2 * i + 3) for i in range(80)]
path = tmp / "many.jsonl"
path.write_text("".join(json.dumps({"id": i, "question": q, "answer": a}) + "\n" for i, q, a in problems))
gold = {q: str(a) for _, q, a in problems}
for mode, sub in (("iterative", 2), ("joint", 3)):
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold), subquestions=sub)) as server:
        def cfg(out, **kw):
            return EvalConfig(models=[{"name": "s", "model": "openai/gpt-4o-mini", "api_base": server.base_url}],
                strategies=[{"kind": "decomposed", "mode": mode}], datasets=[{"kind": "file", "name": "many", "path": str(path), "id": "id"}],
                output_dir=str(tmp / out), threads=4, retries=0, timeout=5, progress=False, plots=False, **kw)
        full = Harness(cfg(f"full-{mode}")).run()
        for frac in (0.25, 0.5):
            budget = full.spent * frac
            [est] = Harness(cfg(f"b-{mode}-{frac}", max_cost=budget)).estimate().values()
            run = Harness(cfg(f"b-{mode}-{frac}", max_cost=budget)).run()
            print(f"{mode}: estimate/real {est.cost / full.spent:.2f}x; budget {frac:.0%} of the full run: spent/budget {run.spent / budget:.1%}")
