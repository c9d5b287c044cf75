"""Numeric answers for math word problems: extraction, comparison and DSPy metrics.

Two extractors run side by side, as lm-evaluation-harness does for GSM8K:

- **strict** accepts only an explicit final answer: a reply that is just a number ("$1,234.50"), or one
  marked as the answer ("The answer is 18.", "#### 18", "Answer: 18 dollars", "The total is $18").
  After such a cue comes the number, or a calculation whose result (after its last "=") is the
  answer; when a reply has several cues, the last one wins.
- **flexible** falls back to the last number anywhere in the text.

Both return a canonical string ("18", "-3.5", "0.75") or `INVALID`, a sentinel that never equals a
gold answer. Comparison is exact on rationals, so "18.00" matches "18" and "3/4" matches "0.75".
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

__all__ = [
    "INVALID",
    "extract_answer",
    "extract_gold",
    "canonical_number",
    "answers_match",
    "numeric_match",
    "numeric_match_strict",
    "read_step_result",
]

INVALID = "[invalid]"

# A number as people write it: optional sign and currency, thousands groups or plain digits,
# optional decimals, or a simple fraction. Thousands groups need exactly three digits so that
# "1, 2 and 3" stays three numbers.
_NUMBER = r"""
    (?P<sign>[-−])?\s*[$€£]?\s*
    (?:
        (?P<frac>\d+\s*/\s*\d+)
      | (?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)
    )
"""
_NUMBER_RE = re.compile(_NUMBER, re.VERBOSE)
_NUMBER_WHOLE_RE = re.compile(r"^\s*" + _NUMBER + r"\s*(?:%|[a-zA-Z$€£][\w\s.$€£/-]*)?[.!]?\s*$", re.VERBOSE)
# Where a reply says what its answer is. Only cues that state the result: "a total of 5 apples"
# names a quantity on the way, "the total is 66" the result.
_CUE_RE = re.compile(r"(?:####|answer\s*(?:is|:|=)|\btotal\s*(?:is|:|=)|\\boxed\{)\s*", re.IGNORECASE)
# A cue's clause ends at a sentence end, a comma before a word, a line end or a closing brace;
# the dot of "66.0" and the comma of "1,018" do not end it.
_CLAUSE_END_RE = re.compile(r"[.!?;](?=\s|$)|,\s|\n|\}")


def canonical_number(text: str) -> str:
    """The canonical form of one written number, or `INVALID` if `text` does not start with one.

    >>> canonical_number("$1,234.50"), canonical_number("-3/4"), canonical_number("18.00")
    ('1234.5', '-0.75', '18')
    """
    match = _NUMBER_RE.match(text.strip())
    return _canonical(match) if match else INVALID


def _canonical(match: re.Match) -> str:
    negative = match.group("sign") is not None
    if match.group("frac"):
        numerator, denominator = (int(part) for part in match.group("frac").replace(" ", "").split("/"))
        if denominator == 0:
            return INVALID
        value = Fraction(numerator, denominator)
    else:
        value = Fraction(match.group("num").replace(",", ""))
    if negative:
        value = -value
    return _format(value)


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    # Terminating decimals print exactly; others keep enough digits to compare sensibly.
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    if denominator == 1:
        text = f"{float(value):.12f}".rstrip("0").rstrip(".")
    else:
        text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text


def _last_number(text: str) -> str:
    matches = list(_NUMBER_RE.finditer(text))
    return _canonical(matches[-1]) if matches else INVALID


def _first_number(text: str) -> str:
    match = _NUMBER_RE.search(text)
    return _canonical(match) if match else INVALID


def extract_answer(text: Any, *, strict: bool = False) -> str:
    """Extract the final numeric answer from a model's output.

    Strict mode reads only an explicit answer; flexible mode also takes the last number in the text.

    >>> extract_answer("She makes 9 * 2 = $18 every day. The answer is 18.", strict=True)
    '18'
    >>> extract_answer("so 12 apples in total", strict=True), extract_answer("so 12 apples in total")
    ('[invalid]', '12')
    """
    if text is None:
        return INVALID
    if isinstance(text, bool):
        return INVALID
    if isinstance(text, (int, float)):
        return _format(Fraction(str(text)))
    text = str(text).strip()
    if not text:
        return INVALID
    whole = _NUMBER_WHOLE_RE.match(text)
    if whole:
        return _canonical(whole)
    # The last cue that is followed by a number wins: replies correct themselves, and
    # "The answer is 18. I hope the answer is right." still answers 18.
    for cue in reversed(list(_CUE_RE.finditer(text))):
        end = _CLAUSE_END_RE.search(text, cue.end())
        answer = _clause_result(text[cue.end(): end.start() if end else len(text)])
        if answer != INVALID:
            return answer
    return INVALID if strict else _last_number(text)


_RESULT_RE = re.compile(r"=\s*" + _NUMBER, re.VERBOSE)


def _clause_result(clause: str) -> str:
    # "the answer is 15 gallons * 8 pints / gallon = 120 pints": a cue followed by a calculation
    # answers with its result (the number after the last "="), not its first operand.
    results = list(_RESULT_RE.finditer(clause))
    return _canonical(results[-1]) if results else _first_number(clause)


def read_step_result(step: Any) -> str:
    """The result a step computes: the number right after its last "=" that has one, else its last number.

    The one reader of a step's answer: teacher traces are filtered with it, and the student pair's
    final answer is read with it, so both sides agree on what a step computed.

    >>> read_step_result("So there are 9 + 6 = 15 liters of water out of the 24 liters.")
    '15'
    >>> read_step_result("She uses 1/2 + 1/4 = 3/4 cup."), read_step_result("She has 12 apples left.")
    ('0.75', '12')
    >>> read_step_result("It costs 3 * $4 = $12, and x = y."), read_step_result("No idea.")
    ('12', '[invalid]')
    """
    if step is None:
        return INVALID
    text = str(step)
    results = list(_RESULT_RE.finditer(text))
    if results:
        return _canonical(results[-1])
    return extract_answer(text)


def extract_gold(solution: str) -> str:
    """The gold answer of a GSM8K solution: the number after `####`.

    >>> extract_gold("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\\n#### 1,018")
    '1018'
    """
    _, marker, rest = solution.rpartition("####")
    if not marker:
        raise ValueError(f"A GSM8K solution must end with '#### <answer>'; got: {solution[-80:]!r}")
    answer = canonical_number(rest)
    if answer == INVALID:
        raise ValueError(f"The text after '####' is not a number: {rest.strip()!r}")
    return answer


def answers_match(predicted: Any, gold: Any) -> bool:
    """True when both are numbers of equal value; `INVALID` and non-numbers never match."""
    predicted, gold = extract_answer(predicted, strict=True), extract_answer(gold, strict=True)
    if INVALID in (predicted, gold):
        return False
    return Fraction(predicted) == Fraction(gold)


def numeric_match(example, pred, trace=None) -> bool:
    """DSPy metric: flexible extraction of `pred.answer` equals `example.answer`."""
    return answers_match(extract_answer(_field(pred, "answer")), example.answer)


def numeric_match_strict(example, pred, trace=None) -> bool:
    """DSPy metric: strict extraction of `pred.answer` equals `example.answer`."""
    return answers_match(extract_answer(_field(pred, "answer"), strict=True), example.answer)


def _field(pred, name: str):
    if isinstance(pred, dict):
        return pred.get(name)
    return getattr(pred, name, None)
