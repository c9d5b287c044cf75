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
import logging
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from dd_prompting.distill.run.directory import STAGES, Run, saved_settings
from dd_prompting.distill.run.pipeline import finish, run_stages, start_run
from dd_prompting.distill.run.run_config import (
    ConfigError,
    RunConfig,
    add_config_arguments,
    overrides_from_args,
    read_config_file,
)
from dd_prompting.distill.run.stages import STAGE_FUNCTIONS
from dd_prompting.distill.training.distributed import leave_process_group

from dd_prompting.data.jsonl import CLI_REMEDY, MalformedLineError

__all__ = ["main", "build_parser", "OFFLINE_DEFAULT", "OFFLINE_NAME", "STAGES"]

logger = logging.getLogger(__name__)

OFFLINE_NAME = "offline"

# The offline default's steps per student, sized for under 10 minutes on a 2-core CPU. Fixed steps, not a
# time budget, so that a run gives the same students on a fast machine as on a busy one; the numbers in
# the README are the spread over seeds 0-4 (`--seed`), and `--solver.max_train_seconds` and friends cap
# the time instead. The solver's and the CoT student's addition and subtraction appear suddenly (a
# loss cliff): at 1,400 steps the cliff came at 1,000-1,340 steps, late in the cosine schedule, and a
# run whose cliff came later ended at 52% (docs/offline_learning.md). At 2,400 steps it comes near
# the middle of the schedule. The decomposer needs far less.
OFFLINE_DEFAULT: dict[str, Any] = {
    "decomposer": {"max_steps": 600},
    "solver": {"max_steps": 2400},
    "cot": {"max_steps": 2400},
}

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
        sub.add_argument("--wait", action="store_true",
                         help="If another process is writing the run directory, wait for it to finish instead of "
                         "refusing to start.")
        sub.add_argument("--quiet", action="store_true", help="Only warnings and the final comparison.")
        add_config_arguments(sub)
    cancel = commands.add_parser(
        "cancel-batches", help="Cancel the batches a batched teacher (--teacher.batch) left pending at the provider.",
        description="Cancel every batch RUN_DIR/batches.json lists as pending (a traces stage interrupted while it "
                    "waited). Replies already stored stay in the teacher's call cache; the next traces stage sends "
                    "the rest again.")
    cancel.add_argument("--run-dir", type=Path, required=True, help="The run directory (holding batches.json).")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]  # no command: the whole pipeline
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpx2", "httpcore", "openai"):  # a line per request to a teacher or student server
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Idle OpenMP threads spin and slow training ~10x on a busy shared CPU (see distill.train).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if args.command == "cancel-batches":
        return _cancel_batches(args.run_dir)
    run = None
    try:
        run = _open_run(args)
        with run.writer(f"dd-distill {args.command}", wait=args.wait):  # before anything is written or called
            if args.command == "run":
                return _run_all(run, force=args.force)
            start_run(run, (args.command,))
            started = time.monotonic()
            STAGE_FUNCTIONS[args.command](run)
            run.mark_done(args.command, time.monotonic() - started)
            if args.command == "evaluate":
                finish(run)
            return 0
    except KeyboardInterrupt:
        where = f" with --run-dir {run.dir}" if run is not None else ""
        print(f"\ndd-distill: interrupted. Run `dd-distill {args.command}`{where} again to resume where it stopped.",
              file=sys.stderr)
        return 130
    except MalformedLineError as err:
        print(f"dd-distill: error: {_way_out(err)}", file=sys.stderr)
        return 2
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"dd-distill: error: {err}", file=sys.stderr)
        return 2
    finally:
        leave_process_group()


def _cancel_batches(run_dir: Path) -> int:
    from dd_prompting.batches import cancel_batches_in
    from dd_prompting.run_lock import RunLockError

    try:
        lines = cancel_batches_in(run_dir, command="dd-distill cancel-batches")  # not under a run waiting on them
    except (ValueError, RunLockError) as err:
        print(f"dd-distill: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _way_out(err: MalformedLineError) -> MalformedLineError:
    """The error with its way out in this command's words: the flag that skips such lines (data and trace files)."""
    return err.with_remedy(CLI_REMEDY)


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
    base = saved_settings(run_dir)
    if base is None and args.config is None:
        base = OFFLINE_DEFAULT  # no config anywhere: the offline default's steps
    config = RunConfig.load(args.config, overrides=overrides, base=base)
    logger.info("Run directory: %s", run_dir)
    return Run(run_dir, config)


def _run_all(run: Run, *, force: bool) -> int:
    if force:
        _clear(run)
    run_stages(run, STAGES)
    finish(run)
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


if __name__ == "__main__":
    raise SystemExit(main())
