"""The students' text formats: prompts, rows, parsing, files."""

import json

import pytest

from dd_prompting.answers import extract_answer
from dd_prompting.distill.rows.build import build_rows, cot_row, decomposer_row, packed_solver_row, solver_rows
from dd_prompting.distill.rows.format import (
    load_rows,
    parse_cot,
    parse_subanswer,
    parse_subquestions,
    read_rows,
    row_text,
    solver_prompt,
    write_rows,
)
from dd_prompting.distill.teach.traces import Trace

TRACE = Trace(
    id="t1",
    question="Sam reads 10 pages on Monday.\nOn Tuesday he reads 5 times as many. How many pages in all?",
    gold="60",
    subquestions=["How many pages on Tuesday?", "How many pages in all?"],
    subanswers=["Sam reads 10 * 5 = 50 pages on Tuesday.", "Sam reads 10 + 50 = 60 pages in all."],
    answer="60",
    correct=True,
    teacher="generator",
)


def test_decomposer_row_parses_back_to_the_subquestions():
    row = decomposer_row(TRACE)
    assert row["prompt"].endswith("Sub-questions:\n")
    assert "\n" not in row["prompt"].split("\n")[0][len("Problem: ") :]  # the question is on one line
    assert parse_subquestions(row["completion"]) == TRACE.subquestions


def test_parse_subquestions_stops_at_a_blank_line_and_at_a_new_problem():
    assert parse_subquestions("- A?\n- B?\n\n- C?") == ["A?", "B?"]
    assert parse_subquestions("- A?\nProblem: next one") == ["A?"]
    assert parse_subquestions("\n\n") == []


def test_step_rows_and_the_packed_row_give_each_answer_the_same_context():
    steps = solver_rows(TRACE)
    packed = packed_solver_row(TRACE)
    assert len(steps) == len(packed["prompt"]) == len(packed["completion"]) == 2
    text = ""
    for k, step in enumerate(steps):
        text += packed["prompt"][k]
        assert step["prompt"] == text
        assert step["completion"] == packed["completion"][k]
        text += packed["completion"][k]
    assert row_text(packed) == text


def test_solver_prompt_is_what_the_pipeline_builds_step_by_step():
    prompt = solver_prompt(TRACE.question, TRACE.subquestions, TRACE.subanswers[:1])
    assert prompt == solver_rows(TRACE)[1]["prompt"]
    with pytest.raises(ValueError, match="one more sub-question"):
        solver_prompt(TRACE.question, TRACE.subquestions, TRACE.subanswers)


def test_cot_row_parses_back_to_steps_and_answer():
    row = cot_row(TRACE)
    steps, answer_text = parse_cot(row["completion"])
    assert steps == TRACE.subanswers
    assert extract_answer(answer_text, strict=True) == "60"


def test_parse_subanswer_keeps_the_first_line():
    assert parse_subanswer(" 3 + 4 = 7 apples.\nQ: more") == "3 + 4 = 7 apples."


def test_build_rows_packed_and_unpacked():
    other = Trace(**{**TRACE.to_dict(), "id": "t2"})
    packed = build_rows([TRACE, other])
    steps = build_rows([TRACE, other], packed_solver=False)
    assert {role: len(rows) for role, rows in packed.items()} == {"decomposer": 2, "solver": 2, "cot": 2}
    assert len(steps["solver"]) == 4
    assert build_rows([TRACE.to_dict()]) == build_rows([TRACE])  # dicts work as well as Trace objects


def test_build_rows_names_a_trace_without_matching_steps():
    broken = {**TRACE.to_dict(), "id": "bad-7", "subanswers": ["only one"]}
    with pytest.raises(ValueError, match="bad-7"):
        build_rows([broken])


def test_write_then_load_rows_with_datasets(tmp_path):
    rows = build_rows([TRACE])
    paths = write_rows(rows, tmp_path)
    assert sorted(paths) == ["cot", "decomposer", "solver"]
    dataset = load_rows(paths["solver"])
    assert dataset.num_rows == 1
    assert dataset[0]["completion"] == rows["solver"][0]["completion"]
    assert read_rows(paths["decomposer"]) == rows["decomposer"]


@pytest.mark.parametrize(
    "line, reason",
    [("{not json", "invalid JSON"), (json.dumps({"prompt": "p"}), "'completion'"),
     (json.dumps({"prompt": ["a"], "completion": "b"}), "both strings")],
)
def test_malformed_row_names_file_and_line(tmp_path, line, reason):
    path = tmp_path / "solver.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"solver.jsonl:2: .*{reason}"):
        read_rows(path)
