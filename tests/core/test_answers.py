import dspy
import pytest

from dd_prompting import INVALID, answers_match, canonical_number, extract_answer, extract_gold, numeric_match
from dd_prompting import numeric_match_strict
from dd_prompting.answers import read_step_result


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("18", "18", "18"),
        ("$18", "18", "18"),
        ("$1,234.50", "1234.5", "1234.5"),
        ("1,000,000", "1000000", "1000000"),
        ("-5", "-5", "-5"),
        ("−7 degrees", "-7", "-7"),
        ("3/4", "0.75", "0.75"),
        ("18.00", "18", "18"),
        ("0.5", "0.5", "0.5"),
        (".5", "0.5", "0.5"),
        ("18 dollars", "18", "18"),
        ("3.5 hours.", "3.5", "3.5"),
        ("50%", "50", "50"),
        ("The answer is 18.", "18", "18"),
        ("She makes 9 * 2 = $18 a day. The answer is $18.", "18", "18"),
        ("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 1,018", "1018", "1018"),
        ("Answer: 42 apples", "42", "42"),
        ("So the final answer is -3.25 degrees", "-3.25", "-3.25"),
        ("\\boxed{12}", "12", "12"),
        ("She has 12 + 7 = 19 apples", INVALID, "19"),
        ("1, 2 and 3", INVALID, "3"),
        ("no idea", INVALID, INVALID),
        ("", INVALID, INVALID),
        ("The answer is unknown", INVALID, INVALID),
        ("5/0", INVALID, INVALID),
        # After a cue, the result of the calculation that follows it (issue 8), not its first number.
        ("... the final answer is 15 gallons * 8 pints / gallon = 120 pints", "120", "120"),
        ("Answer: 5 + 3 = 8, so she has 8 apples", "8", "8"),
        # The last cue wins, also when two share a line.
        ("... James scored a total of 48 + 16 = 64 points. So the total is $66.0.", "66", "66"),
        ("The answer is 5. No, wait: the answer is 6.", "6", "6"),
        ("The answer is 18. I hope the answer is right.", "18", "18"),
        ("Answer:\n42", "42", "42"),
        # "a total of" is not a cue: it names a quantity on the way.
        ("She buys a total of 5 apples and eats 2, so 3 are left.", INVALID, "3"),
    ],
)
def test_extract_answer_strict_and_flexible(text, strict, flexible):
    assert extract_answer(text, strict=True) == strict
    assert extract_answer(text) == flexible


def test_extract_answer_of_non_text_values():
    assert extract_answer(None) == INVALID
    assert extract_answer(18.0) == "18"
    assert extract_answer(-2) == "-2"
    assert extract_answer(True) == INVALID


def test_extract_gold_reads_the_number_after_the_marker():
    assert extract_gold("step one\nstep two\n#### 72") == "72"
    assert extract_gold("#### -1,200.50") == "-1200.5"


@pytest.mark.parametrize("solution", ["no marker here 12", "#### many"])
def test_extract_gold_rejects_malformed_solutions(solution):
    with pytest.raises(ValueError, match="####"):
        extract_gold(solution)


def test_invalid_never_matches_anything():
    assert not answers_match(INVALID, INVALID)
    assert not answers_match(INVALID, "0")
    assert not answers_match("0", INVALID)
    assert not answers_match(None, "0")


def test_answers_match_compares_values_not_strings():
    assert answers_match("18.0", "18")
    assert answers_match("0.75", "3/4")
    assert answers_match("$1,000", "1000")
    assert not answers_match("18", "-18")
    assert not answers_match("18", "180")


def test_canonical_number_requires_a_leading_number():
    assert canonical_number(" 12 eggs") == "12"
    assert canonical_number("eggs 12") == INVALID


def test_metrics_strict_and_flexible_side_by_side():
    example = dspy.Example(question="q", answer="19")
    pred = dspy.Prediction(answer="She has 12 + 7 = 19 apples")
    assert numeric_match(example, pred)
    assert not numeric_match_strict(example, pred)
    assert numeric_match_strict(example, dspy.Prediction(answer="19 apples"))
    assert not numeric_match(example, dspy.Prediction(answer=None))


@pytest.mark.parametrize(
    "step, result",
    [
        ("So there are 9 + 6 = 15 liters out of the 24 liters.", "15"),
        ("The house is worth 120,000+80,000=$200,000", "200000"),
        ("She has 12 apples left.", "12"),
        ("It is 3 = three apples, so 4 pears.", "4"),
        ("Sam reads 60 + 24 = 84 pages in 3 days.", "84"),
        # The two readers of a step (teacher filtering, student evaluation) once disagreed here: 0.75 vs 3.
        ("1/2 + 1/4 = 3/4 cup.", "0.75"),
        ("No idea.", "[invalid]"),
    ],
)
def test_read_step_result_reads_the_computed_number(step, result):
    assert read_step_result(step) == result
