import dspy
import pytest

from dd_prompting import INVALID
from dd_prompting.choices import choice_metric, extract_choice, extract_yes_no, yes_no_match, yes_no_match_strict

# (reply, strict reading, flexible reading)
YES_NO_CASES = [
    ("Yes.", "yes", "yes"),
    ("no", "no", "no"),
    (True, "yes", "yes"),
    (False, "no", "no"),
    ("False", "no", "no"),
    ("So the answer is no.", "no", "no"),
    ("Answer: Yes, because laptops did not exist.", "yes", "yes"),
    ("The answer is yes. Wait, no: the answer is no.", "no", "no"),
    ("Aristotle died in 322 BC, long before laptops. So no.", INVALID, "no"),
    ("I know it is not known.", INVALID, INVALID),      # "no" inside "know"/"not" is not an answer
    ("", INVALID, INVALID),
    (None, INVALID, INVALID),
]

CHOICE_CASES = [
    ("(B)", "B", "B"),
    ("The answer is (c).", "C", "C"),
    ("I think a cat would pick option B.", INVALID, "B"),   # the article "a" is not option A
    ("Answer: Positive", "positive", "positive"),
    ("mostly negative, overall", INVALID, "negative"),
]


@pytest.mark.parametrize("reply, strict, flexible", YES_NO_CASES)
def test_yes_no_strict_and_flexible(reply, strict, flexible):
    assert extract_yes_no(reply, strict=True) == strict
    assert extract_yes_no(reply) == flexible


@pytest.mark.parametrize("reply, strict, flexible", CHOICE_CASES)
def test_one_of_a_set_strict_and_flexible(reply, strict, flexible):
    choices = ["positive", "negative", "neutral"] if "itive" in str(reply) or "negative" in str(reply) else ["A", "B", "C"]
    assert extract_choice(reply, choices, strict=True) == strict
    assert extract_choice(reply, choices) == flexible


def test_metrics_compare_the_option_and_never_match_an_unreadable_reply():
    example = dspy.Example(question="Did Aristotle use a laptop?", answer=False)
    assert yes_no_match(example, dspy.Prediction(answer="So no."))
    assert not yes_no_match_strict(example, dspy.Prediction(answer="So no."))
    assert yes_no_match_strict(example, dspy.Prediction(answer=False))
    assert not yes_no_match(example, dspy.Prediction(answer="yes"))
    assert not yes_no_match(dspy.Example(answer="maybe"), dspy.Prediction(answer="maybe"))  # an unreadable gold
    label = choice_metric(["positive", "negative"])
    assert label(dspy.Example(answer="negative"), {"answer": "It reads as Negative."})
    with pytest.raises(ValueError, match="at least one option"):
        extract_choice("x", [])
