"""The trained students as DSPy modules: `StudentModule` (the pair or the CoT student in place of a
`DecomposedSolver`) and `DecomposerModule` (a decomposer student in place of its `decompose` predictor).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import dspy
from dd_prompting.distill.students.lookup import find_student, student_roles
from dd_prompting.distill.students.pipelines import (
    CoTResult,
    CoTStudent,
    DecomposerStudent,
    StudentPipeline,
    StudentResult,
)

from dd_prompting.answer_types import AnswerType
from dd_prompting.answers import INVALID

__all__ = ["StudentModule", "DecomposerModule"]

logger = logging.getLogger(__name__)



class StudentModule(dspy.Module):
    """Trained students as a DSPy program: `forward(**inputs)` -> `dspy.Prediction`.

    The signature's one input is the problem and its first output is the answer (a number; a
    float or int field gets a float or int, None when no number came out). The prediction also has
    `subquestions`, `subanswers`, `reasoning` (the sub-questions with their answers), `fallback` and
    `parse_failures`, like `dd_prompting.DecomposedSolver`; a CoT student leaves `subquestions`
    empty, puts its steps in `subanswers` and its text in `reasoning`. No LM needs to be configured:
    the students are the model. `batch` decodes `batch_size` problems together (one forward pass
    per token for the whole batch) instead of running threads. Calls are serialised with a lock,
    so a threaded `dspy.Evaluate` is safe (if not parallel).

    `save("program.json")` records the students' directories; `StudentModule().load("program.json")`
    (or `dspy.load`) loads them again:

    >>> program = StudentModule.from_run("runs/offline", signature="question -> answer: float")  # doctest: +SKIP
    >>> program(question="Ann has 3 apples and buys 5 more. How many does she have?").answer  # doctest: +SKIP
    8.0
    """

    def __init__(self, *, student=None, signature="question -> answer", temperature: float = 0.0,
                 batch_size: int = 32):
        from dd_prompting.distill.serving.served_students import ServedCoTStudent, ServedStudentPipeline

        super().__init__()
        if student is not None and not isinstance(student, (StudentPipeline, CoTStudent, ServedStudentPipeline,
                                                            ServedCoTStudent)):
            raise TypeError(f"student must be a StudentPipeline or a CoTStudent (or one of them served), got "
                            f"{type(student).__name__}.")
        self.signature = dspy.ensure_signature(signature)
        inputs, outputs = list(self.signature.input_fields), list(self.signature.output_fields)
        if len(inputs) != 1 or not outputs:
            raise ValueError(f"A student reads one problem and writes an answer: the signature needs one input and an "
                             f"output field, got inputs {inputs} and outputs {outputs}.")
        self._input, self._output = inputs[0], outputs[0]
        self._annotation = self.signature.output_fields[self._output].annotation
        self.answer_type = AnswerType.of(self._annotation)
        if student is not None and student.answer_type != self.answer_type:
            raise ValueError(f"The students read {student.answer_type.kind} answers, the signature's {self._output!r} "
                             f"is {self.answer_type.kind}; load them with answer_type={self.answer_type!r}.")
        self.student = student
        self.temperature = temperature
        self.batch_size = batch_size
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: str | Path, *, student: str = "pair", servers: dict | None = None,
                 max_in_flight: int = 32, timeout: float = 120.0, retries: int = 3, **kwargs) -> StudentModule:
        """The students of a run directory (`dd-distill`'s or `DecompositionDistillation`'s): "pair" or "cot".

        With `servers` (`{"decomposer": URL, "solver": URL}`, or `{"cot": URL}`; an entry may be `{"url": ...,
        "model": ...}`), the students answer from those OpenAI-compatible servers (vLLM, SGLang) with the prompts
        they see in this process, `max_in_flight` requests at a time per server, each given `timeout` seconds and
        `retries` retries (429, 5xx, dropped connections); only their tokenizers load here.
        """
        roles = student_roles(student)
        signature = dspy.ensure_signature(kwargs.pop("signature", "question -> answer"))
        answer_type = AnswerType.of(next(iter(signature.output_fields.values())).annotation)
        sources = {role: find_student(run_dir, role) for role in roles}
        students = _load_students(sources, answer_type, servers=servers, max_in_flight=max_in_flight,
                                  timeout=timeout, retries=retries)
        return cls(student=students, signature=signature, **kwargs)

    @property
    def served(self) -> bool:
        """True when the students answer from servers."""
        return getattr(self.student, "servers", None) is not None

    def forward(self, **inputs) -> dspy.Prediction:
        if set(inputs) != {self._input}:
            raise ValueError(f"{type(self).__name__} takes one input, {self._input!r}; got {sorted(inputs)}.")
        [prediction] = self._predict([inputs[self._input]])
        return prediction

    def batch(self, examples, num_threads=None, max_errors=None, return_failed_examples=False, **_ignored):
        """Predictions for `examples`, decoded `batch_size` problems at a time (threads are not used)."""
        predictions = self._predict([example.inputs()[self._input] for example in examples])
        return (predictions, [], []) if return_failed_examples else predictions

    def _predict(self, problems: list) -> list[dspy.Prediction]:
        if self.student is None:
            raise RuntimeError(f"{type(self).__name__} has no students yet: load a saved program "
                               "(`.load(path)`) or build it with `from_run(run_dir)`.")
        if self.served:  # servers take many problems at once; nothing here to serialise
            results = self.student.solve([str(p) for p in problems], temperature=self.temperature)
        else:
            with self._lock:
                results = self.student.solve([str(p) for p in problems], batch_size=self.batch_size,
                                             temperature=self.temperature)
        return [self._prediction(result) for result in results]

    def _prediction(self, result: StudentResult | CoTResult) -> dspy.Prediction:
        answer = self.answer_type.typed(result.answer, self._annotation)
        what = "number" if self.answer_type.kind == "number" else "option"
        failures = [] if result.answer != INVALID else [f"no {what} in the final answer"]
        if isinstance(result, CoTResult):
            return dspy.Prediction(**{self._output: answer}, subquestions=[], subanswers=result.steps,
                                   reasoning=result.text, fallback=None, parse_failures=failures)
        reasoning = "\n".join(f"{q} {a}" for q, a in zip(result.subquestions, result.subanswers))
        return dspy.Prediction(**{self._output: answer}, subquestions=result.subquestions,
                               subanswers=result.subanswers, reasoning=reasoning, fallback=result.fallback,
                               parse_failures=failures)

    # DSPy's save/load: the state is where the students live, not their weights.

    def dump_state(self, json_mode=True):
        sources = self.student.sources if self.student is not None else {}
        if self.student is not None and not sources:
            raise ValueError("These students were built in memory, not loaded from directories; save them with "
                             "distill.artifacts.save_student and load them with from_pretrained before saving the program.")
        state = {"students": {role: str(path) for role, path in sources.items()}, "temperature": self.temperature,
                 "batch_size": self.batch_size}
        if self.served:  # a served module comes back served, never on local weights
            state["servers"] = {role: spec.to_dict() for role, spec in self.student.servers.items()}
            state["max_in_flight"] = self.student.max_in_flight
        return state

    def load_state(self, state, **_ignored):
        students = state.get("students") or {}
        if not students:
            raise ValueError("The saved state names no student directories.")
        self.student = _load_students({role: Path(path) for role, path in students.items()}, self.answer_type,
                                      servers=state.get("servers"), max_in_flight=state.get("max_in_flight", 32))
        self.temperature = state.get("temperature", self.temperature)
        self.batch_size = state.get("batch_size", self.batch_size)
        return self

    def __deepcopy__(self, memo):
        # dspy copies programs (reset_copy, optimizers); the models are shared, not copied.
        return StudentModule(student=self.student, signature=self.signature, temperature=self.temperature,
                             batch_size=self.batch_size)



def _load_students(sources: dict[str, Path], answer_type: AnswerType, *, servers: dict | None = None,
                   max_in_flight: int = 32, timeout: float = 120.0, retries: int = 3):
    if set(sources) not in ({"cot"}, {"decomposer", "solver"}):
        raise ValueError(f"Students are a decomposer and a solver, or a CoT student; got {sorted(sources)}.")
    if servers:
        from dd_prompting.distill.serving.served_students import ServedCoTStudent, ServedStudentPipeline

        if set(servers) != set(sources):
            raise ValueError(f"servers names {sorted(servers)}; these students are {sorted(sources)}: give a server "
                             "for each")
        if set(sources) == {"cot"}:
            served = ServedCoTStudent.from_directory(sources["cot"], servers=servers, answer_type=answer_type,
                                                     max_in_flight=max_in_flight, timeout=timeout, retries=retries)
        else:
            served = ServedStudentPipeline.from_directories(sources["decomposer"], sources["solver"], servers=servers,
                                                            answer_type=answer_type, max_in_flight=max_in_flight,
                                                            timeout=timeout, retries=retries)
        served.check()  # before any problem: a server down, or serving another model, is one sentence now
        return served
    if set(sources) == {"cot"}:
        return CoTStudent.from_pretrained(sources["cot"], answer_type=answer_type)
    return StudentPipeline.from_pretrained(sources["decomposer"], sources["solver"], answer_type=answer_type)



class DecomposerModule(dspy.Module):
    """A trained decomposer student in place of a `DecomposedSolver`'s `decompose` predictor.

    The sub-questions come from the student, everything after from the solver's LM: a hybrid pair,
    a small distilled decomposer with a large solver.

    >>> program = DecomposedSolver("question -> answer: float")  # doctest: +SKIP
    >>> program.decompose = DecomposerModule(DecomposerStudent.from_pretrained("runs/offline/students/decomposer"))  # doctest: +SKIP
    >>> program.solve.set_lm(dspy.LM("openai/gpt-4o-mini"))  # doctest: +SKIP

    `forward` takes the program's one input field, whatever its name, and returns
    `dspy.Prediction(subquestions=[...])`. Calls are serialised with a lock, as in `StudentModule`.
    """

    def __init__(self, student: DecomposerStudent, *, temperature: float = 0.0):
        super().__init__()
        if not isinstance(student, DecomposerStudent):
            raise TypeError(f"student must be a DecomposerStudent, got {type(student).__name__}.")
        self.student = student
        self.temperature = temperature
        self._lock = threading.Lock()

    def forward(self, **inputs) -> dspy.Prediction:
        return self._decompose(inputs)

    async def aforward(self, **inputs) -> dspy.Prediction:
        import asyncio

        return await asyncio.to_thread(self._decompose, inputs)  # the model runs off the event loop

    def _decompose(self, inputs: dict) -> dspy.Prediction:
        if len(inputs) != 1:
            raise ValueError(
                f"A decomposer student reads one problem; the program passed {len(inputs)} inputs ({sorted(inputs)})."
            )
        [problem] = inputs.values()
        with self._lock:
            [subquestions] = self.student.subquestions([str(problem)], temperature=self.temperature)
        return dspy.Prediction(subquestions=subquestions)

    def __deepcopy__(self, memo):
        # As for StudentModule: programs are copied by optimizers; the model is shared.
        return DecomposerModule(self.student, temperature=self.temperature)
