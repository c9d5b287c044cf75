"""The harness end to end against a scripted OpenAI-compatible server on 127.0.0.1 (no network, no keys)."""

import csv
from pathlib import Path
import json

import pytest
from scripted import ScriptedModel

from dd_prompting.testing import OpenAICompatibleServer, Reply
from dd_prompting.evals.config import EvalConfig
from dd_prompting.evals.harness import Harness
from dd_prompting.result_store import ResultStore, latest_rows

ALL_STRATEGIES = [
    {"kind": "direct"},
    {"kind": "direct", "name": "direct-builtin", "demos": "builtin"},
    {"kind": "cot"},
    {"kind": "cot", "name": "cot-builtin", "demos": "builtin"},
    {"kind": "decomposed", "mode": "joint"},
    {"kind": "decomposed", "mode": "iterative"},
    {"kind": "decomposed", "name": "decomposed-joint-builtin", "mode": "joint", "demos": "builtin"},
]


def make_config(tmp_path, server, problems_file, strategies, **overrides) -> EvalConfig:
    options = dict(
        models=[{"name": "scripted", "model": "openai/gpt-4o-mini", "api_base": server.base_url}],
        strategies=strategies,
        datasets=[{"kind": "file", "name": "apples", "path": str(problems_file), "question": ["body", "ask"],
                   "answer": "answer", "id": "id"}],
        output_dir=str(tmp_path / "out"), threads=4, retries=2, retry_backoff=0.01, timeout=5,
        progress=False, plots=False,
    )
    options.update(overrides)
    return EvalConfig(**options)


def rows_of(tmp_path):
    return latest_rows(ResultStore(tmp_path / "out" / "results.jsonl").read())


def test_accuracy_is_exactly_the_scripted_subset_for_every_strategy(tmp_path, problems_file, gold):
    questions = list(gold)
    right = {questions[i] for i in (0, 2, 3, 7)}
    model = ScriptedModel(gold=gold, right=right)
    with OpenAICompatibleServer(model) as server:
        summary = Harness(make_config(tmp_path, server, problems_file, ALL_STRATEGIES)).run()

    rows = rows_of(tmp_path)
    assert summary.failed == 0 and summary.parse_failures == 0
    assert len(rows) == len(ALL_STRATEGIES) * len(questions)
    for strategy in {row["strategy"] for row in rows}:
        mine = [row for row in rows if row["strategy"] == strategy]
        assert {row["question"] for row in mine if row["correct"]} == right, strategy
    with open(tmp_path / "out" / "summary.csv") as handle:
        accuracies = {row["strategy"]: float(row["accuracy"]) for row in csv.DictReader(handle)}
    assert accuracies == {s.get("name") or (f"decomposed-{s['mode']}" if s["kind"] == "decomposed" else s["kind"]):
                          0.4 for s in ALL_STRATEGIES}


def test_rows_carry_subquestions_tokens_cost_and_calls(tmp_path, problems_file, gold):
    model = ScriptedModel(gold=gold, right=set(gold), subquestions=3)
    strategies = [{"kind": "decomposed", "mode": "iterative"}, {"kind": "decomposed", "mode": "joint"}]
    with OpenAICompatibleServer(model) as server:
        Harness(make_config(tmp_path, server, problems_file, strategies)).run()
    rows = {(row["strategy"], row["example_id"]): row for row in rows_of(tmp_path)}
    iterative, joint = rows[("decomposed-iterative", "q0")], rows[("decomposed-joint", "q0")]
    assert iterative["subquestions"] == ["What is step 1?", "What is step 2?", "What is step 3?"]
    assert iterative["calls"] == 4 and joint["calls"] == 2  # decompose + one call per step / + one solve
    assert len(iterative["raw_outputs"]) == 4 and "[[ ## subquestions ## ]]" in iterative["raw_outputs"][0]
    assert iterative["prompt_tokens"] > 0 and iterative["completion_tokens"] > 0
    # gpt-4o-mini's price in litellm's map: $0.15 / $0.60 per million tokens
    expected = (iterative["prompt_tokens"] * 0.15 + iterative["completion_tokens"] * 0.60) / 1e6
    assert iterative["cost"] == pytest.approx(expected)
    assert iterative["fallback"] is None and iterative["error"] is None


def test_strict_and_flexible_extraction_are_reported_side_by_side(tmp_path, problems_file, gold):
    questions = list(gold)
    wordy = {q: "She has {} apples in total" for q in questions[:3]}  # flexible reads it, strict does not
    model = ScriptedModel(gold=gold, right=set(questions[:5]), wording=wordy)
    with OpenAICompatibleServer(model) as server:
        Harness(make_config(tmp_path, server, problems_file, [{"kind": "cot"}])).run()
    rows = rows_of(tmp_path)
    assert sum(row["correct"] for row in rows) == 5
    assert sum(row["correct_strict"] for row in rows) == 2
    with open(tmp_path / "out" / "summary.csv") as handle:
        [summary] = list(csv.DictReader(handle))
    assert float(summary["accuracy"]) == 0.5 and float(summary["accuracy_strict"]) == 0.2


@pytest.mark.parametrize("strategy", [{"kind": "direct"}, {"kind": "cot"}, {"kind": "decomposed", "mode": "joint"},
                                      {"kind": "decomposed", "mode": "iterative"}])
def test_unparsable_output_is_a_parse_failure_scored_wrong(tmp_path, problems_file, gold, strategy):
    questions = list(gold)
    model = ScriptedModel(gold=gold, right=set(gold), garbage=set(questions[:3]))
    with OpenAICompatibleServer(model) as server:
        summary = Harness(make_config(tmp_path, server, problems_file, [strategy])).run()
    rows = {row["question"]: row for row in rows_of(tmp_path)}
    assert summary.failed == 0 and summary.parse_failures == 3
    for question in questions[:3]:
        assert rows[question]["parse_status"] == "unparsed" and not rows[question]["correct"]
        assert rows[question]["raw_outputs"], "the unparsable reply is kept"
    assert sum(row["correct"] for row in rows.values()) == 7


def test_rate_limits_and_server_errors_are_retried(tmp_path, problems_file, gold):
    questions = list(gold)
    faults = {questions[0]: [Reply(status=429, text="rate limited")],
              questions[1]: [Reply(status=500), Reply(status=503)],
              questions[2]: [Reply(status=429), Reply(status=429)]}
    model = ScriptedModel(gold=gold, right=set(gold), faults=faults)
    with OpenAICompatibleServer(model) as server:
        summary = Harness(make_config(tmp_path, server, problems_file, [{"kind": "direct"}], retries=2)).run()
        assert server.call_count == 10 + 5
    rows = {row["question"]: row for row in rows_of(tmp_path)}
    assert summary.failed == 0 and all(row["correct"] for row in rows.values())
    assert [rows[q]["retries"] for q in questions[:3]] == [1, 2, 2]


@pytest.mark.parametrize("fault", [
    Reply(status=500, text="internal error"),
    Reply(status=429, text="rate limited"),
    Reply(raw_body=b"this is not json"),
    Reply(text="[[ ## answer ## ]]\n1", delay=2.0),  # slower than the 0.5 s time-out
])
def test_persistent_faults_are_recorded_per_example_and_the_run_finishes(tmp_path, problems_file, gold, fault):
    questions = list(gold)
    faults = {q: [fault] * 3 for q in questions[:2]}  # more than the 1 retry allowed
    model = ScriptedModel(gold=gold, right=set(gold), faults=faults)
    with OpenAICompatibleServer(model) as server:
        config = make_config(tmp_path, server, problems_file, [{"kind": "direct"}], retries=1, timeout=0.5)
        summary = Harness(config).run()
    rows = {row["question"]: row for row in rows_of(tmp_path)}
    assert summary.failed == 2 and len(rows) == 10
    for question in questions[:2]:
        assert rows[question]["error"] and rows[question]["parse_status"] == "error" and not rows[question]["correct"]
    assert all(rows[q]["correct"] and rows[q]["error"] is None for q in questions[2:])
    report = (tmp_path / "out" / "summary.md").read_text()
    assert "**2 example(s) failed**" in report and "## Failures" in report


def test_a_rerun_retries_failed_rows_and_skips_finished_ones(tmp_path, problems_file, gold):
    questions = list(gold)
    model = ScriptedModel(gold=gold, right=set(gold), faults={questions[4]: [Reply(status=500)] * 2})
    with OpenAICompatibleServer(model) as server:
        config = make_config(tmp_path, server, problems_file, [{"kind": "cot"}], retries=1)
        assert Harness(config).run().failed == 1
        first = server.call_count
        summary = Harness(config).run()
        assert server.call_count == first + 1  # only the failed example is asked again
    assert summary.failed == 0 and summary.rows_written == 1 and summary.examples_skipped == 9
    assert all(row["correct"] for row in rows_of(tmp_path))


def test_a_warm_cache_rerun_makes_no_calls_and_reproduces_the_rows(tmp_path, problems_file, gold):
    model = ScriptedModel(gold=gold, right=set(list(gold)[:6]))
    strategies = [{"kind": "direct"}, {"kind": "decomposed", "mode": "iterative"}]
    with OpenAICompatibleServer(model) as server:
        Harness(make_config(tmp_path, server, problems_file, strategies)).run()
        cold = server.call_count
        (tmp_path / "out" / "results.jsonl").unlink()  # forget the rows; the call cache stays
        summary = Harness(make_config(tmp_path, server, problems_file, strategies)).run()
        assert server.call_count == cold
    assert summary.new_calls == 0 and summary.cached_calls == cold and summary.spent == 0
    rows = rows_of(tmp_path)
    assert sum(row["correct"] for row in rows) == 12
    assert all(row["cached_calls"] == row["calls"] and row["cost"] > 0 for row in rows)


def test_cost_guard_stops_before_the_budget_and_a_rerun_continues(tmp_path, problems_file, gold):
    model = ScriptedModel(gold=gold, right=set(gold))
    with OpenAICompatibleServer(model) as server:
        full = Harness(make_config(tmp_path, server, problems_file, [{"kind": "cot"}], threads=2,
                                   output_dir=str(tmp_path / "full"))).run()
        before = server.call_count
        config = make_config(tmp_path, server, problems_file, [{"kind": "cot"}], threads=2)
        budget = 0.4 * full.spent  # room for about four of the ten examples
        config.max_cost = budget
        stopped = Harness(config).run()
        assert stopped.stopped and stopped.stopped.startswith("budget")
        assert 0 < stopped.spent <= budget
        assert 1 <= stopped.rows_written < 10
        assert server.call_count - before == stopped.rows_written  # nothing started that it could not pay for
        run = json.loads((tmp_path / "out" / "run.json").read_text())
        assert run["last_run"]["stopped"].startswith("budget")
        assert "Stopped early: budget" in (tmp_path / "out" / "summary.md").read_text()
        config.max_cost = None
        resumed = Harness(config).run()
        assert server.call_count - before == 10  # nothing paid twice
    assert resumed.stopped is None and resumed.rows_written == 10 - stopped.rows_written
    assert json.loads((tmp_path / "out" / "run.json").read_text())["last_run"]["stopped"] is None


def test_cost_guard_needs_known_prices(tmp_path, problems_file, gold):
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set())) as server:
        config = make_config(tmp_path, server, problems_file, [{"kind": "direct"}], max_cost=1.0)
        config.models[0].model = "openai/some-unpriced-model"
        with pytest.raises(ValueError, match="input_cost_per_million"):
            Harness(config).run()
        assert server.call_count == 0


@pytest.mark.parametrize("strategy", [{"kind": "direct"}, {"kind": "cot", "demos": "builtin"},
                                      {"kind": "decomposed", "mode": "joint"},
                                      {"kind": "decomposed", "mode": "iterative"}])
def test_dry_run_calls_nothing_and_predicts_the_calls(tmp_path, problems_file, gold, strategy):
    from dd_prompting.evals.estimate import TYPICAL_LIST_LENGTH

    model = ScriptedModel(gold=gold, right=set(gold), subquestions=TYPICAL_LIST_LENGTH)
    with OpenAICompatibleServer(model) as server:
        config = make_config(tmp_path, server, problems_file, [strategy])
        [estimate] = Harness(config).estimate().values()
        assert server.call_count == 0
        summary = Harness(config).run()
        assert estimate.calls == server.call_count == summary.new_calls
        [after] = Harness(config).estimate().values()
    assert estimate.examples == 10 and estimate.cost > 0 and estimate.prompt_tokens > 0
    assert after.examples == 0 and after.calls == 0  # nothing left to do
    (tmp_path / "out" / "results.jsonl").unlink()
    [cached] = Harness(config).estimate().values()
    assert cached.calls == cached.cached_calls == estimate.calls and cached.cost == 0


def test_no_api_key_reaches_rows_reports_or_the_cache(tmp_path, problems_file, gold, monkeypatch):
    secret = "sk-test-abcdefghijklmnop1234"
    monkeypatch.setenv("SCRIPTED_API_KEY", secret)
    questions = list(gold)
    leaky = Reply(status=401, text=f"Incorrect API key provided: {secret}")  # some providers echo the key
    model = ScriptedModel(gold=gold, right=set(gold), faults={questions[0]: [leaky]})
    with OpenAICompatibleServer(model) as server:
        config = make_config(tmp_path, server, problems_file, [{"kind": "direct"}], plots=True)
        config.models[0].api_key_env = "SCRIPTED_API_KEY"
        summary = Harness(config).run()
        seen = [request for request in server.requests]
    assert summary.failed == 1 and len(seen) == 10
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert "***" in json.dumps(rows_of(tmp_path))


def test_report_files_and_the_paired_test(tmp_path, problems_file, gold):
    questions = list(gold)
    model = ScriptedModel(gold=gold, right=set(questions[:2]),
                          right_by_outputs={("reasoning", "answer"): set(questions[:9])})
    with OpenAICompatibleServer(model) as server:
        config = make_config(tmp_path, server, problems_file, [{"kind": "direct"}, {"kind": "cot"}], plots=True)
        summary = Harness(config).run()
    out = tmp_path / "out"
    assert {"summary.md", "summary.csv", "paired.csv", "accuracy.png", "accuracy_vs_cost.png", "run.json",
            "results.jsonl"} <= {path.name for path in out.iterdir()}
    for png in ("accuracy.png", "accuracy_vs_cost.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "paired.csv") as handle:
        [paired] = list(csv.DictReader(handle))
    # cot right on 9, direct on 2 (a subset): 7 discordant pairs, all for cot: p = 2 / 2**7
    assert (paired["strategy_a"], paired["strategy_b"]) == ("cot", "direct")
    assert (int(paired["only_a"]), int(paired["only_b"])) == (7, 0)
    assert float(paired["p_value"]) == pytest.approx(2 / 2 ** 7)
    markdown = (out / "summary.md").read_text()
    assert "| apples | scripted | cot | 10 | 90.0% [59.6%, 98.2%]" in markdown
    assert summary.report_files[0].endswith("summary.md")


def test_run_json_records_versions_prompts_seeds_and_dataset_hashes(tmp_path, problems_file, gold):
    import hashlib

    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        config = make_config(tmp_path, server, problems_file, [{"kind": "cot", "demos": "builtin"}], seed=7)
        Harness(config).run()
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["seed"] == 7 and run["versions"]["dspy"] and run["versions"]["python"]
    assert run["datasets"]["apples"]["sha256"] == hashlib.sha256(problems_file.read_bytes()).hexdigest()
    assert run["models"]["scripted"]["model"] == "openai/gpt-4o-mini"
    [cell] = run["cells"].values()
    [predictor] = cell["prompts"]
    assert predictor["instructions"].startswith("Solve the math word problem")
    assert set(predictor["outputs"]) == {"reasoning", "answer"} and len(predictor["demos"]) == 4
    assert cell["demo_source"] == "dd_prompting.demos.WORKED_EXAMPLES"


def test_gsm8k_with_few_shot_demos_from_the_train_and_socratic_splits(tmp_path):
    from dd_prompting.evals.datasets import load_dataset
    from dd_prompting.evals.config import DatasetConfig

    problems = load_dataset(DatasetConfig(kind="gsm8k"), limit=4, seed=3).problems
    gold = {p.question: p.gold for p in problems}
    strategies = [{"kind": "cot", "demos": 2}, {"kind": "decomposed", "mode": "joint", "demos": 2}]
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(list(gold)[:3]))) as server:
        config = make_config(tmp_path, server, None, strategies, datasets=[{"kind": "gsm8k"}], limit=4, seed=3)
        Harness(config).run()
        prompts = [request["messages"] for request in server.requests]
    rows = rows_of(tmp_path)
    assert {row["example_id"] for row in rows} == {p.id for p in problems}
    assert sum(row["correct"] for row in rows) == 6
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    sources = {cell["strategy"]: cell["demo_source"] for cell in run["cells"].values()}
    assert sources == {"cot": "GSM8K train split",
                       "decomposed-joint": "GSM8K test_socratic rows that are not evaluated in this run"}
    demo_questions = {demo["question"] for cell in run["cells"].values() for p in cell["prompts"]
                      for demo in p["demos"]}
    assert demo_questions and not demo_questions & set(gold)  # no evaluated problem is its own demo
    assert all(len(messages) >= 5 for messages in prompts)  # system + two demo turns + the question


def test_the_cost_guard_spends_most_of_the_budget_once_it_has_seen_real_costs(tmp_path):
    """The estimate assumes 4 sub-questions; these problems take 2. The guard used to stop after a quarter."""
    problems = [(f"p{i}", f"Ann has {i} apples and buys {i + 3} more. How many apples does she have?", 2 * i + 3)
                for i in range(40)]
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": q, "answer": a}) + "\n" for i, q, a in problems))
    gold = {question: str(answer) for _, question, answer in problems}
    model = ScriptedModel(gold=gold, right=set(gold), subquestions=2)
    dataset = [{"kind": "file", "name": "many", "path": str(path), "id": "id"}]
    strategy = [{"kind": "decomposed", "mode": "iterative"}]
    with OpenAICompatibleServer(model) as server:
        full = Harness(make_config(tmp_path, server, path, strategy, datasets=dataset, threads=4,
                                   output_dir=str(tmp_path / "full"))).run()
        budget = full.spent / 2
        config = make_config(tmp_path, server, path, strategy, datasets=dataset, threads=4, max_cost=budget,
                             output_dir=str(tmp_path / "budgeted"))
        [estimate] = Harness(config).estimate().values()
        assert estimate.cost > 1.5 * full.spent  # the structural estimate is well off for these problems
        stopped = Harness(config).run()
        [left] = Harness(config).estimate().values()
    assert stopped.stopped.startswith("budget")
    assert 0.8 * budget <= stopped.spent <= budget
    # What is left is now estimated from what the finished examples cost, not from the typical lengths.
    remaining = full.spent * left.examples / 40
    assert 0.75 * remaining <= left.cost <= 1.35 * remaining


def test_two_endpoints_of_one_model_string_are_two_rows_each_with_its_own_server(tmp_path, problems_file, gold):
    """Two vLLM deployments serving one model string: each is asked and each gets its own rows.

    Before the endpoint and the name were part of the cell and the cache key, the second server got no request
    and the report showed one row, under the second name, with the first server's accuracy.
    """
    questions = list(gold)
    good = ScriptedModel(gold=gold, right=set(questions))
    poor = ScriptedModel(gold=gold, right=set(questions[:3]))
    with OpenAICompatibleServer(good) as first, OpenAICompatibleServer(poor) as second:
        host = second.base_url.split("://", 1)[1]
        models = [{"name": "full", "model": "openai/served", "api_base": first.base_url},
                  # credentials in the URL, as some proxies need: they must reach no file
                  {"name": "quantised", "model": "openai/served", "api_base": f"http://bob:pw-7781x@{host}"}]
        config = make_config(tmp_path, first, problems_file, [{"kind": "direct"}], models=models)
        Harness(config).run()
        assert first.call_count == 10 and second.call_count == 10
    accuracy = {}
    for row in rows_of(tmp_path):
        accuracy.setdefault(row["model"], []).append(row["correct"])
    assert {name: sum(values) for name, values in accuracy.items()} == {"full": 10, "quantised": 3}
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert b"pw-7781x" not in path.read_bytes(), path


def test_models_without_a_price_get_accuracy_against_tokens_and_seconds(tmp_path, problems_file, gold):
    with OpenAICompatibleServer(ScriptedModel(gold=gold, right=set(gold))) as server:
        config = make_config(tmp_path, server, problems_file, [{"kind": "direct"}], plots=True)
        config.models[0].input_cost_per_million = config.models[0].output_cost_per_million = 0.0
        summary = Harness(config).run()
    names = {Path(path).name for path in summary.report_files}
    assert {"accuracy_vs_tokens.png", "accuracy_vs_seconds.png", "accuracy_vs_cost.png"} <= names
    report = (tmp_path / "out" / "summary.md").read_text()
    assert "## Compute" in report and "over the problems none of whose calls came from the cache" in report
