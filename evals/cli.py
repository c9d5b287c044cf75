"""`python -m dd_prompting.evals` / `dd-evals`: compare prompting strategies across models and datasets.

    python -m dd_prompting.evals run examples/evals_gsm8k.toml --limit 50 --dry-run    # what would it cost?
    python -m dd_prompting.evals run examples/evals_gsm8k.toml --dry-run --pilot 8      # ... measured on 8 problems
    python -m dd_prompting.evals run examples/evals_gsm8k.toml --limit 50 --max-cost 1  # run, within $1
    python -m dd_prompting.evals report evals_output                                    # rebuild the report

The flags of `run` are built from `EvalConfig`'s fields, so each flag matches the config key of the
same name and overrides it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["main", "make_parser", "print_estimate"]

EXIT_OK, EXIT_STOPPED, EXIT_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 130
_ALIASES = {"only_models": "--models", "only_strategies": "--strategies", "only_datasets": "--datasets"}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from dd_prompting.config import add_arguments
    from dd_prompting.evals.config import EvalConfig

    add_arguments(parser, EvalConfig, aliases=_ALIASES)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dd-evals",
        description="Compare prompting strategies (direct, chain of thought, decomposition, distilled students) "
                    "across models and datasets, with cached concurrent calls, a cost guard and a report.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="Run (or with --dry-run, estimate) the evals of a config file.",
        description="Run every (dataset, model, strategy) of CONFIG. Results go to OUTPUT_DIR/results.jsonl as "
                    "they finish; rerunning resumes. Exit status: 0 done, 2 stopped early by --max-cost, "
                    "3 some examples failed after retries, 130 interrupted.",
    )
    run.add_argument("config", help="A .toml or .yaml config (see examples/evals_*.toml).")
    _add_config_flags(run)
    run.add_argument("-v", "--verbose", action="store_true",
                     help="Log each retry, each cell's start and end (with its cache hits) and each finished example.")
    report = commands.add_parser("report", help="Rebuild summary.md, CSVs and plots from a run's output directory.")
    report.add_argument("output_dir", help="The run's output directory (holding results.jsonl and run.json).")
    report.add_argument("--no-plots", dest="plots", action="store_false", help="Skip the PNG plots.")
    cancel = commands.add_parser(
        "cancel-batches", help="Cancel the batches a run (batch = true) left pending at the provider.",
        description="Cancel every batch OUTPUT_DIR/batches.json lists as pending (a run interrupted while it "
                    "waited). Replies already stored stay in the call cache; a later run sends the rest again.")
    cancel.add_argument("output_dir", help="The run's output directory (holding batches.json).")
    return parser


def _cancel_batches(output_dir: str) -> int:
    from dd_prompting.batches import cancel_batches_in
    from dd_prompting.run_lock import RunLockError

    try:
        lines = cancel_batches_in(output_dir, command="dd-evals cancel-batches")  # not under a run waiting on them
    except (ValueError, RunLockError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return EXIT_OK


def _setup_logging(verbose: bool) -> None:
    # The harness logs under dd_prompting.evals, retries under dd_prompting.models (INFO): -v shows both, and
    # each finished example (DEBUG); without it, only warnings (the CLI prints the summary itself).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dd_prompting").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("dd_prompting.evals").setLevel(logging.DEBUG if verbose else logging.WARNING)
    for noisy in ("LiteLLM", "litellm", "httpx", "httpx2", "httpcore", "openai", "dspy"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


def print_estimate(estimates: dict, *, max_cost: float | None, pilot_rows: int, spent: float,
                    output_dir: str) -> None:
    from dd_prompting.evals.budget import PRIOR_RANGE

    if pilot_rows:
        print(f"Pilot: {pilot_rows} examples run for real, ${spent:.4f} spent; their rows are in results.jsonl and "
              "the run resumes past them.")
    width = max([len("dataset | model | strategy"), *map(len, estimates)])
    print(f"{'dataset | model | strategy':<{width}} {'problems':>8} {'calls':>7} {'tokens in':>10} {'tokens out':>10} "
          f"{'est. cost':>10} {'80% range':>21} {'seconds':>8}  basis")
    totals = {"problems": 0, "calls": 0.0, "prompt": 0.0, "completion": 0.0, "cost": 0.0, "seconds": 0.0}
    for label, estimate in estimates.items():
        totals["problems"] += estimate.problems
        totals["calls"] += estimate.calls
        totals["prompt"] += estimate.prompt_tokens
        totals["completion"] += estimate.completion_tokens
        totals["seconds"] += estimate.seconds
        totals["cost"] = None if totals["cost"] is None or estimate.cost is None else totals["cost"] + estimate.cost
        print(f"{label:<{width}} {estimate.problems:>8} {estimate.calls:>7.0f} {estimate.prompt_tokens:>10.0f} "
              f"{estimate.completion_tokens:>10.0f} {_money(estimate.cost):>10} {_range(estimate):>21} "
              f"{estimate.seconds:>8.0f}  {estimate.basis_text}")
    print(f"{'total':<{width}} {totals['problems']:>8} {totals['calls']:>7.0f} {totals['prompt']:>10.0f} "
          f"{totals['completion']:>10.0f} {_money(totals['cost']):>10} {'':>21} {totals['seconds']:>8.0f}")
    print(f"For the problems still to run; cached calls cost nothing. The range is an 80% interval from the observed "
          f"problems' spread (a pilot's or earlier runs'); for 'prior', the prior's measured error (x{PRIOR_RANGE[0]}"
          f" to x{PRIOR_RANGE[1]}). Seconds: the calls one after another. "
          + ("" if pilot_rows else "No model was called. ") + f"Written to {output_dir}/estimate.json.")
    batched = {label: estimate.rounds for label, estimate in estimates.items() if estimate.rounds is not None}
    if batched:
        print("Models with batch = true are priced at batch prices (litellm's, else half the synchronous price) and "
              "answered in rounds, each up to the provider's window (24 h for OpenAI): "
              + "; ".join(f"{label}: about {rounds} round{'s' if rounds != 1 else ''}" for label, rounds in
                          batched.items()) + ". Cells of one model share their rounds.")
    if max_cost is not None and totals["cost"] is not None and totals["cost"] + spent > max_cost:
        print(f"The estimate passes --max-cost ${max_cost:.4f}: the run would stop before finishing.")


def _say_in_use(holder, output_dir) -> None:
    """A reader's note: the directory is being written, so what it shows is what is written so far."""
    if holder is not None:
        print(f"Note: {output_dir} is in use by {holder.describe()}; this reads the rows written so far.",
              file=sys.stderr)


def _range(estimate) -> str:
    if estimate.low is None:
        return "unknown"
    if estimate.range_of == "cost":
        return f"${estimate.low:.4f}-${estimate.high:.4f}"
    return f"{estimate.low / 1000:.1f}k-{estimate.high / 1000:.1f}k tok"


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = vars(make_parser().parse_args(argv))
    command = args.pop("command")
    if command == "report":
        from dd_prompting.evals.report import write_report
        from dd_prompting.run_lock import RunLock

        _say_in_use(RunLock.holder(args["output_dir"]), args["output_dir"])
        for path in write_report(args["output_dir"], plots=args["plots"]):
            print(path)
        return EXIT_OK
    if command == "cancel-batches":
        return _cancel_batches(args["output_dir"])

    # litellm (imported for prices and token counts) fetches its price map from the network unless told not to.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    _setup_logging(args.pop("verbose"))
    from dd_prompting.config import overrides_from_args
    from dd_prompting.data.jsonl import CLI_REMEDY, MalformedLineError
    from dd_prompting.evals.config import EvalConfig, load_config
    from dd_prompting.evals.harness import Harness
    from dd_prompting.run_lock import RunLockError
    from dd_prompting.serving import ServerError

    config_path = args.pop("config")
    try:
        config = load_config(config_path, overrides=overrides_from_args(args, EvalConfig))
        harness = Harness(config)
        summary = harness.run()
        if config.dry_run:
            _say_in_use(summary.in_use_by, config.output_dir)
            print_estimate(summary.estimates, max_cost=config.max_cost, pilot_rows=summary.pilot_rows,
                            spent=summary.spent, output_dir=config.output_dir)
            return EXIT_STOPPED if summary.stopped else EXIT_OK
    except MalformedLineError as err:  # its way out names this command's option, not the Python keyword
        print(f"error: {err.with_remedy(CLI_REMEDY)}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, ImportError, RunLockError, ServerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted. Finished rows are saved and their calls cached; run the same command to resume.",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{summary.rows_written} examples run ({summary.examples_skipped} already done), {summary.new_calls} new "
          f"calls, {summary.cached_calls} from cache, ${summary.spent:.4f} spent, {summary.wall_s:.1f} s.")
    if summary.skipped_lines:
        shown = ", ".join(entry.split(": ", 1)[0] for entry in summary.skipped_lines[:5])
        more = f" and {len(summary.skipped_lines) - 5} more" if len(summary.skipped_lines) > 5 else ""
        print(f"{len(summary.skipped_lines)} malformed input lines skipped ({shown}{more}); the report lists them.")
    if summary.parse_failures:
        print(f"{summary.parse_failures} outputs had no readable answer (scored wrong).")
    if summary.failed:
        print(f"{summary.failed} examples failed after retries; run the same command to retry them.")
    if summary.stopped:
        print(f"Stopped early: {summary.stopped}. Run again with a larger --max-cost to continue.")
    print(f"Report: {summary.report_files[0] if summary.report_files else config.output_dir}")
    if summary.stopped:
        return EXIT_STOPPED
    return EXIT_FAILED if summary.failed else EXIT_OK
