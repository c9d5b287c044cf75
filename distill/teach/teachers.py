"""Teachers: what turns problems into decomposition traces.

Three kinds share one interface, `Teacher.traces(problems) -> iterator of Trace`:

- `DSPyTeacher` runs `dd_prompting.DecomposedSolver` with any DSPy LM (an API model through
  `dspy.LM`, or a local one), concurrently, every LM call cached on disk and retried on its own;
- `SocraticTeacher` reads the annotated decompositions that come with the data (GSM8K's
  Socratic solutions: the paper's ground-truth setting);
- `GeneratorTeacher` does the same for the built-in generator's problems, so everything runs offline.

`collect_traces` drives any of them into a JSONL file that a killed run resumes: problems whose
traces are already in the file are skipped, every new trace is appended (and flushed) as it
arrives, and nothing is written twice.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dd_prompting.distill.teach.problem_sources import Problem
from dd_prompting.distill.teach.traces import (
    API_ERROR,
    NO_DECOMPOSITION,
    UNPARSABLE,
    Trace,
    TraceWriter,
    latest_traces,
    read_traces,
    repair_partial_tail,
)

from dd_prompting.answer_types import AnswerType

if TYPE_CHECKING:
    from dd_prompting.distill.run.run_config import RunConfig

__all__ = [
    "make_teacher",
    "Teacher",
    "DSPyTeacher",
    "SocraticTeacher",
    "GeneratorTeacher",
    "collect_traces",
    "TEACHER_ERROR",
]

logger = logging.getLogger(__name__)

TEACHER_ERROR = "teacher_error"  # an unexpected exception while running the teacher (not the API, not parsing)


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
    from the last step (`AnswerType.read_step`: a number's calculation result, or the option named), as
    the student pair reads it; a last step whose answer is not the gold one gives a trace marked
    incorrect, which filtering drops by default.
    """

    def __init__(self, *, name: str = "socratic", answer_type: AnswerType | None = None):
        self.name = name
        self.answer_type = answer_type or AnswerType()

    def traces(self, problems: Iterable[Problem]) -> Iterator[Trace]:
        from dd_prompting import INVALID

        for problem in problems:
            if not problem.subquestions or problem.steps is None:
                yield Trace(
                    problem.id, problem.question, problem.gold, teacher=self.name,
                    error=f"{UNPARSABLE}: the problem has no annotated decomposition",
                )
                continue
            subquestions, steps = list(problem.subquestions), list(problem.steps)
            answer = self.answer_type.read_step(steps[-1]) if steps else INVALID
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
                correct=error is None and self.answer_type.matches(answer, problem.gold),
                teacher=self.name,
                error=error,
            )


class GeneratorTeacher(SocraticTeacher):
    """The built-in generator's exact decompositions as traces (its problems come from `generated_problems`)."""

    def __init__(self):
        super().__init__(name="generator")  # numeric answers


class DSPyTeacher(Teacher):
    """Any DSPy LM running `DecomposedSolver` over the problems.

    Problems run concurrently (`threads`), each in its own copy of the program. Every LM call goes
    through one `dd_prompting.models.CachingLM` (`wrap_lm`): it is looked up in the on-disk call cache first
    (`cache_dir`; keyed on the model, its endpoint, the prompt and the sampling settings, never a
    credential), retried on its own with back-off after a rate limit, server error or time-out
    (`retries`, `retry_backoff`), and stored as soon as it returns. So a killed run, resumed, repeats no
    call that had finished, and a failed step never pays for the decomposition before it again. A call
    that fails for good makes the problem a failed trace (`api_error`) and the run goes on; output that
    does not parse becomes an `unparsable` trace.

    With `samples > 1`, each problem is asked `samples` times at `temperature` (distinct `rollout_id`s,
    so the cache keeps one reply per sample); filtering keeps the distinct correct ones.

    A trace is correct when its final answer equals the gold one, or, given a DSPy `metric`, when
    `metric(example, prediction)` is true for the problem as a `dspy.Example` of the program's fields.
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
        threads: int = 8,
        cache_dir: str | os.PathLike | None = None,
        retries: int = 3,
        retry_backoff: float = 1.0,
        name: str | None = None,
        progress: bool = True,
        metric: Any | None = None,
        answer_type: AnswerType | None = None,
        batch: Any | None = None,
    ):
        import dspy

        from dd_prompting import DecomposedSolver
        from dd_prompting.models import (
            CachingLM,
            CallCache,
            lookup_model_pricing,
            wrap_lm,
        )

        if not isinstance(lm, dspy.BaseLM):
            raise TypeError(f"DSPyTeacher: lm must be a dspy.LM (or another dspy.BaseLM), got {type(lm).__name__}")
        if samples < 1:
            raise ValueError(f"DSPyTeacher: samples must be at least 1, got {samples}")
        if samples > 1 and not temperature:
            raise ValueError(
                f"DSPyTeacher: samples={samples} needs a temperature above 0 (got {temperature}); "
                "at temperature 0 every sample would be the same"
            )
        if threads < 1:
            raise ValueError(f"DSPyTeacher: threads must be at least 1, got {threads}")
        if retries < 0 or retry_backoff < 0:
            raise ValueError(f"DSPyTeacher: retries and retry_backoff must be >= 0, got {retries} and {retry_backoff}")
        if not isinstance(lm, CachingLM):
            # A bare dspy.LM: give it the one cache and retry policy (its own are turned off).
            cache = CallCache(cache_dir) if cache_dir is not None else None
            lm = wrap_lm(lm, cache=cache, pricing=lookup_model_pricing(lm.model), retries=retries,
                         backoff=retry_backoff)
        self.lm = lm
        self.program = program if program is not None else DecomposedSolver(
            signature, mode=mode, max_subquestions=max_subquestions, demos="math"
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
        self.threads = threads
        self.progress = progress
        self.metric = metric
        self.answer_type = answer_type or AnswerType()
        self.name = name or f"dspy:{lm.model}:{self.mode}"
        # The teacher's ModelConfig when its calls go through a batch API, in rounds (`collect_traces`).
        self.batch = batch if batch is not None and getattr(batch, "batch", False) else None

    # -- public -------------------------------------------------------------------------------------

    def traces(self, problems: Iterable[Problem]) -> Iterator[Trace]:
        """Yield every sample's trace as each problem finishes (completion order, not input order)."""
        from tqdm.auto import tqdm

        problems = list(problems)
        if not problems:
            return
        pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="teacher")
        futures = [pool.submit(self._problem_traces, problem) for problem in problems]
        try:
            with tqdm(total=len(problems), desc=f"teacher {self.lm.model}", unit="problem", disable=not self.progress) as bar:
                for future in as_completed(futures):
                    yield from future.result()
                    bar.update(1)
        finally:
            # A consumer that stops early (a killed run, an exception) cancels the problems not started.
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self.lm.call_cache is not None:
            self.lm.call_cache.close()

    # -- one problem --------------------------------------------------------------------------------

    def _problem_traces(self, problem: Problem) -> list[Trace]:
        # In a batch round a sample waiting on a batch has no trace yet (None); the others are written.
        traces = [self._sample_trace(problem, sample) for sample in range(self.samples)]
        return [trace for trace in traces if trace is not None]

    def _sample_trace(self, problem: Problem, sample: int) -> Trace | None:
        import dspy
        from dspy.utils.exceptions import LMError

        from dd_prompting.batches import is_pending
        from dd_prompting.models import recording, redact

        settings: dict[str, Any] = {}
        if self.temperature is not None:
            settings["temperature"] = self.temperature
        if self.samples > 1:
            settings["rollout_id"] = sample
        lm = self.lm.copy(**settings) if settings else self.lm
        program = self.program.deepcopy()
        with recording() as log:
            try:
                with dspy.context(lm=lm):
                    prediction = program(**{self._input: problem.question})
            except Exception as err:  # noqa: BLE001 - one bad problem must not end the run; it is recorded
                if is_pending(err):  # a batch round: the call waits on a batch, and the sample on the next round
                    return None
                message = redact(f"{type(err).__name__}: {err}".splitlines()[0][:500], self.lm.secrets)
                if isinstance(err, LMError):
                    logger.warning("Teacher call failed for %s (sample %d): %s", problem.id, sample, message)
                    return self._failed(problem, sample, f"{API_ERROR}: {message}")
                logger.warning("Unexpected error while the teacher solved %s (sample %d): %s", problem.id, sample,
                               message)
                return self._failed(problem, sample, f"{TEACHER_ERROR}: {message}")
        usage = {"prompt_tokens": log.prompt_tokens, "completion_tokens": log.completion_tokens,
                 "total_tokens": log.prompt_tokens + log.completion_tokens, "calls": len(log.calls),
                 "cached_calls": sum(call.cached for call in log.calls)}
        result = {
            "subquestions": [str(item) for item in prediction.get("subquestions") or []],
            "subanswers": [str(item) for item in prediction.get("subanswers") or []],
            "answer": None if prediction.get(self._output) is None else str(prediction.get(self._output)),
            "fallback": prediction.get("fallback"),
            "parse_failures": list(prediction.get("parse_failures") or []),
            "usage": usage,
            "cost": log.cost,
            "metric": None if self.metric is None else self._score(problem, prediction),
        }
        return self._to_trace(problem, sample, result)

    def _score(self, problem: Problem, prediction: Any) -> bool:
        import dspy

        # The gold answer as the program's answer field holds it (18.0 for a float field, True for "yes").
        gold = self.answer_type.typed(problem.gold, self.program.signature.output_fields[self._output].annotation)
        example = dspy.Example(**{self._input: problem.question, self._output: gold}).with_inputs(self._input)
        try:
            return bool(self.metric(example, prediction))
        except Exception as err:  # noqa: BLE001 - a metric that fails on one prediction marks it wrong, loudly
            logger.warning("The metric failed on %s: %s: %s", problem.id, type(err).__name__, err)
            return False

    def _to_trace(self, problem: Problem, sample: int, result: dict[str, Any]) -> Trace:
        from dd_prompting import INVALID

        subquestions, subanswers = result["subquestions"], result["subanswers"]
        answer = self.answer_type.read(result["answer"]) if result["answer"] is not None else INVALID
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
            what = "number" if self.answer_type.kind == "number" else f"one of {', '.join(self.answer_type.options)}"
            error = f"{UNPARSABLE}: no {what} in the final answer {str(result['answer'])[:80]!r}"
        return Trace(
            id=problem.id,
            question=problem.question,
            gold=problem.gold,
            subquestions=subquestions,
            subanswers=subanswers,
            answer=answer,
            correct=error is None and (self.answer_type.matches(answer, problem.gold) if result.get("metric") is None
                                       else result["metric"]),
            teacher=self.name,
            usage=result["usage"],
            cost=result["cost"],
            error=error,
            sample=sample,
        )

    def _failed(self, problem: Problem, sample: int, error: str) -> Trace:
        return Trace(problem.id, problem.question, problem.gold, teacher=self.name, error=error, sample=sample)


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

    A teacher called in batches (`DSPyTeacher(batch=...)`, `batch = true`) runs in rounds
    (`dd_prompting.batches.BatchRounds`): each pass writes the traces that finished from the cache,
    and the calls it could not answer go out as one batch; the round's manifest (`batches.json`) is
    kept beside `path`, so a killed run re-attaches to its pending batch.

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
        def one_pass() -> None:
            nonlocal todo
            for trace in teacher.traces(todo):
                if trace.key in done:
                    continue
                writer.write(trace)
                done.add(trace.key)
            todo = [problem for problem in todo if any((problem.id, s) not in done for s in range(teacher.samples))]

        if getattr(teacher, "batch", None) is not None:
            _in_batch_rounds(teacher, path, one_pass)
        else:
            one_pass()
    wanted = set(ids)
    return [trace for trace in latest_traces(read_traces(path)) if trace.id in wanted]


def _in_batch_rounds(teacher: DSPyTeacher, path: Path, one_pass) -> None:
    from dd_prompting.batches import MANIFEST_FILE, BatchManifest, BatchRounds

    rounds = BatchRounds(teacher.lm.engine, teacher.batch, BatchManifest(path.parent / MANIFEST_FILE),
                         progress=teacher.progress, cancel_hint=f"`dd-distill cancel-batches --run-dir {path.parent}`")
    summary = rounds.run(one_pass)
    logger.info("%s: %d passes, %d batch(es), %d calls sent, %d answered, %d sent again, %d failed for good; "
                "$%.4f billed", teacher.name, summary.passes, len(summary.batches), summary.lines_sent,
                summary.answered, summary.resent, summary.given_up, summary.billed)


def make_teacher(config: RunConfig) -> Teacher:
    """The teacher a run's config describes: the generator, the Socratic annotations, or a model."""
    from dd_prompting.distill.run.run_config import ConfigError

    from dd_prompting.models import CallCache, build_lm

    teacher = config.teacher
    if teacher.kind == "generator":
        return GeneratorTeacher()
    if teacher.kind == "socratic":
        return SocraticTeacher(answer_type=config.data.answers)
    if teacher.kind == "program":
        raise ConfigError(
            "this run's teacher is a DSPy program given in Python (teacher.kind = 'program'): its traces come from "
            "DecompositionDistillation.compile(...), which resumes them; dd-distill can build, train and evaluate it"
        )
    from dd_prompting.batches import check_batchable

    # The one model factory and call cache that dd-evals uses: every call cached as it returns, retried on its own.
    cache = None if teacher.cache_dir in (None, "", "none") else CallCache(teacher.cache_dir)
    check_batchable(teacher, cache=cache is not None)  # before any call
    return DSPyTeacher(
        lm=build_lm(teacher, cache=cache),
        mode=teacher.mode,
        max_subquestions=teacher.max_subquestions,
        samples=teacher.samples,
        temperature=teacher.temperature,
        threads=teacher.threads,
        answer_type=config.data.answers,
        batch=teacher if teacher.batch else None,
    )
