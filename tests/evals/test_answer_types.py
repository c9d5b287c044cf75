"""Yes/no and multiple-choice file datasets through the harness, against a scripted server on 127.0.0.1."""

import json

import pytest
from scripted import chat_reply, output_fields, question_of

from dd_prompting.evals.config import ConfigError, DatasetConfig, EvalConfig
from dd_prompting.evals.datasets import load_dataset
from dd_prompting.evals.harness import Harness
from dd_prompting.result_store import ResultStore, latest_rows
from dd_prompting.testing import OpenAICompatibleServer, Reply

YES_NO = [("Is 7 larger than 3?", True), ("Is the sea dry?", "no"), ("Can fish swim?", "Yes"),
          ("Is ice hot?", "false"), ("Do birds have wings?", "yes"), ("Is 2 odd?", False)]
CHOICE = [("Which is a fruit? A) rock B) apple C) chair", "B"), ("Which is wet? A) water B) sand C) dust", "A"),
          ("Which flies? A) stone B) table C) eagle", "C"), ("Which is cold? A) fire B) ice C) sun", "B")]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


class OptionModel:
    """Answers the `answer` field with `answers[question]`, and any other output field with filler."""

    def __init__(self, answers):
        self.answers = answers
        self.requests = []

    def __call__(self, request):
        self.requests.append(request)
        question = question_of(request)
        values = {}
        for name in output_fields(request):
            if name == "answer":
                values[name] = self.answers[question]
            elif name == "subquestions":
                values[name] = ["What is asked?"]
            elif name == "subanswers":
                values[name] = ["It is asked what the question says."]
            else:
                values[name] = "Let me think."
        return Reply(text=chat_reply(values))


def run(tmp_path, server, dataset, strategies):
    config = EvalConfig(
        models=[{"name": "scripted", "model": "openai/gpt-4o-mini", "api_base": server.base_url}],
        strategies=strategies, datasets=[dataset], output_dir=str(tmp_path / "out"), threads=2, retries=0,
        timeout=5, progress=False, plots=False,
    )
    summary = Harness(config).run()
    return summary, latest_rows(ResultStore(tmp_path / "out" / "results.jsonl").read())


def test_a_yes_no_dataset_is_asked_for_a_bool_and_scored_as_yes_or_no(tmp_path):
    path = write_jsonl(tmp_path / "yes_no.jsonl", [{"q": q, "a": a} for q, a in YES_NO])
    # Right on the first four questions; True/False is what a bool field holds.
    golds = [q in {"Is 7 larger than 3?", "Can fish swim?", "Do birds have wings?"} for q, _ in YES_NO]
    answers = {q: str(gold if i < 4 else not gold) for i, ((q, _), gold) in enumerate(zip(YES_NO, golds))}
    model = OptionModel(answers)
    strategies = [{"kind": "direct"}, {"kind": "cot"}, {"kind": "decomposed", "demos": "builtin"}]
    with OpenAICompatibleServer(model) as server:
        summary, rows = run(tmp_path, server, {"kind": "file", "path": str(path), "question": "q", "answer": "a",
                                               "answer_type": "yes_no"}, strategies)

    assert summary.failed == 0 and summary.parse_failures == 0
    assert {row["gold"] for row in rows} == {"yes", "no"}
    for strategy in ("direct", "cot", "decomposed-joint"):
        mine = [row for row in rows if row["strategy"] == strategy]
        assert sorted(row["question"] for row in mine if row["correct"]) == sorted(q for q, _ in YES_NO[:4])
        assert all(row["correct"] == row["correct_strict"] for row in mine)
    system = model.requests[0]["messages"][0]["content"]
    assert "answer" in system and "bool" in system  # the answer field is typed, so DSPy parses it as one
    run_record = json.loads((tmp_path / "out" / "run.json").read_text())
    decomposed = next(c for c in run_record["cells"].values() if c["strategy"] == "decomposed-joint")
    demos = decomposed["prompts"][0]["demos"]
    assert demos and "Could a person born in 1990" in demos[0]["question"]  # the yes/no worked examples


def test_a_multiple_choice_dataset_takes_its_options_from_the_gold_answers(tmp_path):
    path = write_jsonl(tmp_path / "choice.jsonl", [{"q": q, "a": a} for q, a in CHOICE])
    answers = {CHOICE[0][0]: "B", CHOICE[1][0]: "A", CHOICE[2][0]: "A", CHOICE[3][0]: "the second one"}
    model = OptionModel(answers)
    dataset = {"kind": "file", "path": str(path), "question": "q", "answer": "a", "answer_type": "choice"}
    with OpenAICompatibleServer(model) as server:
        summary, rows = run(tmp_path, server, dataset, [{"kind": "direct"}])

    assert load_dataset(DatasetConfig(**dataset)).answer_type.choices == ("B", "A", "C")
    by_question = {row["question"]: row for row in rows}
    assert [by_question[q]["correct"] for q, _ in CHOICE] == [True, True, False, False]
    # An answer outside the options does not parse into the Literal field: a parse failure, scored wrong.
    assert by_question[CHOICE[3][0]]["parse_status"] == "unparsed"
    assert summary.parse_failures == 1
    system = model.requests[0]["messages"][0]["content"]
    assert "Literal['B', 'A', 'C']" in system or "one of: B; A; C" in system


def test_a_gold_answer_that_is_not_an_option_names_its_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"q": "Is it?", "a": "yes"}, {"q": "Or not?", "a": "maybe"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: .*field 'a': 'maybe' is not yes or no"):
        load_dataset(DatasetConfig(kind="file", path=str(path), question="q", answer="a", answer_type="yes_no"))
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: .*field 'a': 'maybe' is not one of \['yes', 'no'\]"):
        load_dataset(DatasetConfig(kind="file", path=str(path), question="q", answer="a", answer_type="choice",
                                   choices=["yes", "no"]))


def test_answer_types_are_checked_against_the_rest_of_the_dataset_config(tmp_path):
    with pytest.raises(ConfigError, match="GSM8K answers are numbers"):
        DatasetConfig(kind="gsm8k", answer_type="yes_no")
    with pytest.raises(ConfigError, match="choices are for answer_type = 'choice'"):
        DatasetConfig(kind="file", path="x.jsonl", answer_type="yes_no", choices=["a", "b"])
    with pytest.raises(ConfigError, match="two or more distinct options"):
        DatasetConfig(kind="file", path="x.jsonl", answer_type="choice", choices=["a", "a"])


def test_builtin_demos_are_refused_for_options_they_do_not_cover(tmp_path):
    path = write_jsonl(tmp_path / "choice.jsonl", [{"q": q, "a": a} for q, a in CHOICE])
    config = EvalConfig(
        models=[{"name": "m", "model": "openai/gpt-4o-mini"}], strategies=[{"kind": "cot", "demos": "builtin"}],
        datasets=[{"kind": "file", "path": str(path), "question": "q", "answer": "a", "answer_type": "choice"}],
        output_dir=str(tmp_path / "out"), progress=False, plots=False,
    )
    with pytest.raises(ValueError, match="no built-in worked examples for 'choice' answers"):
        Harness(config).cells()
