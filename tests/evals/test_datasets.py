import json

import pytest

from dd_prompting.evals.config import DatasetConfig
from dd_prompting.evals.datasets import load_dataset, load_demo_pool, select_problems


def file_config(path, **options):
    return DatasetConfig(kind="file", path=str(path), **options)


def test_a_question_is_built_from_several_fields(problems_file):
    dataset = load_dataset(file_config(problems_file, question=["body", "ask"], id="id"))
    first = dataset.problems[0]
    assert first.id == "q0"
    assert first.question == "Ann has 10 apples and buys 1 more. How many apples does she have?"
    assert first.gold == "11" and dataset.total == 10


def test_a_question_template(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"Body": "Tom has 3 cars.", "Question": "How many?", "Answer": 3.0}) + "\n")
    [problem] = load_dataset(file_config(path, question_template="{Body} Question: {Question}",
                                         answer="Answer")).problems
    assert problem.question == "Tom has 3 cars. Question: How many?"
    assert problem.gold == "3" and problem.id == "line-1"


def test_csv_and_json_lists_read_like_jsonl(tmp_path):
    (tmp_path / "d.csv").write_text('id,text,answer\na,"Sam has 1,200 coins. How many?","1,200"\nb,How much?,$4.50\n')
    (tmp_path / "d.json").write_text('[\n  {"id": "a", "text": "Sam has 1,200 coins. How many?", "answer": "1,200"},'
                                     '\n  {"id": "b", "text": "How much?", "answer": "$4.50"}\n]\n')
    from_csv = load_dataset(file_config(tmp_path / "d.csv", question="text", id="id")).problems
    from_json = load_dataset(file_config(tmp_path / "d.json", question="text", id="id")).problems
    assert from_csv == from_json
    assert [p.gold for p in from_csv] == ["1200", "4.5"]


def test_gsm8k_style_answers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "answer": "Two and two make <<2+2=4>>4.\n#### 4"}) + "\n")
    [problem] = load_dataset(file_config(path, answer_format="gsm8k")).problems
    assert problem.gold == "4" and problem.solution == "Two and two make 4."


@pytest.mark.parametrize("name, text, message", [
    ("d.jsonl", '{"question": "a?", "answer": 1}\n{"question": "b?"}\n', r"d.jsonl:2: .*field 'answer' is missing"),
    ("d.jsonl", '{"question": "a?", "answer": 1}\n\n{"question": "b?", "answer": "ten"}\n',
     r"d.jsonl:3: .*field 'answer': 'ten' is not a number"),
    ("d.jsonl", '{"question": "a?", "answer": 1}\n{"question": "b?", "answer": 2\n', r"d.jsonl:2: .*invalid JSON"),
    ("d.jsonl", '{"question": "", "answer": 1}\n', r"d.jsonl:1: .*field 'question' is empty"),
    ("d.jsonl", '["a?", 1]\n', r"d.jsonl:1: .*expected a JSON object"),
    ("d.jsonl", '{"question": "a?", "answer": "3 or 4"}\n', r"d.jsonl:1: .*field 'answer': '3 or 4' is not a number"),
    ("d.csv", "question,answer\na?,1\nb?,2,3\n", r"d.csv:3: .*the row has 3 fields, the header has 2"),
    ("d.csv", "question,answer\na?,1\nb?\n", r"d.csv:3: .*the row has 1 fields, the header has 2"),
    ("d.json", '[\n {"question": "a?", "answer": 1},\n {"question": "b?"}\n]', r"d.json:3: .*field 'answer' is missing"),
    ("d.json", '[\n {"question": "a?", "answer": 1}\n {"question": "b?", "answer": 2}\n]',
     r"d.json:3: expected ',' or '\]'"),
    ("d.json", '{"question": "a?", "answer": 1}', r"d.json:1: a .json dataset must be a list"),
    ("d.txt", "question,answer\n", r"unknown dataset format 'txt'"),
])
def test_bad_rows_name_the_file_line_and_field(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_dataset(file_config(path))


def test_repeated_ids_name_both_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": "q?", "answer": 1}) + "\n" for i in (1, 2, 1)))
    with pytest.raises(ValueError, match=r"d.jsonl:3: .*field 'id': id '1' repeats line 1"):
        load_dataset(file_config(path, id="id"))


def test_a_template_naming_a_missing_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"Body": "x", "answer": 1}) + "\n")
    with pytest.raises(ValueError, match=r"d.jsonl:1: .*field 'Question' is missing"):
        load_dataset(file_config(path, question_template="{Body} {Question}"))


def test_limit_samples_with_the_seed_and_keeps_file_order(problems_file):
    config = file_config(problems_file, question=["body", "ask"], id="id")
    first = [p.id for p in load_dataset(config, limit=4, seed=1).problems]
    again = [p.id for p in load_dataset(config, limit=4, seed=1).problems]
    other = [p.id for p in load_dataset(config, limit=4, seed=2).problems]
    assert first == again and first != other
    assert len(first) == 4 and first == sorted(first, key=lambda i: int(i[1:]))
    assert len(select_problems(list(range(3)), limit=10, seed=0)) == 3


def test_bundled_gsm8k_and_its_hashes():
    dataset = load_dataset(DatasetConfig(kind="gsm8k", split="test"), limit=5, seed=0)
    assert dataset.total == 1319 and len(dataset.problems) == 5
    assert all(p.id.startswith("gsm8k-test-") and p.gold for p in dataset.problems)
    other = load_dataset(DatasetConfig(kind="gsm8k", split="test"), limit=5, seed=1)
    assert dataset.sha256 == other.sha256 and dataset.selection_sha256 != other.selection_sha256


def test_socratic_demo_pool_leaves_out_evaluated_problems():
    dataset = load_dataset(DatasetConfig(kind="gsm8k"), limit=50, seed=0)
    evaluated = {p.id for p in dataset.problems}
    pool, source = load_demo_pool(DatasetConfig(kind="gsm8k"), socratic=True, exclude=evaluated)
    assert len(pool) == 1319 - 50 and "test_socratic" in source
    assert not {p.question for p in pool} & {p.question for p in dataset.problems}
    assert all(p.subquestions and len(p.subquestions) == len(p.steps) for p in pool)


def test_file_demos_need_a_demos_path(problems_file):
    with pytest.raises(ValueError, match="demos_path"):
        load_demo_pool(file_config(problems_file), socratic=False, exclude=set())
    with pytest.raises(ValueError, match="Socratic"):
        load_demo_pool(file_config(problems_file), socratic=True, exclude=set())


def test_a_csv_saved_by_excel_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "svamp.csv"
    path.write_bytes("Body,Question,Answer\nTom has 3 cars.,How many?,3\n".encode("utf-8-sig"))
    [problem] = load_dataset(file_config(path, question=["Body", "Question"], answer="Answer")).problems
    assert problem.question == "Tom has 3 cars. How many?" and problem.gold == "3"


_LATIN1 = {  # a good first row, then a row in Latin-1, as an old spreadsheet export writes it
    "d.jsonl": b'{"question": "a?", "answer": 1}\n{"question": "caf\xe9?", "answer": 2}\n',
    "d.csv": b"question,answer\na?,1\ncaf\xe9?,2\n",
    "d.json": b'[\n{"question": "a?", "answer": 1},\n{"question": "caf\xe9?", "answer": 2}\n]\n',
}


@pytest.mark.parametrize("name, line", [("d.jsonl", 2), ("d.csv", 3), ("d.json", 3)])
def test_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path, name, line):
    path = tmp_path / name
    path.write_bytes(_LATIN1[name])
    with pytest.raises(ValueError, match=rf"{name}:{line}: .*not UTF-8 text \(byte 0xe9 at column \d+\)"):
        load_dataset(file_config(path))
