"""Training rows from teacher traces: one decomposer row, solver rows (packed or one per step) and a CoT row
per trace, in the format of `dd_prompting.distill.rows.format`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from dd_prompting.distill.rows.format import (
    ROLES,
    cot_completion,
    cot_prompt,
    decomposer_completion,
    decomposer_prompt,
    solver_answer,
    solver_prompt,
    solver_question,
    solver_start,
)

__all__ = ["decomposer_row", "solver_rows", "packed_solver_row", "cot_row", "build_rows"]

logger = logging.getLogger(__name__)



def _field(trace: Any, name: str) -> Any:
    if isinstance(trace, Mapping):
        if name not in trace:
            raise KeyError(f"Trace {trace.get('id', '?')!r} has no field {name!r}.")
        return trace[name]
    return getattr(trace, name)



def _steps(trace: Any) -> tuple[str, list[str], list[str]]:
    question = _field(trace, "question")
    subquestions = list(_field(trace, "subquestions"))
    subanswers = list(_field(trace, "subanswers"))
    if not subquestions or len(subquestions) != len(subanswers):
        raise ValueError(
            f"Trace {_field(trace, 'id')!r} needs as many sub-answers as sub-questions (at least one); "
            f"got {len(subquestions)} sub-questions and {len(subanswers)} sub-answers."
        )
    return question, subquestions, subanswers



def decomposer_row(trace: Any) -> dict[str, str]:
    """One decomposer row from a trace (anything with `question` and `subquestions`)."""
    question, subquestions, _ = _steps(trace)
    return {"prompt": decomposer_prompt(question), "completion": decomposer_completion(subquestions)}



def solver_rows(trace: Any) -> list[dict[str, str]]:
    """One solver row per step of a trace."""
    question, subquestions, subanswers = _steps(trace)
    return [
        {
            "prompt": solver_prompt(question, subquestions[: k + 1], subanswers[:k]),
            "completion": solver_answer(subanswers[k]),
        }
        for k in range(len(subquestions))
    ]



def packed_solver_row(trace: Any) -> dict[str, list[str]]:
    """All of a trace's solver steps as one sequence of segments, with loss on every answer.

    >>> packed_solver_row({"id": "t", "question": "P.", "subquestions": ["A?", "B?"], "subanswers": ["a.", "b."]})
    {'prompt': ['Problem: P.\\nQ: A?\\nA:', 'Q: B?\\nA:'], 'completion': [' a.\\n', ' b.\\n']}
    """
    question, subquestions, subanswers = _steps(trace)
    prompts = [solver_question(sq) for sq in subquestions]
    prompts[0] = solver_start(question) + prompts[0]
    return {"prompt": prompts, "completion": [solver_answer(sa) for sa in subanswers]}



def cot_row(trace: Any) -> dict[str, str]:
    """One CoT row: the problem, then the sub-answers as steps, then the final answer."""
    question, _, subanswers = _steps(trace)
    return {"prompt": cot_prompt(question), "completion": cot_completion(subanswers, _field(trace, "answer"))}



def build_rows(traces: Iterable[Any], *, packed_solver: bool = True) -> dict[str, list[dict]]:
    """Fine-tuning rows for the three roles, keyed "decomposer", "solver" and "cot".

    `traces` are `distill.teach.traces.Trace` objects or dicts with the same fields (`id`, `question`,
    `subquestions`, `subanswers`, `answer`); filter them by correctness before calling this.
    With `packed_solver` (the default) each trace gives one packed solver row, else one row per step.
    A trace with no steps, or with sub-questions and
    sub-answers of different lengths, is an error naming the trace.
    """
    rows: dict[str, list[dict]] = {role: [] for role in ROLES}
    for trace in traces:
        rows["decomposer"].append(decomposer_row(trace))
        if packed_solver:
            rows["solver"].append(packed_solver_row(trace))
        else:
            rows["solver"].extend(solver_rows(trace))
        rows["cot"].append(cot_row(trace))
    return rows
