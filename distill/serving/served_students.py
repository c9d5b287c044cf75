"""Trained students on servers: the pair and the CoT student of `distill.students.pipelines`, each step sent to an
OpenAI-compatible `/v1/completions` as token ids (`dd_prompting.serving.ServedModel`).

Every prompt is the token sequence the in-process decoder (`distill.students.generation.generate`) feeds the
model at that step: the same leading special tokens, then at each solver step the previous step's prompt, the ids
it generated (EOS dropped; a line-ending token kept), a newline where the reply did not end a line, and the next
sub-question's ids. So greedy answers equal the in-process ones, and the server's prefix cache reuses the
problem and every earlier step (the paper's KV reuse, done by the server). Each step's `max_tokens` is what the
in-process decoder would allow there, the student's context included.

Problems advance on their own, many at once (`max_in_flight` per server): a problem sends its next step as soon
as its last one returns. Only the tokenizers, `config.json` and `student.json` are read here; no weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dd_prompting.answer_types import AnswerType
from dd_prompting.answers import INVALID
from dd_prompting.distill.rows.format import (
    cot_prompt,
    decomposer_prompt,
    parse_cot,
    parse_subanswer,
    parse_subquestions,
    solver_question,
    solver_start,
)
from dd_prompting.distill.students.artifacts import read_student_metadata
from dd_prompting.distill.students.generation import Vocab, context_limit
from dd_prompting.distill.students.pipelines import CoTResult, StudentResult, question_sentence
from dd_prompting.distill.training.tokenization import encode
from dd_prompting.serving import MalformedReply, ServedModel, ServerError, ServingStats

__all__ = ["ServerSpec", "ServedStudent", "ServedStudentPipeline", "ServedCoTStudent", "server_spec"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSpec:
    """Where one student is served: the OpenAI-compatible base URL, and the model's name there (None: the
    server's only model)."""

    url: str
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model}


def server_spec(value: str | Mapping[str, Any] | ServerSpec, *, role: str) -> ServerSpec:
    """A `servers` entry: a URL, or `{"url": ..., "model": ...}`."""
    if isinstance(value, ServerSpec):
        return value
    if isinstance(value, str) and value:
        return ServerSpec(url=value)
    if isinstance(value, Mapping) and isinstance(value.get("url"), str) and value["url"]:
        unknown = sorted(set(value) - {"url", "model"})
        if unknown:
            raise ValueError(f"servers.{role}: unknown key(s) {unknown}; an entry is a URL or {{url, model}}")
        return ServerSpec(url=value["url"], model=value.get("model") or None)
    raise ValueError(f"servers.{role} must be a URL or {{url = ..., model = ...}}, got {value!r}")


@dataclass
class Step:
    """One reply, as the in-process decoder ends it: the ids it keeps, what goes before the next chunk, and
    whether it ran out of tokens or context."""

    generated: list[int]
    pending: list[int]
    truncated: bool
    prompt_tokens: int = 0
    cached_tokens: int | None = None


class ServedStudent:
    """One trained student on a server: its tokenizer and context from its directory, its replies from the server."""

    def __init__(self, directory: str | Path, *, role: str, server: ServerSpec, max_in_flight: int = 32,
                 timeout: float = 120.0, retries: int = 3):
        from transformers import AutoConfig, AutoTokenizer

        self.directory, self.role, self.server = Path(directory), role, server
        read_student_metadata(directory, role=role)  # role and row format checked, as for a loaded student
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.limit = context_limit(AutoConfig.from_pretrained(directory))
        self.vocab = Vocab(self.tokenizer)  # the in-process decoder's line ends, newline and EOS
        self.newline, self.eos = self.vocab.newline, self.vocab.eos
        self.ends_line = [token for token, ends in enumerate(self.vocab.ends_line) if ends]
        self.client = ServedModel(server.url, tokenizer=self.tokenizer, model=server.model,
                                  max_in_flight=max_in_flight, timeout=timeout, retries=retries)
        self.stats = ServingStats()

    def check(self) -> None:
        """Refuse, in one sentence naming both, a server whose model can't be this student (name or context)."""
        served = self.client.max_model_len()
        if served is not None and served != self.limit:
            raise ServerError(f"{self.server.url} serves {self.client.model!r} with a {served}-token context; the "
                              f"{self.role} student in {self.directory} has {self.limit}: is it serving this student?")

    def first(self, text: str) -> list[int]:
        return encode(self.tokenizer, text, first=True)

    def more(self, text: str) -> list[int]:
        return encode(self.tokenizer, text, first=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, prompt: list[int], *, max_new_tokens: int, stop_at_newline: bool, temperature: float = 0.0,
                 top_p: float | None = None, seed: int | None = None) -> Step:
        """One reply to `prompt`, ended as `distill.students.generation.generate` ends a row."""
        room = self.limit - len(prompt)
        if room < 2:
            return Step(generated=[], pending=[], truncated=True)
        # In process a row stops, truncated, once its next token would leave no room for a newline and one more.
        budget = max(1, min(max_new_tokens, room - len(self.newline)))
        stops = [*self.ends_line, self.eos] if stop_at_newline else [self.eos]
        try:
            reply = self.client.complete(prompt, max_tokens=budget, temperature=temperature, top_p=top_p, seed=seed,
                                         stop_token_ids=stops, text_stop=["\n"] if stop_at_newline else [])
        except MalformedReply as err:  # a failed step, as a reply that ran out of room is in process
            logger.warning("%s student: %s; the step is recorded as failed", self.role, err)
            self.stats.add_malformed()
            return Step(generated=[], pending=[], truncated=True)
        ids = list(reply.token_ids)
        if reply.from_text and stop_at_newline and reply.finish_reason == "stop" and reply.stop_reason == "\n":
            ids += self.newline  # a text server leaves the stop string out
        step = self._end(ids, stop_at_newline=stop_at_newline, stopped=reply.finish_reason == "stop")
        step.prompt_tokens, step.cached_tokens = reply.prompt_tokens or len(prompt), reply.cached_tokens
        self.stats.add(step.prompt_tokens, step.cached_tokens)
        return step

    def _end(self, ids: list[int], *, stop_at_newline: bool, stopped: bool) -> Step:
        if self.eos in ids:  # EOS ends the reply and is not kept; the next chunk starts on a new line
            return Step(generated=ids[:ids.index(self.eos)], pending=list(self.newline), truncated=False)
        if stop_at_newline:
            for at, token in enumerate(ids):
                if self.vocab.ends_line[token]:  # kept, as in process: it already ends the line
                    return Step(generated=ids[:at + 1], pending=[], truncated=False)
        if stopped:  # the server stopped on its own (an EOS it did not return): as an EOS
            return Step(generated=ids, pending=list(self.newline), truncated=False)
        return Step(generated=ids, pending=list(self.newline), truncated=True)


def _serve(problems: Sequence[str], solve_one, max_in_flight: int, progress: bool, desc: str) -> list:
    """`solve_one` on every problem, `max_in_flight` at a time, results in the problems' order."""
    with ThreadPoolExecutor(max_workers=max(1, min(max_in_flight, len(problems))),
                            thread_name_prefix="served-students") as pool:
        futures = [pool.submit(solve_one, index, problem) for index, problem in enumerate(problems)]
        if progress:
            from tqdm.auto import tqdm

            for _done in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="problem"):
                pass
        return [future.result() for future in futures]


def _step_seed(seed: int | None, index: int, step: int) -> int | None:
    return None if seed is None else hash((seed, index, step)) & 0x7FFFFFFF


@dataclass
class ServedStudentPipeline:
    """The decomposer and the solver on servers; `solve` gives what `StudentPipeline.solve` gives."""

    decomposer: ServedStudent
    solver: ServedStudent
    max_subquestions: int = 8
    max_decomposition_tokens: int = 160
    max_answer_tokens: int = 48
    answer_type: AnswerType = field(default_factory=AnswerType)
    max_in_flight: int = 32

    @classmethod
    def from_directories(cls, decomposer_dir: str | Path, solver_dir: str | Path, *,
                         servers: Mapping[str, Any], max_in_flight: int = 32, timeout: float = 120.0,
                         retries: int = 3, **settings) -> ServedStudentPipeline:
        specs = {role: server_spec(servers[role], role=role) for role in ("decomposer", "solver")}
        return cls(
            decomposer=ServedStudent(decomposer_dir, role="decomposer", server=specs["decomposer"],
                                     max_in_flight=max_in_flight, timeout=timeout, retries=retries),
            solver=ServedStudent(solver_dir, role="solver", server=specs["solver"], max_in_flight=max_in_flight,
                                 timeout=timeout, retries=retries),
            max_in_flight=max_in_flight, **settings,
        )

    @property
    def sources(self) -> dict[str, Path]:
        return {"decomposer": self.decomposer.directory, "solver": self.solver.directory}

    @property
    def servers(self) -> dict[str, ServerSpec]:
        return {"decomposer": self.decomposer.server, "solver": self.solver.server}

    def check(self) -> None:
        self.decomposer.check()
        self.solver.check()

    def stats(self) -> dict[str, dict[str, Any]]:
        return {"decomposer": self.decomposer.stats.to_dict(), "solver": self.solver.stats.to_dict()}

    def solve(self, questions: Sequence[str], *, temperature: float = 0.0, top_p: float | None = None,
              seed: int | None = None, progress: bool = False, **_batching) -> list[StudentResult]:
        """Answer each problem: decompose, answer the sub-questions in order, read the final answer."""
        def solve_one(index: int, question: str) -> StudentResult:
            sampling = {"temperature": temperature, "top_p": top_p}
            decomposition = self.decomposer.generate(
                self.decomposer.first(decomposer_prompt(question)), max_new_tokens=self.max_decomposition_tokens,
                stop_at_newline=False, seed=_step_seed(seed, index, 0), **sampling)
            text = self.decomposer.decode(decomposition.generated)
            subquestions = parse_subquestions(text)[: self.max_subquestions]
            fallback = None
            if not subquestions:
                fallback = "the decomposer wrote no sub-questions; asked the problem's question instead"
                subquestions = [question_sentence(question)]
            subanswers, truncated, prompt = [], False, []
            for k, subquestion in enumerate(subquestions):
                if k == 0:
                    prompt = self.solver.first(solver_start(question) + solver_question(subquestion))
                else:
                    prompt = prompt + self.solver.more(solver_question(subquestion))
                step = self.solver.generate(prompt, max_new_tokens=self.max_answer_tokens, stop_at_newline=True,
                                            seed=_step_seed(seed, index, k + 1), **sampling)
                subanswers.append(parse_subanswer(self.solver.decode(step.generated)))
                if step.truncated:
                    truncated = True
                    break
                prompt = prompt + step.generated + step.pending
            complete = len(subanswers) == len(subquestions)
            final = self.answer_type.read_step(subanswers[-1]) if subanswers and complete else INVALID
            return StudentResult(question=question, subquestions=subquestions, subanswers=subanswers, answer=final,
                                 decomposition=text, fallback=fallback, truncated=truncated)

        return _serve([str(q) for q in questions], solve_one, self.max_in_flight, progress, "student pair (served)")


@dataclass
class ServedCoTStudent:
    """The CoT student on a server; `solve` gives what `CoTStudent.solve` gives."""

    student: ServedStudent
    max_new_tokens: int = 200
    answer_type: AnswerType = field(default_factory=AnswerType)
    max_in_flight: int = 32

    @classmethod
    def from_directory(cls, directory: str | Path, *, servers: Mapping[str, Any], max_in_flight: int = 32,
                       timeout: float = 120.0, retries: int = 3, **settings) -> ServedCoTStudent:
        student = ServedStudent(directory, role="cot", server=server_spec(servers["cot"], role="cot"),
                                max_in_flight=max_in_flight, timeout=timeout, retries=retries)
        return cls(student=student, max_in_flight=max_in_flight, **settings)

    @property
    def sources(self) -> dict[str, Path]:
        return {"cot": self.student.directory}

    @property
    def servers(self) -> dict[str, ServerSpec]:
        return {"cot": self.student.server}

    def check(self) -> None:
        self.student.check()

    def stats(self) -> dict[str, dict[str, Any]]:
        return {"cot": self.student.stats.to_dict()}

    def solve(self, questions: Sequence[str], *, temperature: float = 0.0, top_p: float | None = None,
              seed: int | None = None, progress: bool = False, **_batching) -> list[CoTResult]:
        """Answer each problem with one generation; the answer is read from "The answer is ..." (flexibly)."""
        def solve_one(index: int, question: str) -> CoTResult:
            step = self.student.generate(self.student.first(cot_prompt(question)), max_new_tokens=self.max_new_tokens,
                                         stop_at_newline=False, temperature=temperature, top_p=top_p,
                                         seed=_step_seed(seed, index, 0))
            text = self.student.decode(step.generated)
            steps, answer_text = parse_cot(text)
            return CoTResult(question=question, steps=steps, answer=self.answer_type.read(answer_text), text=text,
                             truncated=step.truncated)

        return _serve([str(q) for q in questions], solve_one, self.max_in_flight, progress, "CoT student (served)")
