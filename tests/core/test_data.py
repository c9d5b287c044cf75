import pytest

from dd_prompting import load_gsm8k, parse_socratic
from dd_prompting.answers import answers_match


def test_bundled_test_split_loads_all_problems_with_canonical_gold():
    examples = load_gsm8k("test")
    assert len(examples) == 1319
    assert set(examples[0].inputs().keys()) == {"question"}
    assert examples[0].answer == "18"
    assert all(answers_match(example.answer, example.answer) for example in examples)


def test_limit_and_train_split():
    examples = load_gsm8k("train", limit=5)
    assert len(examples) == 5
    assert examples[0].answer == "72"


def test_socratic_split_has_aligned_subquestions_and_steps():
    examples = load_gsm8k("test_socratic", limit=50)
    for example in examples:
        assert len(example.subquestions) == len(example.steps) >= 1
        assert all("<<" not in step for step in example.steps)
        assert all(subquestion.strip() for subquestion in example.subquestions)
    assert examples[0].subquestions[0] == "How many eggs does Janet sell?"


def test_parse_socratic_strips_calculator_annotations():
    parsed = parse_socratic("How many? ** She has 2 + 3 = <<2+3=5>>5 cats.\nHow much? ** 5 * 2 = <<5*2=10>>10\n#### 10")
    assert parsed.subquestions == ["How many?", "How much?"]
    assert parsed.steps == ["She has 2 + 3 = 5 cats.", "5 * 2 = 10"]
    assert parsed.answer == "10"


def test_parse_socratic_names_the_bad_line():
    with pytest.raises(ValueError, match="Line 2"):
        parse_socratic("How many? ** 5 cats.\nno separator here\n#### 5")


def test_unknown_split_and_source_are_rejected():
    with pytest.raises(ValueError, match="split"):
        load_gsm8k("dev")
    with pytest.raises(ValueError, match="source"):
        load_gsm8k("test", source="s3")


def test_hub_source_reads_through_datasets(monkeypatch):
    import datasets

    rows = [{"question": "Q1?", "answer": "a ** 1 + 1 = 2\n#### 2"}, {"question": "Q2?", "answer": "#### 3"}]
    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load_gsm8k("test_socratic", source="hub", limit=1)
    assert calls == [("openai/gsm8k", "socratic", "test")]
    assert len(examples) == 1 and examples[0].answer == "2" and examples[0].subquestions == ["a"]


def test_malformed_rows_name_where_they_are(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(
        [{"question": "Q?", "answer": "no marker"}]))
    with pytest.raises(ValueError, match=r"row 0: field 'answer'"):
        load_gsm8k("test", source="hub")


def test_gsm8k_problem_ids_name_the_split_and_socratic_shares_the_test_ids():
    from dd_prompting.data import gsm8k_problems

    test = gsm8k_problems("test", offset=10, limit=3)
    socratic = gsm8k_problems("test_socratic", offset=10, limit=3)
    assert [p.id for p in test] == [p.id for p in socratic] == ["gsm8k-test-10", "gsm8k-test-11", "gsm8k-test-12"]
    assert [p.question for p in test] == [p.question for p in socratic]  # the same problems
    assert all(p.steps and len(p.steps) == len(p.subquestions) for p in socratic)
    assert all(p.steps is None and p.solution.endswith(f"#### {p.gold}") for p in test)
    assert [p.id for p in gsm8k_problems("train", limit=2)] == ["gsm8k-train-0", "gsm8k-train-1"]


def test_problem_files_round_trip_with_their_decomposition(tmp_path):
    from dd_prompting.data import Problem, gsm8k_problems, read_problems, write_problems

    problems = [*gsm8k_problems("test_socratic", limit=2), *gsm8k_problems("train", limit=1),
                Problem("gen-0", "Ann has 2 cats and gets 3. How many?", "5", subquestions=["How many?"],
                        steps=["She has 2 + 3 = 5 cats."])]
    path = write_problems(tmp_path / "problems.jsonl", problems)
    again = read_problems(path)
    assert again[:3] == problems[:3]
    assert (again[3].subquestions, again[3].steps, again[3].gold) == (("How many?",), ("She has 2 + 3 = 5 cats.",), "5")
    assert read_problems(path, offset=1, limit=2) == again[1:3]


def test_a_bad_problem_line_names_the_file_and_line(tmp_path):
    from dd_prompting.data import MalformedLineError, read_problems

    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "Q?", "answer": "#### 3"}\n{"question": "Q2?"}\n', encoding="utf-8")
    with pytest.raises(MalformedLineError, match=r"p.jsonl:2: .*'question' and 'answer'"):
        read_problems(path)
    [problem] = read_problems(path, skip_malformed=True)
    assert problem.id == "p-1" and problem.gold == "3"


def test_yes_no_and_choice_problem_files_round_trip(tmp_path):
    from dd_prompting import AnswerType
    from dd_prompting.data import MalformedLineError, Problem, read_problems, write_problems

    yes_no = [Problem("a", "Is 8 more than 6?", "yes", subquestions=["What is 8 - 6?", "Is it above 0?"],
                      steps=["8 - 6 = 2.", "2 is more than 0, so yes."]), Problem("b", "Is 2 more than 6?", "no")]
    path = write_problems(tmp_path / "yes_no.jsonl", yes_no)
    assert read_problems(path, answer_type=AnswerType("yes_no")) == [
        Problem("a", yes_no[0].question, "yes", "What is 8 - 6? ** 8 - 6 = 2.\n"
                "Is it above 0? ** 2 is more than 0, so yes.\n#### yes", yes_no[0].subquestions, yes_no[0].steps),
        Problem("b", yes_no[1].question, "no", "#### no")]
    with pytest.raises(MalformedLineError, match=r"yes_no.jsonl:1: .*#### <one of A, B>"):
        read_problems(path, answer_type=AnswerType("choice", choices=("A", "B")))
    with pytest.raises(MalformedLineError, match=r"yes_no.jsonl:1: .*not a number"):
        read_problems(path)  # numbers, the default
