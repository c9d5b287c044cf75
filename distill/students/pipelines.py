"""Trained students at work: the decomposer + solver pipeline, the CoT student, and their DSPy modules.

`StudentPipeline` answers a problem as the paper's students do: the decomposer writes all the
sub-questions, then the solver answers them one at a time, each answer fed back into its context,
and the final answer is read from the last step by `AnswerType.read_step` (a number's calculation
result, `dd_prompting.answers.read_step_result`, or the option a yes/no or choice step names: the
reader teacher traces are filtered with). Decoding is greedy unless a temperature is given.

Two things make it fast on a CPU, both in `distill.students.generation`. Problems are decoded in batches (one
forward call per token for the whole batch). And each problem's key/value cache is kept across its
steps: step k only encodes the new sub-question, not the problem and the k-1 earlier steps again.
`benchmarks/bench_students.py` measures both against a loop that re-encodes the context at every step
with batch size 1. Loading a student (`distill.students.artifacts.load_student`) imports no training code.

The prompts come from `distill.rows.format`, the same functions that built the training rows. The token
sequence a solver sees is the prompt tokens plus the tokens it generated itself (up to and including
the newline that ends an answer); a reply that ends in EOS or runs out of tokens gets a newline
appended, so the next sub-question always starts on a new line.

`StudentModule` wraps either student as a `dspy.Module` with `forward(question) -> dspy.Prediction(
answer, subquestions, subanswers, ...)`, the same outputs as `dd_prompting.DecomposedSolver`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dd_prompting.distill.rows.format import (
    cot_prompt,
    decomposer_prompt,
    parse_cot,
    parse_subanswer,
    parse_subquestions,
    solver_question,
    solver_start,
)
from dd_prompting.distill.students.artifacts import load_student
from dd_prompting.distill.students.generation import Decoder, Vocab, generate
from dd_prompting.distill.training.tokenization import encode

from dd_prompting.answer_types import AnswerType
from dd_prompting.answers import INVALID

__all__ = ["StudentResult", "CoTResult", "DecomposerStudent", "StudentPipeline", "CoTStudent"]

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
        """Load a decomposer saved by `distill.training.trainer.train_student` (role "decomposer")."""
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
        """Load the two students saved by `distill.training.trainer.train_student` (roles are checked)."""
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
                    subquestions = [question_sentence(question)]
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



def question_sentence(question: str) -> str:
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
        """Load a CoT student saved by `distill.training.trainer.train_student` (role "cot")."""
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
