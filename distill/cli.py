"""`dd-distill`: teacher traces -> fine-tuning rows -> student pair and CoT student -> held-out comparison.

    dd-distill                          # the offline default (runs/offline): generator teacher, tiny students
    dd-distill run --config examples/distill_gsm8k_gpt2.toml --name gsm8k-gpt2
    dd-distill traces   --run-dir runs/gsm8k-gpt2     # each stage on its own
    dd-distill build    --run-dir runs/gsm8k-gpt2
    dd-distill train    --run-dir runs/gsm8k-gpt2
    dd-distill evaluate --run-dir runs/gsm8k-gpt2

Every run writes one directory: `config.json`, `problems.jsonl` and `heldout.jsonl`, `traces.jsonl`,
`data/` (rows), `students/<role>/` (checkpoints and the saved students), `eval/` (predictions),
`metrics.json`, `report.md`, `loss.png` and `accuracy.png`. Rerunning `run` on the same directory
skips the stages already finished (and training resumes from its last checkpoint); a killed
teacher run resumes from its trace file. Settings come from the defaults, then the run directory's
saved `config.json`, then `--config`, then flags such as `--teacher.model` or `--solver.max_steps`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dd_prompting.distill.config import (
    ROLES,
    ConfigError,
    RunConfig,
    add_config_arguments,
    overrides_from_args,
    read_config_file,
)

__all__ = ["main", "build_parser", "OFFLINE_DEFAULT", "OFFLINE_NAME", "STAGES"]

logger = logging.getLogger(__name__)

STAGES = ("traces", "build", "train", "evaluate")
OFFLINE_NAME = "offline"

# The offline default's steps per student, sized for about 10 minutes on a 2-core CPU. Fixed steps, not a
# time budget, so that a run gives the same students on a fast machine as on a busy one (the numbers in
# the README are reproducible); `--solver.max_train_seconds` and friends cap the time instead. The
# decomposer needs little (it wrote the exact sub-questions of all 300 held-out problems after 346
# steps); the solver's arithmetic decides the pair's accuracy and appears late, so it gets the most.
OFFLINE_DEFAULT: dict[str, Any] = {
    "decomposer": {"max_steps": 400},
    "solver": {"max_steps": 1400},
    "cot": {"max_steps": 1400},
}

# Which settings each stage's results depend on: a finished stage whose settings changed is redone
# (rows, evaluation) or refused (traces, students: they cost time or money; see `--force`).
_STAGE_SETTINGS = {
    "traces": ("teacher", "data"),
    "build": ("teacher", "data"),
    "train": ("student", "decomposer", "solver", "cot", "train_cot"),
    "evaluate": ("eval",),
}
_EXPENSIVE = ("traces", "train")


@dataclass
class Run:
    """A run directory and the config it runs with."""

    dir: Path
    config: RunConfig

    @property
    def traces(self) -> Path:
        return self.dir / "traces.jsonl"

    @property
    def problems(self) -> Path:
        return self.dir / "problems.jsonl"

    @property
    def heldout(self) -> Path:
        return self.dir / "heldout.jsonl"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def eval(self) -> Path:
        return self.dir / "eval"

    def student(self, role: str) -> Path:
        return self.dir / "students" / role

    @property
    def roles(self) -> tuple[str, ...]:
        return ROLES if self.config.train_cot else ("decomposer", "solver")

    # -- stage bookkeeping --------------------------------------------------------------------------

    def _stages_file(self) -> Path:
        return self.dir / "stages.json"

    def stages(self) -> dict[str, Any]:
        path = self._stages_file()
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def settings(self, stage: str) -> dict[str, Any]:
        config = self.config.to_dict()
        return {name: config[name] for name in _STAGE_SETTINGS[stage]}

    def mark_done(self, stage: str, seconds: float) -> None:
        if not _is_main_process():
            return
        stages = self.stages()
        stages[stage] = {"settings": self.settings(stage), "seconds": round(seconds, 2), "finished": _now()}
        _write_json(self._stages_file(), stages)

    def forget(self, stage: str) -> None:
        stages = self.stages()
        if stages.pop(stage, None) is not None:
            _write_json(self._stages_file(), stages)

    def changed_settings(self, stage: str) -> list[str]:
        """The settings that differ from those the finished stage ran with (dotted names)."""
        done = self.stages().get(stage)
        if not done:
            return []
        return _diff(done["settings"], self.settings(stage))


# --- command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dd-distill",
        description="Distil decomposition reasoning into small students: a teacher writes sub-questions and answers, "
        "a decomposer and a solver learn from them, and a CoT student of the same size is the baseline. "
        "With no command, runs every stage (`run`), by default fully offline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `dd-distill <command> --help` for a command's settings.",
    )
    commands = parser.add_subparsers(dest="command", metavar="command")
    helps = {
        "run": "Run every stage (traces, build, train, evaluate), skipping those already finished in the run directory.",
        "traces": "Ask the teacher for decomposition traces of the training problems (resumable).",
        "build": "Filter the traces and build the fine-tuning rows (decomposer, solver, CoT).",
        "train": "Train the students on the rows (resumes from checkpoints).",
        "evaluate": "Evaluate the students (and the teacher) on the held-out problems; write the report.",
    }
    for name in ("run", *STAGES):
        sub = commands.add_parser(name, help=helps[name], description=helps[name])
        sub.add_argument("--config", type=Path, help="A TOML, YAML or JSON run config (flags override it).")
        sub.add_argument(
            "--run-dir", type=Path,
            help="The run directory (default: <output_dir>/<name>; for `run`, <output_dir>/offline without --config, "
            "else a new timestamped one).",
        )
        if name == "run":
            sub.add_argument(
                "--force", action="store_true",
                help="Redo every stage: delete the run directory's traces, rows, students and results first "
                "(the teacher's disk cache is kept, so a DSPy teacher is not paid twice).",
            )
        sub.add_argument("--quiet", action="store_true", help="Only warnings and the final comparison.")
        add_config_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]  # no command: the whole pipeline
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Idle OpenMP threads spin and slow training ~10x on a busy shared CPU (see distill.train).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    run = None
    try:
        run = _open_run(args)
        if args.command == "run":
            return _run_all(run, force=args.force)
        _start(run, (args.command,))
        started = time.monotonic()
        _STAGE_FUNCTIONS[args.command](run)
        run.mark_done(args.command, time.monotonic() - started)
        if args.command == "evaluate":
            _finish(run)
        return 0
    except KeyboardInterrupt:
        where = f" with --run-dir {run.dir}" if run is not None else ""
        print(f"\ndd-distill: interrupted. Run `dd-distill {args.command}`{where} again to resume where it stopped.",
              file=sys.stderr)
        return 130
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"dd-distill: error: {err}", file=sys.stderr)
        return 2


def _open_run(args: argparse.Namespace) -> Run:
    overrides = overrides_from_args(args)
    # Where the run lives comes first (the directory may hold the rest of the settings).
    where = {**(read_config_file(args.config) if args.config else {}), **overrides}
    name, output_dir = where.get("name"), where.get("output_dir") or "runs"
    if args.run_dir is not None:
        run_dir = args.run_dir
    elif name:
        run_dir = Path(output_dir) / str(name)
    elif args.command == "run" and args.config is None:
        run_dir = Path(output_dir) / OFFLINE_NAME  # so that running `dd-distill` again resumes it
    elif args.command == "run":
        run_dir = Path(output_dir) / datetime.now().strftime("%Y%m%d-%H%M%S")
    else:
        raise ConfigError(f"`dd-distill {args.command}` needs the run directory: pass --run-dir or --name")
    saved = run_dir / "config.json"
    base = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else None
    if base is None and args.config is None:
        base = OFFLINE_DEFAULT  # no config anywhere: the offline default's steps
    config = RunConfig.load(args.config, overrides=overrides, base=base)
    logger.info("Run directory: %s", run_dir)
    return Run(run_dir, config)


def _start(run: Run, stages: tuple[str, ...]) -> None:
    """Refuse settings that contradict finished expensive stages, then record the config in the run directory."""
    for stage in stages:
        changed = run.changed_settings(stage)
        if changed and stage in _EXPENSIVE:
            raise ConfigError(
                f"{run.dir}: the {stage} stage finished with other settings (changed: {', '.join(changed)}). "
                "Use a new run directory (--name or --run-dir), or `dd-distill run --force` to redo every stage here."
            )
    run.dir.mkdir(parents=True, exist_ok=True)
    if _is_main_process():
        run.config.save(run.dir / "config.json")


def _run_all(run: Run, *, force: bool) -> int:
    if force:
        _clear(run)
    _start(run, STAGES)
    for stage in STAGES:
        if run.stages().get(stage) and not run.changed_settings(stage):
            logger.info("Stage %s already finished; skipping it.", stage)
            continue
        started = time.monotonic()
        _STAGE_FUNCTIONS[stage](run)
        run.mark_done(stage, time.monotonic() - started)
        # A stage redone makes the ones after it stale (except paid-for or trained results, checked above).
        for later in STAGES[STAGES.index(stage) + 1 :]:
            if later not in _EXPENSIVE:
                run.forget(later)
    _finish(run)
    return 0


def _clear(run: Run) -> None:
    if run.dir.exists() and not (run.dir / "config.json").is_file():
        raise ConfigError(f"--force: {run.dir} does not look like a dd-distill run directory (no config.json); not clearing it")
    for name in ("traces.jsonl", "problems.jsonl", "heldout.jsonl", "stages.json", "metrics.json", "report.md",
                 "loss.png", "accuracy.png", "trace_report.json"):
        (run.dir / name).unlink(missing_ok=True)
    for name in ("data", "students", "eval"):
        shutil.rmtree(run.dir / name, ignore_errors=True)
    logger.info("--force: cleared %s", run.dir)


# --- stages ----------------------------------------------------------------------------------------


def stage_traces(run: Run) -> None:
    """Training and held-out problems, then the teacher's traces of the training problems."""
    from dd_prompting.distill.problems import write_problems
    from dd_prompting.distill.teachers import collect_traces

    config = run.config
    teacher = _make_teacher(config)
    train, held_out = _make_problems(config)
    write_problems(run.problems, train)
    write_problems(run.heldout, held_out)
    logger.info("%d training problems, %d held-out problems", len(train), len(held_out))
    try:
        traces = collect_traces(teacher, train, run.traces, retry_failed=config.teacher.retry_failed)
    finally:
        getattr(teacher, "close", lambda: None)()
    _, report = _filter(run, traces)
    print(f"traces: {report.summary()}")


def stage_build(run: Run) -> None:
    """Filter the traces and write the rows of each role (and held-out rows for the loss curves)."""
    from dd_prompting.distill.formats import build_rows, write_rows
    from dd_prompting.distill.problems import read_problems
    from dd_prompting.distill.teachers import SocraticTeacher
    from dd_prompting.distill.traces import read_trace_file

    config = run.config
    _require(run.traces, "traces")
    result = read_trace_file(run.traces, skip_malformed=config.teacher.skip_malformed)
    kept, report = _filter(run, result.traces, skipped_lines=len(result.skipped))
    if not kept:
        raise RuntimeError(f"No usable traces in {run.traces}: {report.summary()}")
    rows = build_rows(kept, packed_solver=config.data.packed_solver)
    write_rows(rows, run.data)
    # Held-out rows (from the held-out problems' reference steps, when they have them) give the
    # training loss curves a held-out loss.
    held_out = [trace for trace in SocraticTeacher().traces(read_problems(run.heldout)[:200]) if trace.correct]
    if held_out:
        write_rows(build_rows(held_out, packed_solver=config.data.packed_solver), run.data / "heldout")
    counts = {role: len(role_rows) for role, role_rows in rows.items()}
    _write_json(run.data / "counts.json", counts)
    print(f"build: {report.kept} traces -> " + ", ".join(f"{n} {role} rows" for role, n in counts.items()))


def stage_train(run: Run) -> None:
    """Train the decomposer, the solver and (unless train_cot is off) the CoT student."""
    from dd_prompting.distill.train import train_student

    for role in run.roles:
        rows = run.data / f"{role}.jsonl"
        _require(rows, "build")
        eval_rows = run.data / "heldout" / f"{role}.jsonl"
        logger.info("Training the %s student", role)
        train_student(
            rows=rows,
            config=run.config.train_config(role),
            output_dir=run.student(role),
            role=role,
            eval_rows=eval_rows if eval_rows.is_file() else None,
        )
    if _is_main_process():
        from dd_prompting.distill.report import plot_losses

        plot_losses({role: run.student(role) for role in run.roles}, run.dir / "loss.png")


def stage_evaluate(run: Run) -> None:
    """Held-out accuracy of the student pair, the CoT student and the teacher; then the report."""
    from dd_prompting.distill.problems import read_problems

    config = run.config
    _require(run.heldout, "traces")
    problems = read_problems(run.heldout)
    questions = [problem.question for problem in problems]
    evaluation: dict[str, Any] = {"problems": len(problems)}
    run.eval.mkdir(parents=True, exist_ok=True)

    from dd_prompting.distill.students import CoTStudent, StudentPipeline

    for role in run.roles:
        _require(run.student(role) / "student.json", "train")
    pipeline = StudentPipeline.from_pretrained(
        run.student("decomposer"), run.student("solver"),
        max_subquestions=config.teacher.max_subquestions,
        max_decomposition_tokens=config.eval.max_decomposition_tokens,
        max_answer_tokens=config.eval.max_answer_tokens,
    )
    started = time.monotonic()
    results = pipeline.solve(questions, batch_size=config.eval.batch_size, progress=True)
    evaluation["pair"] = _score(problems, results, time.monotonic() - started, run.eval / "pair.jsonl")
    if config.train_cot:
        cot = CoTStudent.from_pretrained(run.student("cot"), max_new_tokens=config.eval.max_cot_tokens)
        started = time.monotonic()
        results = cot.solve(questions, batch_size=config.eval.batch_size, progress=True)
        evaluation["cot"] = _score(problems, results, time.monotonic() - started, run.eval / "cot.jsonl")
    evaluation["teacher"] = _teacher_accuracy(run, problems)
    _write_json(run.eval / "evaluation.json", evaluation)


# --- pieces ----------------------------------------------------------------------------------------


def _make_teacher(config: RunConfig):
    from dd_prompting.distill.teachers import DSPyTeacher, GeneratorTeacher, SocraticTeacher

    teacher = config.teacher
    if teacher.kind == "generator":
        return GeneratorTeacher(config=config.data.generator, seed=config.data.seed)
    if teacher.kind == "socratic":
        return SocraticTeacher()
    return DSPyTeacher(
        lm=_make_lm(config),
        mode=teacher.mode,
        max_subquestions=teacher.max_subquestions,
        samples=teacher.samples,
        temperature=teacher.temperature,
        num_threads=teacher.num_threads,
        cache_dir=None if teacher.cache_dir in (None, "", "none") else teacher.cache_dir,
        retries=teacher.retries,
        backoff=teacher.backoff,
    )


def _make_lm(config: RunConfig):
    teacher = config.teacher
    model = teacher.model or ""
    if model == "smollm2" or model.startswith("local:"):
        from dd_prompting import local_lm, smollm2_lm

        max_new_tokens = teacher.max_tokens or 256
        if model == "smollm2":
            return smollm2_lm(max_new_tokens=max_new_tokens, cache=False)
        return local_lm(model.removeprefix("local:"), max_new_tokens=max_new_tokens, cache=False)

    import dspy

    # DSPy's own response cache is off: the teacher's disk cache (teacher.cache_dir) keeps every
    # problem's result, and the tokens and cost in the traces are then the ones actually spent.
    kwargs: dict[str, Any] = {"engine": teacher.engine, "num_retries": teacher.lm_retries, "cache": False}
    if teacher.api_base:
        kwargs["api_base"] = teacher.api_base
    if teacher.api_key_env:
        key = os.environ.get(teacher.api_key_env)
        if not key:
            raise ConfigError(
                f"teacher.api_key_env: the environment variable {teacher.api_key_env} is not set; export the API key "
                "in it (the key is never read from a config file)"
            )
        kwargs["api_key"] = key
    if teacher.timeout is not None:
        kwargs["timeout"] = teacher.timeout
    if teacher.max_tokens is not None:
        kwargs["max_tokens"] = teacher.max_tokens
    return dspy.LM(model, **kwargs)


def _make_problems(config: RunConfig):
    from dd_prompting.distill.problems import generated_problems, gsm8k_problems, read_problems

    data = config.data

    def load(source: str, split: str, offset: int, limit: int | None):
        if source == "gsm8k":
            return gsm8k_problems(split, offset=offset, limit=limit)
        return read_problems(source, offset=offset, limit=limit)

    if data.source == "generator":
        train = generated_problems(data.train_problems, seed=data.seed, config=data.generator, id_prefix="train")
    else:
        train = load(data.source, data.split, data.offset, data.train_problems)
    if data.resolved_eval_source == "generator":
        held_out = generated_problems(
            data.eval_problems, seed=data.seed + 1, config=data.generator, exclude=train, id_prefix="heldout"
        )
    else:
        held_out = load(data.resolved_eval_source, data.eval_split, data.eval_offset, data.eval_problems)
    if not train or not held_out:
        raise ConfigError(f"data: got {len(train)} training and {len(held_out)} held-out problems; both must be > 0")
    overlap = {p.question for p in train} & {p.question for p in held_out}
    if overlap:
        raise ConfigError(
            f"data: {len(overlap)} held-out problems also appear among the training problems "
            f"(e.g. {next(iter(overlap))[:80]!r}); choose disjoint sources or offsets"
        )
    if config.teacher.kind == "socratic" and not any(p.subquestions for p in train):
        raise ConfigError(
            "teacher.kind = 'socratic' needs problems with annotated sub-questions: data.source = 'gsm8k' with "
            "data.split = 'test_socratic', or a JSONL file of Socratic solutions"
        )
    return train, held_out


def _filter(run: Run, traces, *, skipped_lines: int = 0):
    from dd_prompting.distill.traces import filter_traces

    teacher = run.config.teacher
    kept, report = filter_traces(
        traces,
        require_correct=teacher.require_correct,
        keep_duplicate_samples=teacher.keep_duplicate_samples,
        skipped_lines=skipped_lines,
    )
    _write_json(run.dir / "trace_report.json", report.to_dict())
    return kept, report


def _score(problems, results, seconds: float, path: Path) -> dict[str, Any]:
    from dd_prompting import answers_match

    correct = 0
    exact = with_reference = 0
    rows = []
    for problem, result in zip(problems, results):
        ok = answers_match(result.answer, problem.gold)
        correct += ok
        row = {"id": problem.id, "question": problem.question, "gold": problem.gold, "answer": result.answer,
               "correct": ok, **{k: v for k, v in asdict(result).items() if k not in ("question", "answer")}}
        if problem.subquestions and hasattr(result, "subquestions"):
            with_reference += 1
            exact += list(result.subquestions) == list(problem.subquestions)
        rows.append(row)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    scored = {
        "accuracy": correct / len(problems) if problems else 0.0,
        "correct": correct,
        "problems": len(problems),
        "seconds": round(seconds, 2),
        "truncated": sum(bool(getattr(result, "truncated", False)) for result in results),
        "on": "held-out problems",
    }
    if any(hasattr(result, "fallback") for result in results):
        scored["fallbacks"] = sum(getattr(result, "fallback", None) is not None for result in results)
    if with_reference:
        scored["subquestions_exact"] = exact / with_reference
    return scored


def _teacher_accuracy(run: Run, problems) -> dict[str, Any]:
    """The teacher on the held-out problems when that is free (annotations) or asked for; else on its traces."""
    from dd_prompting.distill.teachers import SocraticTeacher, collect_traces
    from dd_prompting.distill.traces import API_ERROR, latest_traces, read_traces

    config = run.config
    if config.teacher.kind in ("generator", "socratic") and all(p.subquestions for p in problems):
        traces = list(SocraticTeacher().traces(problems))
        on = "held-out problems"
    elif config.eval.teacher:
        teacher = _make_teacher(config)
        try:
            traces = collect_traces(teacher, problems, run.eval / "teacher_traces.jsonl")
        finally:
            getattr(teacher, "close", lambda: None)()
        on = "held-out problems"
    else:
        traces = [t for t in latest_traces(read_traces(run.traces)) if t.sample == 0]
        on = "training problems"
    failed = sum(t.failure == API_ERROR for t in traces)
    correct = sum(t.correct for t in traces)
    return {"accuracy": correct / len(traces) if traces else 0.0, "correct": correct, "problems": len(traces),
            "api_errors": failed, "on": on}


def write_run_report(run: Run) -> dict[str, Any]:
    """Gather what the stages wrote into `metrics.json`, `report.md` and the plots."""
    from dd_prompting.distill.report import plot_accuracy, plot_losses, write_metrics, write_report

    teacher = run.config.teacher
    metrics: dict[str, Any] = {
        "run": run.dir.name,
        "teacher": {"kind": teacher.kind, "model": teacher.model, "mode": teacher.mode if teacher.kind == "dspy" else None},
    }
    for name, path in (("traces", run.dir / "trace_report.json"), ("rows", run.data / "counts.json"),
                       ("evaluation", run.eval / "evaluation.json")):
        if path.is_file():
            metrics[name] = json.loads(path.read_text(encoding="utf-8"))
    students = {}
    for role in run.roles:
        meta = run.student(role) / "student.json"
        if meta.is_file():
            info = json.loads(meta.read_text(encoding="utf-8"))
            students[role] = {"base_model": info.get("base_model"), **info.get("train_stats", {})}
    if students:
        metrics["students"] = students
    metrics["stage_seconds"] = {stage: info["seconds"] for stage, info in run.stages().items()}
    plot_losses({role: run.student(role) for role in run.roles}, run.dir / "loss.png")
    if "evaluation" in metrics:
        plot_accuracy(metrics["evaluation"], run.dir / "accuracy.png")
    write_metrics(metrics, run.dir / "metrics.json")
    write_report(run.dir, metrics)
    return metrics


def _finish(run: Run) -> None:
    """Write the report and print the comparison."""
    from dd_prompting.distill.report import comparison_table

    metrics = write_run_report(run)
    if "evaluation" in metrics:
        print()
        print(comparison_table(metrics["evaluation"]))
    print(f"\nReport: {run.dir / 'report.md'}")


def _require(path: Path, stage: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the `{stage}` stage first (or `dd-distill run`).")


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        changed = []
        for key in sorted(set(old) | set(new)):
            changed += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return changed
    return [] if old == new else [prefix.rstrip(".")]


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _is_main_process() -> bool:
    # Under `accelerate launch` / `torchrun` every process runs the train stage; one writes the bookkeeping.
    return int(os.environ.get("RANK", "0")) == 0


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


_STAGE_FUNCTIONS = {"traces": stage_traces, "build": stage_build, "train": stage_train, "evaluate": stage_evaluate}


if __name__ == "__main__":
    raise SystemExit(main())
