"""`DecomposedSolver`: decomposition prompting as a drop-in replacement for `dspy.ChainOfThought`."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Generator, Iterable
from typing import Any, Literal, NamedTuple

import dspy
from dspy.signatures.signature import Signature, ensure_signature
from dspy.utils.exceptions import AdapterParseError

from dd_prompting.demos import BUILTIN_DEMOS, DemoSet, WorkedExample, builtin_demos_for
from dd_prompting.plain_text_adapter import PlainTextAdapter, prefers_plain_text
from dd_prompting.signatures import AnswerSubquestion, Decompose, SolveWithSubquestions

__all__ = ["DecomposedSolver", "format_solved"]

logger = logging.getLogger(__name__)

Mode = Literal["joint", "iterative"]
_TEMPLATE_INPUT = "problem"
_TEMPLATE_OUTPUT = "answer"
_RESERVED = ("subquestions", "subanswers", "solved", "subquestion", "subanswer", "fallback", "parse_failures",
             "reasoning")


# ChainOfThought's own default for `reasoning`, read from its public signature so ours follows DSPy's.
_CHAIN_OF_THOUGHT_RATIONALE_TYPE = inspect.signature(dspy.ChainOfThought.__init__).parameters[
    "rationale_field_type"].default


class _Call(NamedTuple):
    """One LM call the algorithm asks for: a predictor and its keyword arguments."""

    predictor: dspy.Predict
    kwargs: dict[str, Any]


# The algorithm's steps: yields calls, receives their replies, returns its result.
Steps = Generator[_Call, dspy.Prediction, Any]


class DecomposedSolver(dspy.Module):
    """Answer a signature by first decomposing the problem into sub-questions, then solving them.

    `joint` mode (decomposition prompting): one call writes the sub-questions, a second answers them
    all and gives the final answer. `iterative` mode (the paper's solver): one call per sub-question,
    each seeing the earlier answers; the last step also gives the final answer.

    The prediction carries the signature's outputs and, as ChainOfThought's does, `reasoning` (each
    sub-question with its answer, as text) and `completions` (one per sample of the final call, e.g.
    with `n=3`). It adds `subquestions`, `subanswers`, `fallback` (None, or why the problem was
    answered directly: an empty or unparsable decomposition) and `parse_failures` (the steps whose
    output could not be parsed). By default parse failures are recorded, never raised, so a long
    evaluation goes on; `strict=True` raises them.

    `await program.acall(...)` makes the same calls as `program(...)`. The adapter is chosen per
    call, from the LM that call uses, so the predictors can run on different LMs (`set_lm` on one).

    Args:
        signature: Any DSPy signature, as for `dspy.ChainOfThought`: "question -> answer",
            "question -> answer: float", or a class.
        mode: "joint" or "iterative".
        max_subquestions: Cap on the sub-questions solved; the last one (what the problem asks) is kept.
        demos: The worked examples each predictor starts with. "builtin" picks them by the answer
            field's type: the math examples for an `int` or `float` answer, the yes/no ones for a
            `bool` answer, none otherwise (logged once at INFO). "math" or "yes_no" asks for one set
            by name, e.g. for a `str` answer that holds a number; None starts with none. Named sets
            need one input and one output field. Optimizers such as `dspy.BootstrapFewShot` replace
            them either way.
        adapter: The adapter for every call. None picks the configured one, or, call by call,
            `PlainTextAdapter` when the call's LM is a small local model, which cannot follow DSPy's
            chat format.
        strict: Raise an adapter's parse error (`AdapterParseError`) as `dspy.ChainOfThought` does,
            from any step, so `dspy.Evaluate` counts it as an error; by default it is recorded in
            `parse_failures` and the answer is None (or an unparsable decomposition falls back to a
            direct answer).
        rationale_field: Accepted as by ChainOfThought (a `dspy.OutputField`); its type, when it has
            one, is the type of `reasoning`. Its description is not used: the reasoning is written
            from the sub-questions and their answers, not asked of the LM.
        rationale_field_type: The type of `reasoning`: `str` or `dspy.Reasoning`; by default the installed
            ChainOfThought's default (`str` on DSPy 3.4, `dspy.Reasoning` on 3.5).
        **config: Passed to every inner `dspy.Predict`, as by ChainOfThought: `temperature=0.7`, `n=3`, ...
            `n` goes only to the calls that give the final answer (the solver's last step, the direct
            answer): the decomposition and earlier steps are drawn once, as one sample is all they give.
    """

    def __init__(
        self,
        signature: str | type[Signature],
        *,
        mode: Mode = "joint",
        max_subquestions: int = 8,
        demos: Literal["builtin"] | DemoSet | None = "builtin",
        adapter: dspy.Adapter | None = None,
        strict: bool = False,
        rationale_field: Any = None,
        rationale_field_type: type | None = None,
        **config: Any,
    ):
        super().__init__()
        if mode not in ("joint", "iterative"):
            raise ValueError(f"mode must be 'joint' or 'iterative', got {mode!r}")
        if max_subquestions < 1:
            raise ValueError(f"max_subquestions must be at least 1, got {max_subquestions}")
        if demos not in ("builtin", *BUILTIN_DEMOS, None):
            raise ValueError(f"demos must be 'builtin', {', '.join(map(repr, BUILTIN_DEMOS))} or None, got {demos!r}")
        task = ensure_signature(signature)
        if rationale_field_type is None:
            rationale_field_type = _CHAIN_OF_THOUGHT_RATIONALE_TYPE
        if rationale_field is not None and getattr(rationale_field, "annotation", None) is not None:
            rationale_field_type = rationale_field.annotation  # ChainOfThought's rule: the field's type wins
        if rationale_field_type not in (str, dspy.Reasoning):
            raise ValueError(
                f"rationale_field_type must be str or dspy.Reasoning, got {rationale_field_type!r}: DecomposedSolver "
                "writes `reasoning` itself, as the sub-questions with their answers."
            )
        clash = sorted(set(task.fields) & set(_RESERVED))
        if clash:
            raise ValueError(f"The signature's field names {clash} are used by DecomposedSolver; rename them.")

        self.signature = task
        self.mode = mode
        self.max_subquestions = max_subquestions
        self.adapter = adapter
        self.strict = strict
        self.rationale_field_type = rationale_field_type

        # As in ChainOfThought, `config` (temperature=, n=, ...) goes to every predictor, and through it to the LM;
        # only the calls that give the final answer draw n samples, since only their completions are returned.
        one_sample = {key: value for key, value in config.items() if key not in ("n", "num_generations")}
        self.decompose = dspy.Predict(_derive(Decompose, task), **one_sample)
        if mode == "joint":
            self.solve = dspy.Predict(_derive(SolveWithSubquestions, task, task_outputs=True), **config)
        else:
            self.answer_step = dspy.Predict(_derive(AnswerSubquestion, task), **one_sample)
            self.answer_last_step = dspy.Predict(_derive(AnswerSubquestion, task, task_outputs=True), **config)
        self.direct = dspy.Predict(task, **config)
        if demos == "builtin":
            demos = builtin_demos_for(task)
            if demos is None:
                logger.info(
                    "%s starts without demos: the built-in worked examples fit one input and one int/float "
                    "(math) or bool (yes/no) output field, and its outputs are %s. Pass demos='math' or "
                    "demos='yes_no' to use them anyway, or call use_worked_examples() with your own.",
                    task.__name__, _describe(task.output_fields),
                )
        if demos is not None:
            self.use_worked_examples(BUILTIN_DEMOS[demos])

    def forward(self, **inputs: Any) -> dspy.Prediction:
        steps = self._steps(inputs)
        step = self._resume(steps)
        while isinstance(step, _Call):
            try:
                with dspy.context(adapter=self._adapter_for(step)):
                    reply = step.predictor(**step.kwargs)
            except AdapterParseError as err:
                step = self._resume(steps, error=err)
            else:
                step = self._resume(steps, reply)
        return step

    async def aforward(self, **inputs: Any) -> dspy.Prediction:
        # `forward` with each call awaited: one problem's calls stay in order (a step needs the
        # answers before it), while `asyncio.gather` runs many problems at once.
        steps = self._steps(inputs)
        step = self._resume(steps)
        while isinstance(step, _Call):
            try:
                with dspy.context(adapter=self._adapter_for(step)):
                    reply = await step.predictor.acall(**step.kwargs)
            except AdapterParseError as err:
                step = self._resume(steps, error=err)
            else:
                step = self._resume(steps, reply)
        return step

    def _steps(self, inputs: dict[str, Any]) -> Steps:
        """The algorithm, written once for `forward` and `aforward`: each `yield _Call(...)` is one LM
        call, made by the caller; its reply, or its parse error, comes back at the `yield`."""
        subquestions, fallback = yield from self._decompose(inputs)
        if fallback:
            return (yield from self._answer_directly(inputs, fallback))
        if self.mode == "joint":
            return (yield from self._solve_jointly(inputs, subquestions))
        return (yield from self._solve_iteratively(inputs, subquestions))

    def _resume(self, steps: Steps, reply: dspy.Prediction | None = None, *, error: Exception | None = None):
        """Hand a call's reply, or its parse error, back to the steps: their next call, or the prediction
        once they are done. With `strict=True` the parse error raises instead, as from ChainOfThought."""
        if error is not None and self.strict:
            steps.close()
            raise error
        try:
            return steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as done:
            return done.value

    def _adapter_for(self, call: _Call) -> dspy.Adapter | None:
        """The adapter for one call. An explicit one wins (ours, then the configured one); otherwise the
        LM this call will use decides, found as `dspy.Predict` finds it (a call-time `lm=`, then the
        predictor's own from `set_lm`, then the configured one). So a program that pairs a small local
        decomposer with an API solver sends each its own format."""
        if self.adapter is not None:
            return self.adapter
        if dspy.settings.adapter is not None:
            return dspy.settings.adapter
        # `decompose` may be any module that returns `subquestions` (a distilled decomposer student).
        lm = call.kwargs.get("lm") or getattr(call.predictor, "lm", None) or dspy.settings.lm
        return PlainTextAdapter() if prefers_plain_text(lm) else None

    def _decompose(self, inputs: dict[str, Any]) -> Steps:
        try:
            raw = (yield _Call(self.decompose, inputs)).subquestions
        except AdapterParseError as err:
            return [], f"unparsable decomposition: {_short(err)}"
        subquestions = _as_list(raw)
        if not subquestions:
            return [], "empty decomposition"
        if len(subquestions) > self.max_subquestions:
            subquestions = subquestions[: self.max_subquestions - 1] + subquestions[-1:]
        return subquestions, None

    def _solve_jointly(self, inputs: dict[str, Any], subquestions: list[str]) -> Steps:
        try:
            solved = yield _Call(self.solve, {**inputs, "subquestions": subquestions})
        except AdapterParseError as err:
            logger.info("Joint solver output did not parse: %s", _short(err))
            return self._prediction(subquestions, [({}, [])], parse_failures=["solve"])
        return self._prediction(subquestions, [(c, _as_list(c.get("subanswers"))) for c in _completions(solved)])

    def _solve_iteratively(self, inputs: dict[str, Any], subquestions: list[str]) -> Steps:
        subanswers: list[str] = []
        failures: list[str] = []
        answers = [({}, subanswers)]  # until the last step gives the final answer
        for index, subquestion in enumerate(subquestions):
            is_last = index == len(subquestions) - 1
            step = self.answer_last_step if is_last else self.answer_step
            solved = format_solved(subquestions, subanswers)
            try:
                answered = yield _Call(step, {**inputs, "solved": solved, "subquestion": subquestion})
            except AdapterParseError as err:
                logger.info("Step %d output did not parse: %s", index + 1, _short(err))
                failures.append(f"step {index + 1}")
                subanswers.append("")
                continue
            if not is_last:
                subanswers.append(_text(answered.subanswer))
                continue
            answers = [(c, [*subanswers, _text(c.get("subanswer"))]) for c in _completions(answered)]
        return self._prediction(subquestions, answers, parse_failures=failures)

    def _answer_directly(self, inputs: dict[str, Any], fallback: str) -> Steps:
        try:
            answered = yield _Call(self.direct, inputs)
        except AdapterParseError as err:
            logger.info("Direct answer did not parse: %s", _short(err))
            return self._prediction([], [({}, [])], fallback=fallback, parse_failures=["decompose", "direct"])
        answers = [(c, []) for c in _completions(answered)]
        return self._prediction([], answers, fallback=fallback, parse_failures=["decompose"])

    def _prediction(self, subquestions, answers, *, fallback=None, parse_failures=()) -> dspy.Prediction:
        """The prediction from the final call's completions, given as (outputs, sub-answers) pairs, the
        first being the answer. As with ChainOfThought, each completion has the signature's outputs
        and `reasoning`; the prediction adds how it was reached."""
        completions = [
            {
                **{name: outputs.get(name) for name in self.signature.output_fields},
                "reasoning": self._reasoning(subquestions, subanswers),
                "subanswers": subanswers,
            }
            for outputs, subanswers in answers
        ]
        pred = dspy.Prediction.from_completions(completions)
        pred["subquestions"] = subquestions
        pred["fallback"] = fallback
        pred["parse_failures"] = list(parse_failures)
        return pred

    def _reasoning(self, subquestions: list[str], subanswers: list[str]) -> Any:
        # Every sub-question with its answer (blank where none came back), in the layout the steps read.
        padded = [*subanswers, *[""] * (len(subquestions) - len(subanswers))]
        text = _qa_pairs(subquestions, padded)
        return text if self.rationale_field_type is str else dspy.Reasoning(content=text)

    def stream_listeners(self, field: str | None = None, *, allow_reuse: bool = False) -> list:
        """`dspy.streaming.StreamListener`s that stream `field` from every step that can write it.

        Pass them to `dspy.streamify(program, stream_listeners=...)`. The default field is the
        signature's first output (the answer), written by the solver's final step, or by the
        direct answer when the program falls back, so it streams whichever path answered. (A
        listener made with `signature_field_name` alone raises "not unique in the program": the
        answer field is in more than one predictor.) A field that one predictor writes more than
        once per problem, an iterative mode's `subanswer`, needs `allow_reuse=True`.
        """
        from dspy.streaming import StreamListener

        field = field or next(iter(self.signature.output_fields))
        listeners = [
            StreamListener(signature_field_name=field, predict=predictor, predict_name=name, allow_reuse=allow_reuse)
            for name, predictor in self.named_predictors()
            if field in predictor.signature.output_fields
        ]
        if not listeners:
            names = sorted({name for _, p in self.named_predictors() for name in p.signature.output_fields})
            raise ValueError(f"No step of this DecomposedSolver writes {field!r}; its output fields are {names}.")
        return listeners

    def use_worked_examples(self, examples: Iterable[WorkedExample]) -> None:
        """Replace every predictor's demos with these worked examples (problem, sub-questions,
        sub-answers, answer), such as GSM8K's Socratic annotations, `WORKED_EXAMPLES` or
        `YES_NO_WORKED_EXAMPLES`.

        Needs a signature with one input and one output field, which the examples fill.
        """
        inputs, outputs = list(self.signature.input_fields), list(self.signature.output_fields)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"Worked examples fill one input and one output field; {self.signature.__name__} has "
                f"{len(inputs)} input and {len(outputs)} output fields. Set each predictor's demos instead."
            )
        problem, answer = inputs[0], outputs[0]
        for predictor in self.predictors():
            predictor.demos = []
        for example in examples:
            subquestions, subanswers = list(example.subquestions), list(example.subanswers)
            if not subquestions or len(subquestions) != len(subanswers):
                raise ValueError(f"A worked example needs as many sub-answers as sub-questions: {example.problem[:60]!r}")
            if isinstance(self.decompose, dspy.Predict):  # not a decomposer module set in its place
                self.decompose.demos.append(dspy.Example({problem: example.problem, "subquestions": subquestions}))
            self.direct.demos.append(dspy.Example({problem: example.problem, answer: example.answer}))
            if self.mode == "joint":
                self.solve.demos.append(dspy.Example({
                    problem: example.problem, "subquestions": subquestions, "subanswers": subanswers,
                    answer: example.answer,
                }))
                continue
            # One first-step and one last-step demo per example keeps prompts short for small models.
            self.answer_step.demos.append(dspy.Example({
                problem: example.problem, "solved": format_solved([], []),
                "subquestion": subquestions[0], "subanswer": subanswers[0],
            }))
            self.answer_last_step.demos.append(dspy.Example({
                problem: example.problem, "solved": format_solved(subquestions[:-1], subanswers[:-1]),
                "subquestion": subquestions[-1], "subanswer": subanswers[-1], answer: example.answer,
            }))


def _derive(template: type[Signature], task: type[Signature], *, task_outputs: bool = False) -> type[Signature]:
    """`template` with the task's input fields in place of `problem`, and optionally its outputs in place
    of `answer`. The task's own instructions, if it has any, are kept after the template's."""
    fields: dict[str, tuple[Any, Any]] = {}
    for name, field in task.input_fields.items():
        fields[name] = (field.annotation, field)
    for name, field in template.input_fields.items():
        if name != _TEMPLATE_INPUT:
            fields[name] = (field.annotation, field)
    for name, field in template.output_fields.items():
        if name != _TEMPLATE_OUTPUT:
            fields[name] = (field.annotation, field)
    if task_outputs:
        for name, field in task.output_fields.items():
            fields[name] = (field.annotation, field)
    instructions = template.instructions
    if task.instructions and task.instructions != _default_instructions(task):
        instructions = f"{instructions}\n\n{task.instructions}"
    return dspy.make_signature(fields, instructions, signature_name=f"{template.__name__}For{task.__name__}")


def _describe(fields: dict[str, Any]) -> str:
    return ", ".join(f"{name}: {getattr(field.annotation, '__name__', field.annotation)}"
                     for name, field in fields.items())


def _default_instructions(signature: type[Signature]) -> str:
    inputs = ", ".join(f"`{name}`" for name in signature.input_fields)
    outputs = ", ".join(f"`{name}`" for name in signature.output_fields)
    return f"Given the fields {inputs}, produce the fields {outputs}."


def format_solved(subquestions: list[str], subanswers: list[str]) -> str:
    """The `solved` input of a step: earlier sub-questions with their answers."""
    return _qa_pairs(subquestions, subanswers) or "(none yet)"


def _qa_pairs(subquestions: list[str], subanswers: list[str]) -> str:
    return "\n".join(f"Q: {question}\nA: {answer}" for question, answer in zip(subquestions, subanswers))


def _completions(reply: dspy.Prediction) -> list[dspy.Prediction]:
    # One per sample the LM returned (`n=3` gives three), the first being the prediction itself.
    completions = reply.completions
    return [completions[index] for index in range(len(completions))] if completions is not None else [reply]


def _text(value: Any) -> str:
    return str(value or "").strip()


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.splitlines()
    return [str(item).strip() for item in value if str(item).strip()]


def _short(err: Exception) -> str:
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__
