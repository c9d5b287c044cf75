import dspy
import pytest
from dspy.utils.exceptions import AdapterParseError

from dd_prompting import PlainTextAdapter
from dd_prompting.signatures import Decompose, SolveWithSubquestions


@pytest.fixture
def adapter():
    return PlainTextAdapter()


def test_format_puts_demos_as_turns_and_ends_with_first_output_header(adapter):
    demo = dspy.Example(problem="Tom has 2 cats and 3 dogs. How many pets?", subquestions=["How many pets?"])
    messages = adapter.format(Decompose, [demo], {"problem": "Ann has 4 pens. How many pens?"})
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == Decompose.instructions
    assert messages[1]["content"] == "Problem: Tom has 2 cats and 3 dogs. How many pets?\nSubquestions:"
    assert messages[2]["content"] == "1. How many pets?"
    assert messages[3]["content"].endswith("Subquestions:")


def test_incomplete_demos_are_left_out(adapter):
    demo = dspy.Example(problem="Tom has 2 cats. How many?")
    assert len(adapter.format(Decompose, [demo], {"problem": "x"})) == 2


@pytest.mark.parametrize(
    "completion",
    [
        "1. How many eggs?\n2. How much money?",
        "Subquestions:\n1) How many eggs?\n2) How much money?",
        "- How many eggs?\n- How much money?",
        "How many eggs?\nHow much money?\n\nProblem: another problem",
        '["How many eggs?", "How much money?"]',
        "Q1: How many eggs?\nQ2: How much money?",
    ],
)
def test_lists_parse_leniently(adapter, completion):
    assert adapter.parse(Decompose, completion) == {"subquestions": ["How many eggs?", "How much money?"]}


def test_several_outputs_split_at_headers(adapter):
    parsed = adapter.parse(SolveWithSubquestions, "1. 9 eggs\n2. 18 dollars\nAnswer: 18")
    assert parsed == {"subanswers": ["9 eggs", "18 dollars"], "answer": "18"}


def test_missing_later_field_is_a_parse_error_naming_it(adapter):
    with pytest.raises(AdapterParseError, match="Answer"):
        adapter.parse(SolveWithSubquestions, "1. 9 eggs\n2. 18 dollars")


def test_typed_outputs_parse_numbers_with_units(adapter):
    signature = dspy.Signature("question -> answer: float")
    assert adapter.parse(signature, "$1,234.50 in total") == {"answer": 1234.5}
    with pytest.raises(AdapterParseError, match="answer"):
        adapter.parse(signature, "I cannot tell")
    assert adapter.parse(dspy.Signature("question -> count: int"), "7 apples") == {"count": 7}
    assert adapter.parse(dspy.Signature("question -> ok: bool"), "Yes.") == {"ok": True}


def test_stop_sequences_cover_new_examples_and_one_line_answers(adapter):
    signature = dspy.Signature("question, solved -> subanswer")
    assert adapter.stop_sequences(signature) == ["\nQuestion:", "\nSolved:"]
    one_line = [dspy.Example(question="q", solved="s", subanswer="It is 4.")]
    assert adapter.stop_sequences(signature, one_line) == ["\n", "\nQuestion:", "\nSolved:"]
    two_lines = [dspy.Example(question="q", solved="s", subanswer="It is 4.\nReally.")]
    assert "\n" not in adapter.stop_sequences(signature, two_lines)
