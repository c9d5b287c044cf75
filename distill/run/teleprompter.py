"""`DecompositionDistillation`: compile a `DecomposedSolver` program into a small local decomposer and solver.

    from dd_prompting import DecomposedSolver
    from dd_prompting.distill.run.teleprompter import DecompositionDistillation

    distill = DecompositionDistillation(teacher=dspy.LM("openai/gpt-4o-mini"), student="gpt2")
    students = distill.compile(DecomposedSolver("question -> answer: float"), trainset=trainset, valset=valset)
    students(question="...").answer         # answered by the two local students, no LM called

It is `dd-distill` driven from Python, over the same run directory and the same stages
(`distill.run.pipeline.run_stages`): the teacher program runs over the trainset (concurrently, every call
cached, the traces appended as they arrive, kept when the metric passes), the decomposer and solver
rows are built from the traces, the students are trained with the transformers Trainer (checkpoints,
resume), and a valset is evaluated into `report.md` with intervals and a paired test. Calling
`compile` again on the same run directory resumes where it stopped and repeats no finished teacher
call; `dd-distill build|train|evaluate --run-dir <dir>` works on the directory too (its traces
stage needs the program, so only `compile` resumes that).

`hybrid=True` trains only the decomposer and returns the program with the student writing the
sub-questions and the teacher's LM solving them. `train_cot=True` also trains a chain-of-thought
student of the same size on the same traces, the baseline the report compares the pair against.

The answer field's type says what the answers are: a number (`float`, `int` or `str`), yes/no
(`bool`) or one of a set (`Literal["A", "B", "C"]`); the students' answer is what their last step
computes or names, read by `dd_prompting.AnswerType.read_step`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter

from dd_prompting.answer_types import AnswerType
from dd_prompting.answers import INVALID
from dd_prompting.config import ConfigError
from dd_prompting.data.problems import Problem

__all__ = ["DecompositionDistillation"]

logger = logging.getLogger(__name__)


class DecompositionDistillation(Teleprompter):
    """Distil a `DecomposedSolver` program's reasoning into local students (see the module docstring).

    Args:
        teacher: The teacher: a `dspy.LM` running the program being compiled, or a DSPy program
            (a `DecomposedSolver`) of its own. Default: the program's LM, else `dspy.settings.lm`.
        student: The students' base model: "gpt2" (any causal LM on the hub or in a directory) or
            "tiny" (a GPT-2 built from a config, offline).
        metric: `metric(example, prediction)` deciding which teacher traces are trained on; default:
            the final answer equals the example's (as numbers, or as the yes/no or option a `bool`
            or `Literal[...]` answer field holds).
        run_dir: Where the run lives (default: `runs/distill-<hash of the teacher, student and trainset>`).
        hybrid: Distil only the decomposer; the returned program solves with the teacher's LM.
        train_cot: Also train the chain-of-thought student (the baseline of the report).
        train: `TrainConfig` fields for every student (`max_steps`, `learning_rate`, `lora_r`, ...);
            `decomposer`, `solver` and `cot` override them for one student.
        seed: The students' seed.
        train_workers: Students trained at once, each with a share of the torch threads (default: 2 on a
            CPU with two threads or more when each side has 200 steps or more; 1: one after another).
        threads, retries, cache_dir: The teacher's concurrent calls, retries of a failed call, and
            on-disk call cache (shared with `dd-distill`; "none" turns it off).
        batch_size: Problems the compiled students decode together in `batch` and evaluation.
    """

    def __init__(
        self,
        *,
        teacher: dspy.BaseLM | dspy.Module | None = None,
        student: str = "gpt2",
        metric: Callable | None = None,
        run_dir: str | Path | None = None,
        hybrid: bool = False,
        train_cot: bool = False,
        train: dict[str, Any] | None = None,
        decomposer: dict[str, Any] | None = None,
        solver: dict[str, Any] | None = None,
        cot: dict[str, Any] | None = None,
        seed: int = 0,
        train_workers: int | None = None,
        threads: int = 8,
        retries: int = 3,
        cache_dir: str | None = "~/.cache/dd-distill/teacher",
        batch_size: int = 32,
        progress: bool = True,
    ):
        super().__init__()
        self.teacher = teacher
        self.student = student
        self.metric = metric
        self.run_dir = run_dir
        self.hybrid = hybrid
        self.train_cot = train_cot
        self.train = dict(train or {})
        self.overrides = {"decomposer": dict(decomposer or {}), "solver": dict(solver or {}), "cot": dict(cot or {})}
        self.seed = seed
        self.train_workers = train_workers
        self.threads = threads
        self.retries = retries
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.progress = progress

    def compile(self, student: dspy.Module, *, trainset: Sequence[dspy.Example], teacher: Any = None,
                valset: Sequence[dspy.Example] | None = None, **kwargs: Any) -> dspy.Module:
        """Train students that do what `student` (a `DecomposedSolver`) does; returns the compiled program.

        Without `hybrid`, a `distill.students.StudentModule` with the program's signature; with it,
        a copy of the program whose `decompose` is the decomposer student. `valset` (optional) is
        evaluated into the run directory's `report.md`.
        """
        from dd_prompting.distill.run.directory import Run
        from dd_prompting.distill.run.pipeline import run_stages, write_run_report
        from dd_prompting.distill.run.stages import stage_train
        from dd_prompting.distill.students.modules import StudentModule
        from dd_prompting.distill.teach.teachers import DSPyTeacher

        from dd_prompting import DecomposedSolver

        if kwargs:
            raise TypeError(f"DecompositionDistillation.compile got unexpected arguments {sorted(kwargs)}")
        if not isinstance(student, DecomposedSolver):
            raise TypeError(f"DecompositionDistillation compiles a DecomposedSolver program, got {type(student).__name__}; "
                            "wrap your task's signature in DecomposedSolver(...)")
        input_name, output_name = _fields(student.signature)
        answers = AnswerType.of(student.signature.output_fields[output_name].annotation)
        train = _problems(trainset, "trainset", input_name, output_name, answers)
        held_out = _problems(valset or [], "valset", input_name, output_name, answers)
        if not train:
            raise ValueError("DecompositionDistillation.compile: trainset is empty")
        teacher_lm, teacher_program = self._teacher(student, teacher if teacher is not None else self.teacher)
        run_dir = Path(self.run_dir) if self.run_dir is not None else _default_run_dir(teacher_lm, self.student, train)
        held_out = _check_same_problems(run_dir, train, held_out, answers)
        run = Run(run_dir, self._run_config(teacher_lm, teacher_program, train, held_out, answers))
        logger.info("DecompositionDistillation: run directory %s", run.dir)

        with run.writer("DecompositionDistillation.compile"):  # one writer per run directory
            traces_teacher = DSPyTeacher(
                lm=teacher_lm, program=teacher_program, metric=self.metric, threads=self.threads, retries=self.retries,
                cache_dir=None if self.cache_dir in (None, "", "none") else Path(self.cache_dir).expanduser(),
                progress=self.progress, answer_type=answers,
            )
            try:
                run_stages(run, ("traces", "build"), teacher=traces_teacher, problems=(train, held_out))
            finally:
                traces_teacher.close()

            if self.hybrid:
                # Only the decomposer: the train stage is not marked finished, so a later compile without
                # hybrid (or `dd-distill train`) trains the solver and reuses this decomposer.
                stage_train(run, roles=("decomposer",))
                return self._hybrid_program(student, teacher_lm, run)
            run_stages(run, ("train", "evaluate") if held_out else ("train",))
            if held_out:
                write_run_report(run)
                logger.info("DecompositionDistillation: held-out report in %s", run.dir / "report.md")
        return StudentModule.from_run(run.dir, signature=student.signature, batch_size=self.batch_size)

    @staticmethod
    def resume(run_dir: str | Path, *, signature: Any = "question -> answer: float", batch_size: int = 32,
               student: str = "pair") -> dspy.Module:
        """Finish a run directory started by `dd-distill` (or by `compile`) and return its students as a program.

        The stages left are run with the directory's own settings, as `dd-distill run --run-dir` does;
        `student="cot"` returns the CoT student instead of the pair.
        """
        from dd_prompting.distill.run.directory import STAGES, Run
        from dd_prompting.distill.run.pipeline import run_stages, write_run_report
        from dd_prompting.distill.students.modules import StudentModule

        run = Run.open(run_dir)
        if run.config.teacher.kind == "program" and "traces" not in run.stages():
            raise ConfigError(f"{run.dir}: its teacher is a DSPy program and its traces are unfinished; "
                              "call compile(program, trainset=...) with the same program and examples to resume them")
        with run.writer("DecompositionDistillation.resume"):
            run_stages(run, STAGES)
            write_run_report(run)
        return StudentModule.from_run(run.dir, student=student, signature=signature, batch_size=batch_size)

    # -- pieces -------------------------------------------------------------------------------------

    def _teacher(self, program: dspy.Module, teacher: Any) -> tuple[dspy.BaseLM, dspy.Module]:
        """The teacher's LM and the program it runs (a copy whose predictors use the teacher's cached LM)."""
        if teacher is None:
            lm, teacher_program = _lm_of(program), program
        elif isinstance(teacher, dspy.BaseLM):
            lm, teacher_program = teacher, program
        elif isinstance(teacher, dspy.Module):
            lm, teacher_program = _lm_of(teacher), teacher
        else:
            raise TypeError(f"teacher must be a dspy.LM or a DSPy program, got {type(teacher).__name__}")
        if lm is None:
            raise ValueError("DecompositionDistillation needs a teacher LM: pass teacher=dspy.LM(...), set one on the "
                             "program (set_lm), or dspy.configure(lm=...)")
        teacher_program = teacher_program.deepcopy()
        for _, predictor in teacher_program.named_predictors():
            predictor.lm = None  # the teacher's one cached, retried LM comes through the context
        return lm, teacher_program

    def _run_config(self, teacher_lm, teacher_program, train: list[Problem], held_out: list[Problem],
                    answers: AnswerType):
        from dd_prompting.distill.run.run_config import RunConfig

        student = {"model": self.student, "seed": self.seed, **self.train}
        return RunConfig.from_dict({
            "train_cot": self.train_cot,
            "train_workers": self.train_workers,
            "teacher": {
                # What the traces came from, for the record and the stage check (never an endpoint or key).
                "kind": "program", "model": teacher_lm.model, "mode": getattr(teacher_program, "mode", "joint"),
                "max_subquestions": getattr(teacher_program, "max_subquestions", 8), "threads": self.threads,
                "retries": self.retries, "cache_dir": self.cache_dir,
            },
            # The problems are the run directory's own problems.jsonl and heldout.jsonl (written by the traces stage).
            "data": {"source": "problems.jsonl", "train_problems": len(train), "eval_source": "heldout.jsonl",
                     "eval_problems": len(held_out) or None, "answer_type": answers.kind,
                     "choices": list(answers.choices) or None},
            "student": student,
            **{role: overrides for role, overrides in self.overrides.items() if overrides},
            "eval": {"batch_size": self.batch_size},
        })

    def _hybrid_program(self, program: dspy.Module, teacher_lm: dspy.BaseLM, run) -> dspy.Module:
        from dd_prompting.distill.students.modules import DecomposerModule
        from dd_prompting.distill.students.pipelines import DecomposerStudent

        hybrid = program.deepcopy()
        for _, predictor in hybrid.named_predictors():
            if predictor.lm is None:
                predictor.lm = teacher_lm
        hybrid.decompose = DecomposerModule(DecomposerStudent.from_pretrained(
            run.student("decomposer"), max_subquestions=getattr(program, "max_subquestions", 8)))
        return hybrid


def _fields(signature) -> tuple[str, str]:
    inputs, outputs = list(signature.input_fields), list(signature.output_fields)
    if len(inputs) != 1 or not outputs:
        raise ValueError(f"DecompositionDistillation: the students read one problem and write an answer, so the "
                         f"signature needs one input field; got inputs {inputs} and outputs {outputs}")
    return inputs[0], outputs[0]


def _problems(examples: Sequence[dspy.Example], name: str, input_name: str, output_name: str,
              answers: AnswerType) -> list[Problem]:
    """The examples as problems with stable ids (from the question), duplicates dropped."""
    problems, seen = [], set()
    for index, example in enumerate(examples):
        question, gold = example.get(input_name), example.get(output_name)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{name}[{index}]: field {input_name!r} must be a non-empty string, got {question!r}")
        canonical = answers.read_gold(gold) if gold is not None else INVALID
        if canonical == INVALID:
            what = "a number" if answers.kind == "number" else f"one of {', '.join(answers.options)}"
            raise ValueError(f"{name}[{index}].{output_name} = {gold!r} is not {what} (the signature's "
                             f"{output_name!r} field is {answers.kind}: bool for yes/no, Literal[...] for options)")
        if question in seen:
            logger.warning("%s[%d] repeats an earlier question; using it once", name, index)
            continue
        seen.add(question)
        digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:12]
        problems.append(Problem(id=f"{name}-{digest}", question=question, gold=canonical))
    return problems


def _default_run_dir(teacher_lm, student: str, train: list[Problem]) -> Path:
    digest = hashlib.sha256("\n".join([teacher_lm.model, student, *(p.id for p in train)]).encode("utf-8")).hexdigest()[:10]
    return Path("runs") / f"distill-{digest}"


def _check_same_problems(run_dir: Path, train: list[Problem], held_out: list[Problem],
                         answers: AnswerType) -> list[Problem]:
    """Refuse a run directory that holds another trainset or valset; returns the held-out problems to use
    (a compile that resumes without a valset keeps the run's own)."""
    from dd_prompting.distill.run.directory import Run
    from dd_prompting.distill.teach.problem_sources import read_problems

    run = Run(run_dir, None)

    def ids(path: Path) -> list[str]:
        try:
            return [p.id for p in read_problems(path, answer_type=answers)]
        except ValueError as err:  # written for another answer type
            raise ConfigError(f"{run_dir} holds a run on other answers ({err})") from None

    if run.heldout.is_file() and not held_out:
        held_out = read_problems(run.heldout, answer_type=answers)
    for path, problems, name in ((run.problems, train, "trainset"), (run.heldout, held_out, "valset")):
        if path.is_file() and ids(path) != [p.id for p in problems]:
            raise ConfigError(f"{run.dir} holds a run on another {name} ({path}); pass a new run_dir to compile on "
                              "this one, or the same examples to resume that run")
    return held_out


def _lm_of(program: dspy.Module) -> dspy.BaseLM | None:
    lms = {id(p.lm): p.lm for _, p in program.named_predictors() if p.lm is not None}
    if len(lms) > 1:
        raise ValueError("The teacher program's predictors use different LMs; pass the teacher LM as teacher=...")
    return next(iter(lms.values()), None) or dspy.settings.lm
