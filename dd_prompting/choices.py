"""Answers from a set of options (yes/no, multiple choice, labels): extraction and DSPy metrics.

The same two readers as for numbers (`dd_prompting.answers`):

- **strict** accepts a reply that is just one option ("Yes.", "(B)", "positive") or that marks one
  after an answer cue ("So the answer is no."); the last cue that names an option wins;
- **flexible** falls back to the last option named anywhere in the reply.

Both return the option as it was given (`"B"`, `"positive"`), `"yes"`/`"no"` for yes/no questions
(`True`, "true" and "false" count), or `INVALID`, which never matches a gold answer.

>>> extract_choice("Let me think. The answer is (b).", ["A", "B", "C"])
'B'
>>> extract_yes_no("Aristotle died in 322 BC, long before laptops. So no.")
'no'
>>> extract_yes_no("Aristotle died in 322 BC, long before laptops. So no.", strict=True)
'[invalid]'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from dd_prompting.answers import _CLAUSE_END_RE, _CUE_RE, INVALID, _field

__all__ = ["match_option", "extract_choice", "extract_yes_no", "choice_metric", "yes_no_match", "yes_no_match_strict"]

YES_NO = ("yes", "no")
_SYNONYMS = {"true": "yes", "false": "no"}
_EDGES = " \t\n.!?,;:\"'()[]*`"


def match_option(text: Any, choices: Sequence[str]) -> str:
    """The option `text` is, whole (case, brackets and end punctuation aside), or `INVALID`.

    For reading a dataset's gold answers, which are the option itself, never a sentence naming one.

    >>> match_option("(b)", ["A", "B"]), match_option(True, ["yes", "no"]), match_option("B or C", ["B", "C"])
    ('B', 'yes', '[invalid]')
    """
    text, by_key = _prepare(text, choices)
    return by_key.get(_key(text), INVALID)


def extract_choice(text: Any, choices: Sequence[str], *, strict: bool = False) -> str:
    """The option `text` answers with (as spelled in `choices`), or `INVALID`."""
    text, by_key = _prepare(text, choices)
    whole = by_key.get(_key(text))
    if whole is not None:
        return whole
    for cue in reversed(list(_CUE_RE.finditer(text))):
        end = _CLAUSE_END_RE.search(text, cue.end())
        named = _named(text[cue.end(): end.start() if end else len(text)], by_key, any_case=True)
        if named:
            return named[0]
    if strict:
        return INVALID
    named = _named(text, by_key)
    return named[-1] if named else INVALID


def extract_yes_no(text: Any, *, strict: bool = False) -> str:
    """`"yes"`, `"no"` or `INVALID` (True/False and "true"/"false" count as yes/no)."""
    return extract_choice(text, YES_NO, strict=strict)


def choice_metric(choices: Sequence[str], *, strict: bool = False, field: str = "answer") -> Callable[..., bool]:
    """A DSPy metric: the option `pred.<field>` answers with is the option `example.<field>` gives."""

    def metric(example, pred, trace=None) -> bool:
        gold = extract_choice(_field(example, field), choices, strict=True)
        return gold != INVALID and extract_choice(_field(pred, field), choices, strict=strict) == gold

    metric.__name__ = f"choice_match{'_strict' if strict else ''}"
    return metric


yes_no_match = choice_metric(YES_NO)
yes_no_match.__doc__ = "DSPy metric: flexible yes/no extraction of `pred.answer` equals `example.answer` (bool or text)."
yes_no_match_strict = choice_metric(YES_NO, strict=True)
yes_no_match_strict.__doc__ = "DSPy metric: strict yes/no extraction of `pred.answer` equals `example.answer`."


def _prepare(text: Any, choices: Sequence[str]) -> tuple[str, dict[str, str]]:
    """`text` as a string (a bool as yes/no), and each option by its lookup key (with true/false for yes/no)."""
    if not choices:
        raise ValueError("at least one option is needed")
    if isinstance(text, bool) and {c.lower() for c in choices} >= set(YES_NO):
        text = "yes" if text else "no"
    by_key = {_key(option): option for option in choices}
    if set(by_key) >= set(YES_NO):
        by_key.update({synonym: by_key[meaning] for synonym, meaning in _SYNONYMS.items()})
    return ("" if text is None else str(text)), by_key


def _key(text: str) -> str:
    return str(text).strip(_EDGES).lower()


def _named(text: str, by_key: dict[str, str], *, any_case: bool = False) -> list[str]:
    """The options named in `text`, in order, as whole words ("no" is not found in "know").

    Away from an answer cue a one-letter option counts only in its own case, so the article "a"
    does not name option "A"; right after a cue ("the answer is (c)") any case does.
    """
    pattern = "|".join(re.escape(key) for key in sorted(by_key, key=len, reverse=True) if key)
    found = []
    for match in re.finditer(rf"(?<!\w)(?:{pattern})(?!\w)", text, re.IGNORECASE):
        option = by_key[match.group(0).lower()]
        if any_case or len(option) > 1 or match.group(0) == option:
            found.append(option)
    return found
