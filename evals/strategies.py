"""The programs being compared: direct answer, chain of thought, decomposition, and distilled students.

Every strategy answers the same signature for a dataset (question -> answer; `SolveProblem` for
numbers, an answer field typed `bool` or `Literal[...]` for yes/no and multiple-choice datasets, see
`signature_for`), so differences in accuracy come from the prompting strategy alone. Few-shot demos are drawn once per seed and shared
by all strategies that ask for the same number, so they see the same solved problems.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import dspy

from dd_prompting.answer_types import AnswerType
from dd_prompting.data import Problem
from dd_prompting.evals.config import StrategyConfig

__all__ = [
    "SolveProblem",
    "signature_for",
    "build_program",
    "choose_demos",
    "make_adapter",
    "describe_program",
    "program_fingerprint",
    "load_student_program",
    "load_student_decomposer",
]


class SolveProblem(dspy.Signature):
    """Solve the math word problem. Give the final answer as a number."""

    question: str = dspy.InputField(desc="The problem to solve.")
    answer: str = dspy.OutputField(desc="The final answer: a number, without units.")


_NUMBER = AnswerType("number")


def signature_for(answer_type: AnswerType = _NUMBER) -> type[dspy.Signature]:
    """The question -> answer signature for one kind of answer.

    >>> signature_for(AnswerType("yes_no")).output_fields["answer"].annotation
    <class 'bool'>
    """
    if answer_type.kind == "number":
        return SolveProblem
    name = "AnswerYesNo" if answer_type.kind == "yes_no" else "AnswerChoice"
    namespace = {
        "__doc__": answer_type.instructions,
        "__module__": __name__,
        "__annotations__": {"question": str, "answer": answer_type.annotation},
        "question": dspy.InputField(desc="The question to answer."),
        "answer": dspy.OutputField(desc=answer_type.description),
    }
    return type(name, (dspy.Signature,), namespace)


def make_adapter(name: str) -> dspy.Adapter:
    if name == "chat":
        return dspy.ChatAdapter()
    if name == "json":
        return dspy.JSONAdapter()
    if name == "plain":
        from dd_prompting import PlainTextAdapter

        return PlainTextAdapter()
    raise ValueError(f"adapter must be 'chat', 'json' or 'plain', got {name!r}")


def choose_demos(pool: list[Problem], count: int, *, seed: int) -> list[Problem]:
    """`count` problems from `pool`, drawn with `seed` (the same draw for every strategy)."""
    if count > len(pool):
        raise ValueError(f"{count} demos were asked for, but the demo pool has only {len(pool)} problems")
    return random.Random(seed).sample(pool, count)


def build_program(strategy: StrategyConfig, demos: list[Problem], answer_type: AnswerType = _NUMBER) -> dspy.Module:
    """The DSPy program for a strategy, with `demos` (solved problems) as its few-shot examples.

    `strategy.demos == 'builtin'` uses dd_prompting's hand-written worked examples instead: the
    arithmetic ones for numbers, the yes/no ones for yes/no questions (there are none for options).
    """
    if strategy.kind == "student":
        raise ValueError("A student program comes from its run directory; use load_student_program")
    signature = signature_for(answer_type)
    builtin = {"number": "math", "yes_no": "yes_no"}.get(answer_type.kind)
    if strategy.demos == "builtin" and builtin is None:
        raise ValueError(
            f"strategies[{strategy.name}]: there are no built-in worked examples for {answer_type.kind!r} answers; "
            "set demos to 0, or to a count drawn from the dataset's demos_path"
        )
    if strategy.kind == "decomposed":
        from dd_prompting import DecomposedSolver

        program = DecomposedSolver(
            signature, mode=strategy.mode, max_subquestions=strategy.max_subquestions,
            # Named explicitly: a number's answer field is text (so any number format parses).
            demos=builtin if strategy.demos == "builtin" else None,
        )
        if demos:
            _set_decomposition_demos(program, demos)
        return program
    if strategy.demos == "builtin":
        demos = _builtin_problems(builtin)
    if strategy.kind == "direct":
        program = dspy.Predict(signature)
        program.demos = [dspy.Example(question=p.question, answer=answer_type.as_field_value(p.gold)) for p in demos]
        return program
    program = dspy.ChainOfThought(signature)
    missing = [p.id for p in demos if not p.solution]
    if missing:
        raise ValueError(
            f"strategies[{strategy.name}]: chain-of-thought demos need worked solutions; demo problems {missing[:3]} "
            "have none (set the dataset's `solution` field)"
        )
    for predictor in program.predictors():
        predictor.demos = [dspy.Example(question=p.question, reasoning=p.solution,
                                        answer=answer_type.as_field_value(p.gold)) for p in demos]
    return program


def _builtin_problems(name: str) -> list[Problem]:
    from dd_prompting.demos import BUILTIN_DEMOS
    return [
        Problem(id=f"builtin-{index}", question=example.problem, gold=example.answer,
                solution=" ".join(example.subanswers), subquestions=example.subquestions,
                steps=example.subanswers)
        for index, example in enumerate(BUILTIN_DEMOS[name])
    ]


def _set_decomposition_demos(program: dspy.Module, demos: list[Problem]) -> None:
    # GSM8K's Socratic annotations as worked examples: the sub-questions, and each step as the sub-answer.
    from dd_prompting import WorkedExample

    missing = [p.id for p in demos if not p.subquestions]
    if missing:
        raise ValueError(f"decomposition demos need sub-questions; demo problems {missing[:3]} have none")
    program.use_worked_examples(
        WorkedExample(problem=p.question, subquestions=tuple(p.subquestions), subanswers=tuple(p.steps or ()),
                      answer=p.gold)
        for p in demos
    )


def describe_program(program: dspy.Module) -> list[dict[str, Any]]:
    """Every predictor's signature (instructions, fields) and demos, for the report."""
    described = []
    for name, predictor in program.named_predictors():
        signature = predictor.signature
        described.append({
            "predictor": "predict" if name == "self" else name,
            "signature": signature.__name__,
            "instructions": signature.instructions,
            "inputs": {field: _field_info(info) for field, info in signature.input_fields.items()},
            "outputs": {field: _field_info(info) for field, info in signature.output_fields.items()},
            "demos": [_demo_dict(demo) for demo in predictor.demos],
        })
    return described


def _field_info(info: Any) -> dict[str, str]:
    extra = info.json_schema_extra or {}
    annotation = info.annotation
    type_name = getattr(annotation, "__name__", None) or str(annotation)
    return {"type": type_name, "desc": str(extra.get("desc", ""))}


def _demo_dict(demo: Any) -> dict[str, Any]:
    items = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
    return {key: value for key, value in items.items() if not key.startswith("dspy_")}


def program_fingerprint(description: list[dict[str, Any]]) -> str:
    text = json.dumps(description, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_student_program(run_dir: str | Path, *, student: str = "pair", servers: dict | None = None,
                         **serving) -> dspy.Module:
    """A dd-distill run's students as one DSPy module: the decomposer + solver pair, or the CoT student.

    The students are looked for in `run_dir/<role>` (and `run_dir/students/<role>`); with `servers`, they answer
    from those servers (`serving`: `max_in_flight`, `timeout`, `retries`). `distill` is imported only here, so
    evaluating API models never needs it.
    """
    from dd_prompting.distill.students.modules import StudentModule

    return StudentModule.from_run(run_dir, student="cot" if student == "cot" else "pair", servers=servers, **serving)


def load_student_decomposer(run_dir: str | Path) -> dspy.Module:
    """A dd-distill run's decomposer student as a module for a `DecomposedSolver`'s `decompose` (a hybrid pair)."""
    from dd_prompting.distill.students.modules import DecomposerModule
    from dd_prompting.distill.students.pipelines import DecomposerStudent
    from dd_prompting.distill.students.lookup import find_student

    return DecomposerModule(DecomposerStudent.from_pretrained(find_student(run_dir, "decomposer")))
