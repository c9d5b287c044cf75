"""The dry-run estimate, the pilot and the budget guard: one cost model, against the test server billing o200k tokens."""

import json
import re

import pytest
import scripted
from scripted import ScriptedModel, SolutionModel

from dd_prompting.evals.budget import CostModel
from dd_prompting.evals.config import ConfigError, EvalConfig
from dd_prompting.evals.harness import Harness
from dd_prompting.result_store import ResultStore, latest_rows
from dd_prompting.testing import OpenAICompatibleServer, count_prompt_tokens, tokenizer_name

FIELDS = {"dataset", "model", "strategy", "problems", "calls", "prompt_tokens", "completion_tokens", "cost",
          "seconds", "low", "high", "basis"}
FOUR = [{"kind": "direct"}, {"kind": "cot"}, {"kind": "decomposed", "mode": "joint"},
        {"kind": "decomposed", "mode": "iterative"}]


def config_for(tmp_path, server, dataset, strategies, out="out", **options) -> EvalConfig:
    return EvalConfig(models=[{"name": "m", "model": "openai/gpt-4o-mini", "api_base": server.base_url}],
                      strategies=strategies, datasets=[dataset], output_dir=str(tmp_path / out), threads=4,
                      retries=0, timeout=10, progress=False, plots=False, **options)


def apples(problems_file):
    return {"kind": "file", "name": "apples", "path": str(problems_file), "question": ["body", "ask"], "id": "id"}


def cells_of(tmp_path, out="out"):
    record = json.loads((tmp_path / out / "estimate.json").read_text())
    return {cell["strategy"]: cell for cell in record["cells"]}


def rows_of(tmp_path, out="out"):
    return latest_rows(ResultStore(tmp_path / out / "results.jsonl").read())


@pytest.fixture(scope="module")
def gsm8k_solutions():
    return scripted.gsm8k_solutions()


def test_the_server_bills_tokens_as_the_estimate_counts_them():
    from dd_prompting.evals.estimate import count_tokens

    messages = [{"role": "system", "content": "Your input fields are:\n1. `question` (str)"},
                {"role": "user", "content": "[[ ## question ## ]]\nJanet's ducks lay 16 eggs per day. How many?"}]
    assert tokenizer_name() == "o200k_base"
    assert count_prompt_tokens(messages) == count_tokens("openai/gpt-4o-mini", messages)
    assert count_prompt_tokens(messages) < sum(len(m["content"]) for m in messages) / 2  # tokens, not characters


def test_a_dry_run_calls_nothing_and_writes_the_prior_estimate(tmp_path, problems_file, gold):
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        summary = Harness(config_for(tmp_path, server, apples(problems_file), FOUR, dry_run=True)).run()
        assert server.call_count == 0
    assert not (tmp_path / "out" / "results.jsonl").exists()
    cells = cells_of(tmp_path)
    assert set(cells) == {"direct", "cot", "decomposed-joint", "decomposed-iterative"}
    for strategy, cell in cells.items():
        assert FIELDS <= set(cell) and cell["basis"] == "prior" and cell["problems"] == 10, strategy
        assert 0 < cell["low"] < cell["cost"] < cell["high"] and cell["range_of"] == "cost"
        assert summary.estimates[f"apples | m | {strategy}"].basis_text == "prior"
    # One call per problem for a direct answer; decompose + 4 typical steps for iterative decomposition.
    assert (cells["direct"]["calls"], cells["decomposed-iterative"]["calls"]) == (10, 50)


def test_pilot_rows_are_kept_and_the_real_run_resumes_past_them(tmp_path, problems_file, gold):
    strategies = [{"kind": "cot"}, {"kind": "decomposed", "mode": "iterative"}]
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold), subquestions=2)) as server:
        pilot = Harness(config_for(tmp_path, server, apples(problems_file), strategies, dry_run=True, pilot=3)).run()
        rows = rows_of(tmp_path)
        assert pilot.pilot_rows == len(rows) == 6
        assert server.call_count == sum(row["calls"] for row in rows) == 3 * 1 + 3 * 3
        cells = cells_of(tmp_path)
        assert {cell["basis"] for cell in cells.values()} == {"pilot"} and cells["cot"]["problems"] == 7
        assert cells["cot"]["basis_text"] == "3-problem pilot"
        # The pilot saw two sub-questions per problem: the rest are estimated at decompose + 2 steps.
        assert cells["decomposed-iterative"]["calls"] == pytest.approx(7 * 3, rel=0.01)
        before = server.call_count
        run = Harness(config_for(tmp_path, server, apples(problems_file), strategies)).run()
        assert run.examples_skipped == 6 and run.rows_written == 14
        assert server.call_count - before == 7 * 1 + 7 * 3  # no pilot problem asked again
    assert len(rows_of(tmp_path)) == 20


def test_pilot_without_dry_run_is_refused():
    with pytest.raises(ConfigError, match=r"pilot \(8\) runs only with dry_run \(--dry-run --pilot 8\)"):
        EvalConfig(pilot=8)


def test_calls_another_run_paid_for_are_the_basis_and_free(tmp_path, problems_file, gold):
    cache = tmp_path / "shared-cache"
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        Harness(config_for(tmp_path, server, apples(problems_file), [{"kind": "cot"}], out="first",
                           cache_dir=str(cache), limit=4, seed=1)).run()
        calls = server.call_count
        Harness(config_for(tmp_path, server, apples(problems_file), [{"kind": "cot"}], cache_dir=str(cache),
                           dry_run=True, seed=1)).run()
        assert server.call_count == calls
    [cell] = cells_of(tmp_path).values()
    assert cell["basis"] == "cache" and cell["basis_text"] == f"from {calls} cached calls (4 problems)"
    assert cell["problems"] == 10 and cell["calls"] == 10  # 4 of them cached, so free
    first = sum(row["cost"] for row in rows_of(tmp_path, "first"))
    assert cell["cost"] == pytest.approx(first / 4 * 6, rel=0.1)  # the six new ones, at what the four took


def test_an_eight_problem_pilot_is_within_1_5x_of_the_actual_cost(tmp_path, gsm8k_solutions):
    questions = sorted(gsm8k_solutions)
    model = SolutionModel(solutions=gsm8k_solutions, unformatted=set(questions[::9]))
    dataset = {"kind": "gsm8k", "name": "gsm8k"}
    with OpenAICompatibleServer(model) as server:
        Harness(config_for(tmp_path, server, dataset, FOUR, out="actual", limit=24)).run()
        Harness(config_for(tmp_path, server, dataset, FOUR, out="pilot", limit=24, dry_run=True, pilot=8)).run()
    actual, pilot = {}, {}
    for out, totals in (("actual", actual), ("pilot", pilot)):
        for row in rows_of(tmp_path, out):
            totals[row["strategy"]] = totals.get(row["strategy"], 0.0) + row["cost"]
    for strategy, cell in cells_of(tmp_path, "pilot").items():
        assert cell["basis"] == "pilot" and cell["problems"] == 16
        estimated = pilot[strategy] + cell["cost"]
        assert 1 / 1.5 <= estimated / actual[strategy] <= 1.5, (strategy, estimated, actual[strategy])


def test_the_budget_guard_reserves_by_the_cost_model_and_never_passes_max_cost(tmp_path, problems_file, gold,
                                                                             monkeypatch):
    reserved = []
    reserve = CostModel.reserve
    monkeypatch.setattr(CostModel, "reserve", lambda self, prediction: reserved.append(
        (self.calibrated, reserve(self, prediction))) or reserved[-1][1])
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold), subquestions=3)) as server:
        full = Harness(config_for(tmp_path, server, apples(problems_file), FOUR[2:], out="full")).run()
        assert not reserved  # no budget, no reservation
        budget = full.spent / 2
        pilot = Harness(config_for(tmp_path, server, apples(problems_file), FOUR[2:], dry_run=True, pilot=2,
                                   max_cost=budget)).run()
        stopped = Harness(config_for(tmp_path, server, apples(problems_file), FOUR[2:], max_cost=budget)).run()
    # The pilot's examples counted against the budget the first time, and the guard learnt from its rows.
    assert len(reserved) >= 4 + stopped.rows_written and 0 < pilot.spent <= budget
    assert stopped.stopped.startswith("budget") and stopped.spent <= budget
    assert any(calibrated for calibrated, _ in reserved[4:])


def test_the_cli_prints_each_cell_with_its_basis_and_range(tmp_path, problems_file, gold, capsys):
    from test_resume import write_config

    from dd_prompting.evals.cli import main

    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        config = write_config(tmp_path / "c.toml", server.base_url, problems_file, tmp_path / "out")
        assert main(["run", str(config), "--dry-run", "--no-progress"]) == 0
        prior = capsys.readouterr().out
        assert server.call_count == 0
        assert main(["run", str(config), "--dry-run", "--pilot", "2", "--no-progress"]) == 0
        piloted = capsys.readouterr().out
        assert server.call_count == 2
        assert main(["run", str(config), "--pilot", "2", "--no-progress"]) == 1
    assert "80% range" in prior and "No model was called" in prior
    [line] = [line for line in prior.splitlines() if line.startswith("apples | scripted | direct")]
    assert line.endswith("  prior") and " 10 " in line and re.search(r" \$0\.\d{4}-\$0\.\d{4} ", line)
    assert piloted.startswith("Pilot: 2 examples run for real, $0.0")
    [line] = [line for line in piloted.splitlines() if line.startswith("apples | scripted | direct")]
    assert line.endswith("2-problem pilot") and "No model was called" not in piloted
    assert "runs only with dry_run" in capsys.readouterr().err
