"""Hybrid pairs in the harness: the sub-questions from one model (or a dd-distill decomposer student), the
solution from another; each side's calls go to its own server and are priced at its own rates."""

import json

import pytest
from scripted import ScriptedModel, output_fields

from dd_prompting.evals.config import ConfigError, EvalConfig
from dd_prompting.evals.harness import Harness
from dd_prompting.result_store import ResultStore, latest_rows
from dd_prompting.testing import OpenAICompatibleServer

SMALL_PRICE, BIG_PRICE = 0.1, 10.0  # USD per million tokens, in and out


def dataset(problems_file):
    return {"kind": "file", "name": "apples", "path": str(problems_file), "question": ["body", "ask"], "id": "id"}


def config_for(tmp_path, problems_file, models, strategies, **overrides):
    options = dict(models=models, strategies=strategies, datasets=[dataset(problems_file)], limit=4,
                   output_dir=str(tmp_path / "out"), threads=2, retries=0, timeout=5, progress=False, plots=False)
    options.update(overrides)
    return EvalConfig(**options)


def api_model(name, server, price):
    return {"name": name, "model": "openai/scripted", "api_base": server.base_url,
            "input_cost_per_million": price, "output_cost_per_million": price}


def asked_for(server, field):
    return [r for r in server.requests if field in output_fields(r)]


def test_a_hybrid_sends_decomposition_to_one_model_and_solving_to_the_other(tmp_path, problems_file, gold):
    small_model = ScriptedModel(gold=gold, right=set(), subquestions=3)
    big_model = ScriptedModel(gold=gold, right=set(gold), subquestions=2)
    with OpenAICompatibleServer(small_model) as small, OpenAICompatibleServer(big_model) as big:
        models = [api_model("small", small, SMALL_PRICE), api_model("big", big, BIG_PRICE)]
        strategies = [{"kind": "decomposed"}, {"kind": "decomposed", "decomposer": "small"}]
        config = config_for(tmp_path, problems_file, models, strategies, only_models="big")
        estimate = Harness(config).estimate()
        summary = Harness(config).run()
        rows = latest_rows(ResultStore(tmp_path / "out" / "results.jsonl").read())
        hybrid = [row for row in rows if row["strategy"] == "decomposed-joint+small"]
        plain = [row for row in rows if row["strategy"] == "decomposed-joint"]

        assert summary.failed == 0 and len(hybrid) == len(plain) == 4
        # Only the small model is asked for sub-questions in the hybrid, and it solves nothing.
        assert len(asked_for(small, "subquestions")) == 4 and not asked_for(small, "subanswers")
        assert len(asked_for(big, "subquestions")) == 4 and len(asked_for(big, "subanswers")) == 8
        assert all(len(row["subquestions"]) == 3 for row in hybrid)  # the small model's three
        assert all(len(row["subquestions"]) == 2 for row in plain)
        assert all(row["correct"] for row in hybrid + plain)  # the big model solved them all
        # Each call is priced as its own model: the hybrid's decomposition costs a hundredth.
        assert sum(r["cost"] for r in hybrid) < sum(r["cost"] for r in plain)
        labels = {label.split(" | ")[-1]: value for label, value in estimate.items()}
        assert labels["decomposed-joint+small"].cost < labels["decomposed-joint"].cost
        record = json.loads((tmp_path / "out" / "run.json").read_text())
        assert set(record["models"]) == {"big", "small"}  # the decomposer is recorded though only "big" solves

        calls = small.call_count + big.call_count
        (tmp_path / "out" / "results.jsonl").unlink()
        again = Harness(config).run()
        assert again.new_calls == 0 and small.call_count + big.call_count == calls


def test_a_distilled_decomposer_student_writes_the_sub_questions(tmp_path, problems_file, gold, student_run_dir):
    from dd_prompting.distill.students.pipelines import DecomposerStudent
    from dd_prompting.evals.datasets import load_dataset
    from dd_prompting.evals.config import DatasetConfig

    big_model = ScriptedModel(gold=gold, right=set(gold))
    with OpenAICompatibleServer(big_model) as big:
        models = [{"name": "student", "kind": "student", "model": "tiny-pair", "run_dir": str(student_run_dir)},
                  api_model("big", big, BIG_PRICE)]
        config = config_for(tmp_path, problems_file, models, [{"kind": "decomposed", "decomposer": "student"}])
        Harness(config).run()
    rows = latest_rows(ResultStore(tmp_path / "out" / "results.jsonl").read())
    hybrid = {row["question"]: row for row in rows if row["strategy"] == "decomposed-joint+student"}
    assert {row["strategy"] for row in rows} == {"decomposed-joint+student", "student"}  # the pair runs too

    student = DecomposerStudent.from_pretrained(student_run_dir / "students" / "decomposer")
    problems = load_dataset(DatasetConfig(**dataset(problems_file)), limit=4).problems
    expected = dict(zip([p.question for p in problems], student.subquestions([p.question for p in problems])))
    assert len(hybrid) == 4 and not asked_for(big, "subquestions") and any(expected.values())
    for question, row in hybrid.items():
        if expected[question]:
            assert row["subquestions"] == expected[question] and row["fallback"] is None
        else:  # the untrained student wrote nothing readable: answered directly, as DecomposedSolver does
            assert row["fallback"] == "empty decomposition"


def test_a_hybrid_names_a_configured_model(tmp_path, problems_file):
    with pytest.raises(ConfigError, match="decomposer 'tiny' is not one of the models"):
        config_for(tmp_path, problems_file, [{"name": "big", "model": "openai/gpt-4o-mini"}],
                   [{"kind": "decomposed", "decomposer": "tiny"}])
    with pytest.raises(ConfigError, match="decomposer is for kind = 'decomposed'"):
        config_for(tmp_path, problems_file, [{"name": "big", "model": "openai/gpt-4o-mini"}],
                   [{"kind": "cot", "decomposer": "big"}])
