"""Trained students at work: the decomposer + solver pipeline, the CoT student, and their DSPy modules.

`StudentPipeline` answers a problem as the paper's students do: the decomposer writes all the
sub-questions, then the solver answers them one at a time, each answer fed back into its context,
and the final answer is read from the last step by `AnswerType.read_step` (a number's calculation
result, `dd_prompting.answers.read_step_result`, or the option a yes/no or choice step names: the
reader teacher traces are filtered with). Decoding is greedy unless a temperature is given.

Two things make it fast on a CPU, both in `distill.decoding`. Problems are decoded in batches (one
forward call per token for the whole batch). And each problem's key/value cache is kept across its
steps: step k only encodes the new sub-question, not the problem and the k-1 earlier steps again.
`benchmarks/bench_students.py` measures both against a loop that re-encodes the context at every step
with batch size 1. Loading a student (`distill.artifacts.load_student`) imports no training code.

The prompts come from `distill.formats`, the same functions that built the training rows. The token
sequence a solver sees is the prompt tokens plus the tokens it generated itself (up to and including
the newline that ends an answer); a reply that ends in EOS or runs out of tokens gets a newline
appended, so the next sub-question always starts on a new line.

`StudentModule` wraps either student as a `dspy.Module` with `forward(question) -> dspy.Prediction(
answer, subquestions, subanswers, ...)`, the same outputs as `dd_prompting.DecomposedSolver`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dspy

from dd_prompting.answer_types import AnswerType
from dd_prompting.answers import INVALID
from dd_prompting.distill.artifacts import check_student, load_student
from dd_prompting.distill.decoding import Decoder, Vocab, generate
from dd_prompting.distill.formats import (
    cot_prompt,
    decomposer_prompt,
    parse_cot,
    parse_subanswer,
    parse_subquestions,
    solver_question,
    solver_start,
)
from dd_prompting.distill.tokenization import encode

__all__ = [
    "StudentResult",
    "CoTResult",
    "DecomposerStudent",
    "DecomposerModule",
    "StudentPipeline",
    "CoTStudent",
    "StudentModule",
    "find_student",
    "check_run_students",
    "student_roles",
]

logger = logging.getLogger(__name__)


@dataclass
class StudentResult:
    """What the student pair did with one problem.

    `answer` is a canonical number string or `INVALID`; `fallback` is None when the decomposer's
    sub-questions were used, else why not (the problem's question sentence was asked instead).
    """

    question: str
    subquestions: list[str]
    subanswers: list[str]
    answer: str
    decomposition: str = ""
    fallback: str | None = None
    truncated: bool = False


@dataclass
class CoTResult:
    """What the CoT student did with one problem: its steps, its final answer, its raw text."""

    question: str
    steps: list[str]
    answer: str
    text: str = ""
    truncated: bool = False


class _Student:
    """Shared loading and batching for both students."""

    @staticmethod
    def _torch_generator(seed: int | None):
        import torch

        generator = torch.Generator()
        if seed is not None:
            generator.manual_seed(seed)
        return generator

    @staticmethod
    def _batches(items: Sequence, batch_size: int, progress: bool, desc: str):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        starts = range(0, len(items), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc, unit="batch")
        for start in starts:
            yield items[start : start + batch_size]


class DecomposerStudent(_Student):
    """A decomposer student alone: problem -> sub-questions, decoded in batches.

    `StudentPipeline` pairs one with a solver; `DecomposerModule` puts one in a `DecomposedSolver`
    whose solver is another model (a hybrid pair).
    """

    def __init__(self, *, model, tokenizer, max_subquestions: int = 8, max_new_tokens: int = 160):
        self.model, self.tokenizer = model, tokenizer
        self.max_subquestions = max_subquestions
        self.max_new_tokens = max_new_tokens
        self._vocab = Vocab(tokenizer)
        self.sources: dict[str, Path] = {}  # role -> the directory it was loaded from (for DSPy save/load)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, max_subquestions: int = 8,
                        max_new_tokens: int = 160) -> DecomposerStudent:
        """Load a decomposer saved by `distill.train.train_student` (role "decomposer")."""
        model, tokenizer = load_student(directory, role="decomposer")
        student = cls(model=model, tokenizer=tokenizer, max_subquestions=max_subquestions, max_new_tokens=max_new_tokens)
        student.sources = {"decomposer": Path(directory)}
        return student

    def decompose(self, questions: Sequence[str], *, temperature: float = 0.0, generator=None) -> list[str]:
        """The decomposer's raw outputs for a batch of problems (decoded in one batch)."""
        import torch

        tokenizer = self.tokenizer
        chunks = [encode(tokenizer, decomposer_prompt(q), first=True) for q in questions]
        decoder = Decoder(
            self.model, tokenizer, rows=len(questions), reuse_cache=True, temperature=temperature, generator=generator
        )
        with torch.inference_mode():
            generated, _, _ = generate(
                decoder,
                self._vocab,
                chunks,
                active=[True] * len(questions),
                max_new_tokens=self.max_new_tokens,
                stop_at_newline=False,
            )
        return [tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]

    def subquestions(self, questions: Sequence[str], *, temperature: float = 0.0, generator=None) -> list[list[str]]:
        """Each problem's sub-questions (at most `max_subquestions`; empty if none could be read)."""
        texts = self.decompose(questions, temperature=temperature, generator=generator)
        return [parse_subquestions(text)[: self.max_subquestions] for text in texts]


class StudentPipeline(_Student):
    """A decomposer and a solver answering problems together (see the module docstring).

    >>> pipeline = StudentPipeline.from_pretrained("runs/x/decomposer", "runs/x/solver")  # doctest: +SKIP
    >>> pipeline.solve(["Ann has 3 apples and buys 5 more. How many does she have?"])[0].answer  # doctest: +SKIP
    '8'
    """

    def __init__(
        self,
        *,
        decomposer,
        decomposer_tokenizer,
        solver,
        solver_tokenizer,
        max_subquestions: int = 8,
        max_decomposition_tokens: int = 160,
        max_answer_tokens: int = 48,
        answer_type: AnswerType | None = None,
    ):
        self.answer_type = answer_type or AnswerType()
        self.decomposer_student = DecomposerStudent(
            model=decomposer, tokenizer=decomposer_tokenizer, max_subquestions=max_subquestions,
            max_new_tokens=max_decomposition_tokens,
        )
        self.solver, self.solver_tokenizer = solver, solver_tokenizer
        self.max_subquestions = max_subquestions
        self.max_answer_tokens = max_answer_tokens
        self._solver_vocab = Vocab(solver_tokenizer)
        self.sources: dict[str, Path] = {}

    @property
    def decomposer(self):
        return self.decomposer_student.model

    @property
    def decomposer_tokenizer(self):
        return self.decomposer_student.tokenizer

    @classmethod
    def from_pretrained(
        cls,
        decomposer_dir: str | Path,
        solver_dir: str | Path,
        *,
        max_subquestions: int = 8,
        max_decomposition_tokens: int = 160,
        max_answer_tokens: int = 48,
        answer_type: AnswerType | None = None,
    ) -> StudentPipeline:
        """Load the two students saved by `distill.train.train_student` (roles are checked)."""
        decomposer, decomposer_tokenizer = load_student(decomposer_dir, role="decomposer")
        solver, solver_tokenizer = load_student(solver_dir, role="solver")
        pipeline = cls(
            decomposer=decomposer,
            decomposer_tokenizer=decomposer_tokenizer,
            solver=solver,
            solver_tokenizer=solver_tokenizer,
            max_subquestions=max_subquestions,
            max_decomposition_tokens=max_decomposition_tokens,
            max_answer_tokens=max_answer_tokens,
            answer_type=answer_type,
        )
        pipeline.sources = {"decomposer": Path(decomposer_dir), "solver": Path(solver_dir)}
        return pipeline

    def decompose(self, questions: Sequence[str], *, temperature: float = 0.0, generator=None) -> list[str]:
        """The decomposer's raw outputs for a batch of problems (decoded in one batch)."""
        return self.decomposer_student.decompose(questions, temperature=temperature, generator=generator)

    def answer(
        self,
        questions: Sequence[str],
        subquestions: Sequence[Sequence[str]],
        *,
        reuse_cache: bool = True,
        temperature: float = 0.0,
        generator=None,
    ) -> tuple[list[list[str]], list[bool]]:
        """The solver's sub-answers for a batch of problems with given sub-questions, and which ran out of room."""
        import torch

        tokenizer, vocab = self.solver_tokenizer, self._solver_vocab
        rows = len(questions)
        decoder = Decoder(
            self.solver, tokenizer, rows=rows, reuse_cache=reuse_cache, temperature=temperature, generator=generator
        )
        answers: list[list[str]] = [[] for _ in range(rows)]
        pending: list[list[int]] = [[] for _ in range(rows)]
        truncated = [False] * rows
        steps = max((len(sqs) for sqs in subquestions), default=0)
        with torch.inference_mode():
            for k in range(steps):
                active = [k < len(subquestions[row]) and not truncated[row] for row in range(rows)]
                chunks = []
                for row in range(rows):
                    if not active[row]:
                        chunks.append([])
                    elif k == 0:
                        text = solver_start(questions[row]) + solver_question(subquestions[row][0])
                        chunks.append(encode(tokenizer, text, first=True))
                    else:
                        chunks.append(pending[row] + encode(tokenizer, solver_question(subquestions[row][k]), first=False))
                decoder.restart()
                generated, step_pending, step_truncated = generate(
                    decoder, vocab, chunks, active=active, max_new_tokens=self.max_answer_tokens, stop_at_newline=True
                )
                for row in range(rows):
                    if active[row]:
                        answers[row].append(parse_subanswer(tokenizer.decode(generated[row], skip_special_tokens=True)))
                        pending[row] = step_pending[row]
                        truncated[row] |= step_truncated[row]
        return answers, truncated

    def solve(
        self,
        questions: Sequence[str],
        *,
        batch_size: int = 32,
        reuse_cache: bool = True,
        temperature: float = 0.0,
        seed: int | None = None,
        progress: bool = False,
    ) -> list[StudentResult]:
        """Answer each problem: decompose, answer the sub-questions in order, read the final answer.

        `batch_size` problems are decoded together. `reuse_cache=False` re-encodes each problem's
        whole context at every step (slower, same greedy outputs; for benchmarks and checks).
        `temperature` 0 is greedy; above 0 samples, seeded by `seed`.
        """
        generator = self._torch_generator(seed)
        questions = [str(q) for q in questions]
        results: list[StudentResult] = []
        for batch in self._batches(questions, batch_size, progress, "student pair"):
            texts = self.decompose(batch, temperature=temperature, generator=generator)
            plans, fallbacks = [], []
            for question, text in zip(batch, texts):
                subquestions = parse_subquestions(text)[: self.max_subquestions]
                fallback = None
                if not subquestions:
                    fallback = "the decomposer wrote no sub-questions; asked the problem's question instead"
                    subquestions = [_question_sentence(question)]
                plans.append(subquestions)
                fallbacks.append(fallback)
            answers, truncated = self.answer(
                batch, plans, reuse_cache=reuse_cache, temperature=temperature, generator=generator
            )
            for question, text, subquestions, subanswers, fallback, cut in zip(
                batch, texts, plans, answers, fallbacks, truncated
            ):
                complete = len(subanswers) == len(subquestions)
                final = self.answer_type.read_step(subanswers[-1]) if subanswers and complete else INVALID
                results.append(
                    StudentResult(
                        question=question,
                        subquestions=subquestions,
                        subanswers=subanswers,
                        answer=final,
                        decomposition=text,
                        fallback=fallback,
                        truncated=cut,
                    )
                )
        return results


def _question_sentence(question: str) -> str:
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", question.strip()) if s.strip()]
    asked = [s for s in sentences if s.endswith("?")]
    return (asked or sentences or [question])[-1]


class CoTStudent(_Student):
    """A chain-of-thought student: problem -> steps -> "The answer is N." in one generation."""

    def __init__(self, *, model, tokenizer, max_new_tokens: int = 200, answer_type: AnswerType | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens = max_new_tokens
        self.answer_type = answer_type or AnswerType()
        self._vocab = Vocab(tokenizer)
        self.sources: dict[str, Path] = {}  # role -> the directory it was loaded from (for DSPy save/load)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, max_new_tokens: int = 200,
                        answer_type: AnswerType | None = None) -> CoTStudent:
        """Load a CoT student saved by `distill.train.train_student` (role "cot")."""
        model, tokenizer = load_student(directory, role="cot")
        student = cls(model=model, tokenizer=tokenizer, max_new_tokens=max_new_tokens, answer_type=answer_type)
        student.sources = {"cot": Path(directory)}
        return student

    def solve(
        self,
        questions: Sequence[str],
        *,
        batch_size: int = 32,
        temperature: float = 0.0,
        seed: int | None = None,
        progress: bool = False,
    ) -> list[CoTResult]:
        """Answer each problem with one generation; the answer is read from "The answer is ..." (flexibly)."""
        import torch

        generator = self._torch_generator(seed)
        questions = [str(q) for q in questions]
        results: list[CoTResult] = []
        for batch in self._batches(questions, batch_size, progress, "CoT student"):
            chunks = [encode(self.tokenizer, cot_prompt(q), first=True) for q in batch]
            decoder = Decoder(
                self.model, self.tokenizer, rows=len(batch), reuse_cache=True, temperature=temperature, generator=generator
            )
            with torch.inference_mode():
                generated, _, truncated = generate(
                    decoder,
                    self._vocab,
                    chunks,
                    active=[True] * len(batch),
                    max_new_tokens=self.max_new_tokens,
                    stop_at_newline=False,
                )
            for question, ids, cut in zip(batch, generated, truncated):
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                steps, answer_text = parse_cot(text)
                results.append(
                    CoTResult(question=question, steps=steps, answer=self.answer_type.read(answer_text), text=text,
                              truncated=cut)
                )
        return results


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

    def __init__(self, *, student: StudentPipeline | CoTStudent | None = None, signature="question -> answer",
                 temperature: float = 0.0, batch_size: int = 32):
        super().__init__()
        if student is not None and not isinstance(student, (StudentPipeline, CoTStudent)):
            raise TypeError(f"student must be a StudentPipeline or a CoTStudent, got {type(student).__name__}.")
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
    def from_run(cls, run_dir: str | Path, *, student: str = "pair", **kwargs) -> StudentModule:
        """The students of a run directory (`dd-distill`'s or `DecompositionDistillation`'s): "pair" or "cot"."""
        roles = student_roles(student)
        signature = dspy.ensure_signature(kwargs.pop("signature", "question -> answer"))
        answer_type = AnswerType.of(next(iter(signature.output_fields.values())).annotation)
        students = _load_students({role: find_student(run_dir, role) for role in roles}, answer_type)
        return cls(student=students, signature=signature, **kwargs)

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
        return {"students": {role: str(path) for role, path in sources.items()}, "temperature": self.temperature,
                "batch_size": self.batch_size}

    def load_state(self, state, **_ignored):
        students = state.get("students") or {}
        if not students:
            raise ValueError("The saved state names no student directories.")
        self.student = _load_students({role: Path(path) for role, path in students.items()}, self.answer_type)
        self.temperature = state.get("temperature", self.temperature)
        self.batch_size = state.get("batch_size", self.batch_size)
        return self

    def __deepcopy__(self, memo):
        # dspy copies programs (reset_copy, optimizers); the models are shared, not copied.
        return StudentModule(student=self.student, signature=self.signature, temperature=self.temperature,
                             batch_size=self.batch_size)


def student_roles(student: str) -> tuple[str, ...]:
    """The roles a run's "pair" or "cot" student is made of."""
    if student not in ("pair", "cot"):
        raise ValueError(f"student must be 'pair' or 'cot', got {student!r}")
    return ("cot",) if student == "cot" else ("decomposer", "solver")


def check_run_students(run_dir: str | Path, *, student: str = "pair") -> None:
    """Raise in one sentence unless `run_dir` holds the trained students `from_run` would load (no model loaded)."""
    for role in student_roles(student):
        check_student(find_student(run_dir, role), role=role)


def find_student(run_dir: str | Path, role: str) -> Path:
    """Where a run directory keeps a student: `run_dir/<role>` or `run_dir/students/<role>`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Student run directory not found: {run_dir}")
    for candidate in (run_dir / role, run_dir / "students" / role):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{run_dir} has no {role!r} student (looked in {role}/ and students/{role}/)")


def _load_students(sources: dict[str, Path], answer_type: AnswerType) -> StudentPipeline | CoTStudent:
    if set(sources) == {"cot"}:
        return CoTStudent.from_pretrained(sources["cot"], answer_type=answer_type)
    if set(sources) == {"decomposer", "solver"}:
        return StudentPipeline.from_pretrained(sources["decomposer"], sources["solver"], answer_type=answer_type)
    raise ValueError(f"Students are a decomposer and a solver, or a CoT student; got {sorted(sources)}.")


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
