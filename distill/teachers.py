"""Teachers: what turns problems into decomposition traces.

Three kinds share one interface, `Teacher.traces(problems) -> iterator of Trace`:

- `DSPyTeacher` runs `dd_prompting.DecomposedSolver` with any DSPy LM (an API model through
  `dspy.LM`, or a local one), concurrently, with every problem's result cached on disk;
- `SocraticTeacher` reads the annotated decompositions that come with the data (GSM8K's
  Socratic solutions: the paper's ground-truth setting);
- `GeneratorTeacher` does the same for the built-in generator's problems, so everything runs offline.

`collect_traces` drives any of them into a JSONL file that a killed run resumes: problems whose
traces are already in the file are skipped, every new trace is appended (and flushed) as it
arrives, and nothing is written twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal

from dd_prompting.distill.generator import GeneratorConfig
from dd_prompting.distill.problems import Problem, generated_problems
from dd_prompting.distill.traces import (
    API_ERROR,
    NO_DECOMPOSITION,
    UNPARSABLE,
    Trace,
    TraceWriter,
    latest_traces,
    read_traces,
    repair_partial_tail,
)

__all__ = [
    "Teacher",
    "DSPyTeacher",
    "SocraticTeacher",
    "GeneratorTeacher",
    "collect_traces",
    "step_result",
    "TEACHER_ERROR",
]

logger = logging.getLogger(__name__)

TEACHER_ERROR = "teacher_error"  # an unexpected exception while running the teacher (not the API, not parsing)

# Bump when the cached value's shape changes, so old entries are not misread.
_CACHE_VERSION = 1
# LM settings that never go into a cache key: credentials and connection details.
_CLIENT_SETTINGS = {"api_base", "base_url", "headers", "extra_headers", "timeout", "num_retries", "rollout_id"}
_SECRET_NAME = re.compile(r"key|secret|token_provider|password|auth|organization|project", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_\-]{8,}")


class Teacher(ABC):
    """Turns problems into traces; `samples` traces per problem (indices 0 .. samples-1)."""

    name: str = "teacher"
    samples: int = 1

    @abstractmethod
    def traces(self, problems: Iterable[Problem]) -> Iterator[Trace]:
        """Yield the traces of `problems` (in any order), failures included."""


class SocraticTeacher(Teacher):
    """Annotated decompositions from the data itself, such as GSM8K's Socratic solutions.

    A problem without an annotation gives a failed trace (`unparsable`). The final answer is read
    from the last step (`step_result`), as the student pair reads it; a last step whose result is
    not the gold answer gives a trace marked incorrect, which filtering drops by default.
    """

    def __init__(self, *, name: str = "socratic"):
        self.name = name

    def traces(self, problems: Iterable[Problem]) -> Iterator[Trace]:
        from dd_prompting import INVALID, answers_match

        for problem in problems:
            if not problem.subquestions or problem.steps is None:
                yield Trace(
                    problem.id, problem.question, problem.gold, teacher=self.name,
                    error=f"{UNPARSABLE}: the problem has no annotated decomposition",
                )
                continue
            subquestions, steps = list(problem.subquestions), list(problem.steps)
            answer = step_result(steps[-1]) if steps else INVALID
            error = None
            if len(subquestions) != len(steps):
                error = f"{UNPARSABLE}: {len(subquestions)} sub-questions but {len(steps)} steps"
            yield Trace(
                id=problem.id,
                question=problem.question,
                gold=problem.gold,
                subquestions=subquestions,
                subanswers=steps,
                answer=answer,
                correct=error is None and answers_match(answer, problem.gold),
                teacher=self.name,
                error=error,
            )


class GeneratorTeacher(SocraticTeacher):
    """The built-in generator: draws problems (`problems`) whose exact decompositions are the traces."""

    def __init__(self, *, config: GeneratorConfig | None = None, seed: int = 0):
        super().__init__(name="generator")
        self.config = config or GeneratorConfig()
        self.seed = seed

    def problems(self, n: int, *, seed: int | None = None, exclude: Sequence[Problem] = ()) -> list[Problem]:
        """`n` generated problems (`seed` defaults to the teacher's), sharing no arithmetic with `exclude`."""
        seed = self.seed if seed is None else seed
        return generated_problems(n, seed=seed, config=self.config, exclude=list(exclude))


class DSPyTeacher(Teacher):
    """Any DSPy LM running `DecomposedSolver` over the problems.

    Problems run concurrently (`num_threads`), each in its own copy of the program and the LM.
    Each problem's result is cached on disk in `cache_dir` (diskcache), keyed on the model, its
    generation settings (never credentials or the address), the program's prompts and demos, the
    problem, the sample index and the temperature: a rerun, or a run resumed after a crash, pays
    for nothing twice. Failed calls are not cached.

    API errors that are worth retrying (rate limits, server errors, time-outs, dropped connections)
    are retried `retries` times with exponential back-off from `backoff` seconds (or the server's
    `Retry-After`), on top of the LM's own `num_retries`; then the problem becomes a failed trace
    (`api_error`) and the run goes on. Output that does not parse becomes an `unparsable` trace.

    With `samples > 1`, each problem is asked `samples` times at `temperature` (distinct
    `rollout_id`s, so the LM's own cache does not return one answer for all); filtering keeps the
    distinct correct ones.
    """

    def __init__(
        self,
        *,
        lm: Any,
        mode: Literal["joint", "iterative"] = "joint",
        signature: str = "question -> answer",
        max_subquestions: int = 8,
        program: Any | None = None,
        samples: int = 1,
        temperature: float | None = None,
        num_threads: int = 8,
        cache_dir: str | os.PathLike | None = None,
        retries: int = 3,
        backoff: float = 1.0,
        name: str | None = None,
        progress: bool = True,
    ):
        import dspy

        from dd_prompting import DecomposedSolver

        if not isinstance(lm, dspy.BaseLM):
            raise TypeError(f"DSPyTeacher: lm must be a dspy.LM (or another dspy.BaseLM), got {type(lm).__name__}")
        if samples < 1:
            raise ValueError(f"DSPyTeacher: samples must be at least 1, got {samples}")
        if samples > 1 and not temperature:
            raise ValueError(
                f"DSPyTeacher: samples={samples} needs a temperature above 0 (got {temperature}); "
                "at temperature 0 every sample would be the same"
            )
        if num_threads < 1:
            raise ValueError(f"DSPyTeacher: num_threads must be at least 1, got {num_threads}")
        if retries < 0 or backoff < 0:
            raise ValueError(f"DSPyTeacher: retries and backoff must be >= 0, got {retries} and {backoff}")
        self.lm = lm
        self.program = program if program is not None else DecomposedSolver(
            signature, mode=mode, max_subquestions=max_subquestions
        )
        inputs = list(self.program.signature.input_fields)
        outputs = list(self.program.signature.output_fields)
        if len(inputs) != 1 or not outputs:
            raise ValueError(
                f"DSPyTeacher: the program's signature needs exactly one input field (the question) and an output; "
                f"got inputs {inputs} and outputs {outputs}"
            )
        self._input, self._output = inputs[0], outputs[0]
        self.mode = getattr(self.program, "mode", mode)
        self.samples = samples
        self.temperature = temperature
        self.num_threads = num_threads
        self.retries = retries
        self.backoff = backoff
        self.progress = progress
        self.name = name or f"dspy:{lm.model}:{self.mode}"
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._cache = None
        self._cache_lock = threading.Lock()
        self._program_hash = _sha256(json.dumps(self.program.dump_state(), sort_keys=True, default=str))

    # -- public -------------------------------------------------------------------------------------

    def traces(self, problems: Iterable[Problem]) -> Iterator[Trace]:
        """Yield every sample's trace as each problem finishes (completion order, not input order)."""
        from tqdm.auto import tqdm

        problems = list(problems)
        if not problems:
            return
        pool = ThreadPoolExecutor(max_workers=self.num_threads, thread_name_prefix="teacher")
        futures = [pool.submit(self._problem_traces, problem) for problem in problems]
        try:
            with tqdm(total=len(problems), desc=f"teacher {self.lm.model}", unit="problem", disable=not self.progress) as bar:
                for future in as_completed(futures):
                    yield from future.result()
                    bar.update(1)
        finally:
            # A consumer that stops early (a killed run, an exception) cancels the problems not started.
            pool.shutdown(wait=False, cancel_futures=True)

    def cache_key(self, question: str, sample: int) -> str:
        """The disk-cache key of one sample of one problem (a hash; no credentials go into it)."""
        settings = {
            name: value
            for name, value in sorted(self.lm.kwargs.items())
            if name not in _CLIENT_SETTINGS and name != "temperature" and not _SECRET_NAME.search(name)
        }
        payload = {
            "version": _CACHE_VERSION,
            "model": self.lm.model,
            "model_type": getattr(self.lm, "model_type", None),
            "settings": settings,
            "program": self._program_hash,
            "question": question,
            "sample": sample,
            "temperature": self._temperature(),
        }
        return _sha256(json.dumps(payload, sort_keys=True, default=str))

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    # -- one problem --------------------------------------------------------------------------------

    def _problem_traces(self, problem: Problem) -> list[Trace]:
        return [self._sample_trace(problem, sample) for sample in range(self.samples)]

    def _sample_trace(self, problem: Problem, sample: int) -> Trace:
        from dspy.utils.exceptions import LMError

        cache = self._open_cache()
        key = self.cache_key(problem.question, sample)
        result = cache.get(key) if cache is not None else None
        if result is None:
            try:
                result = self._ask(problem.question, sample)
            except LMError as err:
                logger.warning("Teacher call failed for %s (sample %d): %s", problem.id, sample, self._redact(err))
                return self._failed(problem, sample, f"{API_ERROR}: {type(err).__name__}: {self._redact(err)}")
            except Exception as err:  # noqa: BLE001 - one bad problem must not end the run; it is recorded
                logger.exception("Unexpected error while the teacher solved %s (sample %d)", problem.id, sample)
                return self._failed(problem, sample, f"{TEACHER_ERROR}: {type(err).__name__}: {self._redact(err)}")
            if cache is not None:
                cache.set(key, result)
        return self._to_trace(problem, sample, result)

    def _ask(self, question: str, sample: int) -> dict[str, Any]:
        import dspy
        from dspy.utils.exceptions import is_retryable_lm_error

        overrides: dict[str, Any] = {}
        if self.temperature is not None:
            overrides["temperature"] = self.temperature
        if self.samples > 1:
            overrides["rollout_id"] = sample
        program = self.program.deepcopy()
        for attempt in range(self.retries + 1):
            lm = self.lm.copy(**overrides)  # a fresh history per attempt: its usage is this problem's
            try:
                with dspy.context(lm=lm):
                    prediction = program(**{self._input: question})
                break
            except Exception as err:
                if not is_retryable_lm_error(err) or attempt == self.retries:
                    raise
                hint = getattr(err, "retry_after", None)
                delay = float(hint) if isinstance(hint, (int, float)) and hint >= 0 else self.backoff * 2**attempt
                logger.info("Teacher call failed (%s); retry %d/%d in %.1fs", type(err).__name__, attempt + 1,
                            self.retries, delay)
                time.sleep(delay)
        usage, cost = _usage_and_cost(lm.history)
        return {
            "subquestions": [str(item) for item in prediction.get("subquestions") or []],
            "subanswers": [str(item) for item in prediction.get("subanswers") or []],
            "answer": None if prediction.get(self._output) is None else str(prediction.get(self._output)),
            "fallback": prediction.get("fallback"),
            "parse_failures": list(prediction.get("parse_failures") or []),
            "usage": usage,
            "cost": cost,
        }

    def _to_trace(self, problem: Problem, sample: int, result: dict[str, Any]) -> Trace:
        from dd_prompting import INVALID, answers_match, extract_answer

        subquestions, subanswers = result["subquestions"], result["subanswers"]
        answer = extract_answer(result["answer"]) if result["answer"] is not None else INVALID
        fallback, failures = result["fallback"], result["parse_failures"]
        error = None
        if fallback:
            kind = UNPARSABLE if str(fallback).startswith("unparsable") else NO_DECOMPOSITION
            error = f"{kind}: {fallback}"
        elif failures:
            error = f"{UNPARSABLE}: the output of {', '.join(failures)} did not parse"
        elif len(subquestions) != len(subanswers):
            error = f"{UNPARSABLE}: {len(subquestions)} sub-questions but {len(subanswers)} sub-answers"
        elif answer == INVALID:
            error = f"{UNPARSABLE}: no number in the final answer {str(result['answer'])[:80]!r}"
        return Trace(
            id=problem.id,
            question=problem.question,
            gold=problem.gold,
            subquestions=subquestions,
            subanswers=subanswers,
            answer=answer,
            correct=error is None and answers_match(answer, problem.gold),
            teacher=self.name,
            usage=result["usage"],
            cost=result["cost"],
            error=error,
            sample=sample,
        )

    def _failed(self, problem: Problem, sample: int, error: str) -> Trace:
        return Trace(problem.id, problem.question, problem.gold, teacher=self.name, error=error, sample=sample)

    # -- helpers ------------------------------------------------------------------------------------

    def _temperature(self) -> float | None:
        return self.temperature if self.temperature is not None else self.lm.kwargs.get("temperature")

    def _open_cache(self):
        if self.cache_dir is None:
            return None
        with self._cache_lock:
            if self._cache is None:
                import diskcache

                self.cache_dir.mkdir(parents=True, exist_ok=True)
                self._cache = diskcache.Cache(str(self.cache_dir))
            return self._cache

    def _redact(self, err: BaseException | str) -> str:
        """The error's text with any credential the LM holds (and anything shaped like a key) masked."""
        text = str(err).splitlines()[0][:500] if str(err) else type(err).__name__
        for name, value in self.lm.kwargs.items():
            if _SECRET_NAME.search(name) and isinstance(value, str) and len(value) >= 4:
                text = text.replace(value, "***")
        return _SECRET_VALUE.sub(r"\1-***", text)


def step_result(step: str) -> str:
    """The result a step computes: the number right after its last "=", else its last number.

    >>> step_result("So there are 9 + 6 = 15 liters of water out of the 24 liters.")
    '15'
    >>> step_result("She has 12 apples left.")
    '12'
    """
    from dd_prompting import INVALID, canonical_number, extract_answer

    _, equals, after = step.rpartition("=")
    if equals:
        result = canonical_number(after)
        if result != INVALID:
            return result
    return extract_answer(step)


def _usage_and_cost(history: list[dict]) -> tuple[dict[str, int], float | None]:
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "calls": 0}
    costs = []
    for entry in history:
        usage["calls"] += 1
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = (entry.get("usage") or {}).get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                usage[name] += value
        if isinstance(entry.get("cost"), (int, float)):
            costs.append(float(entry["cost"]))
    return usage, (sum(costs) if costs else None)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def collect_traces(
    teacher: Teacher,
    problems: Sequence[Problem],
    path: str | os.PathLike,
    *,
    retry_failed: bool = True,
) -> list[Trace]:
    """Run `teacher` over `problems`, appending each trace to the JSONL file `path` as it arrives.

    Resumable: a half-written last line left by a killed run is cut, and problems whose traces
    (every sample) are already in the file are skipped; a problem partly done is asked again but
    only its missing samples are written (a cached teacher answers the rest for free). With
    `retry_failed`, problems whose last record is an API error are asked again, and the new
    record replaces the old one (the last record of an `(id, sample)` wins).

    Returns the latest trace of each `(id, sample)` of `problems`, as now in the file.
    """
    ids = [problem.id for problem in problems]
    duplicates = sorted(problem_id for problem_id, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"collect_traces: problem ids must be unique; repeated: {duplicates[:5]}")
    path = Path(path)
    repair_partial_tail(path)
    existing = latest_traces(read_traces(path)) if path.exists() else []
    done = {trace.key for trace in existing if not (retry_failed and trace.failure == API_ERROR)}
    todo = [problem for problem in problems if any((problem.id, s) not in done for s in range(teacher.samples))]
    if len(todo) < len(problems):
        logger.info("%s: %d of %d problems already have traces; asking the teacher for %d",
                    path, len(problems) - len(todo), len(problems), len(todo))
    with TraceWriter(path) as writer:
        for trace in teacher.traces(todo):
            if trace.key in done:
                continue
            writer.write(trace)
            done.add(trace.key)
    wanted = set(ids)
    return [trace for trace in latest_traces(read_traces(path)) if trace.id in wanted]
