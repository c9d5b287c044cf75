"""`python -m dd_prompting.evals` / `dd-evals`: compare prompting strategies across models and datasets.

    python -m dd_prompting.evals run examples/evals_gsm8k.toml --limit 50 --dry-run    # what would it cost?
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

__all__ = ["main", "make_parser"]

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
    return parser


def _setup_logging(verbose: bool) -> None:
    # The harness logs under dd_prompting.evals, retries under dd_prompting.models (INFO): -v shows both, and
    # each finished example (DEBUG); without it, only warnings (the CLI prints the summary itself).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dd_prompting").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("dd_prompting.evals").setLevel(logging.DEBUG if verbose else logging.WARNING)
    for noisy in ("LiteLLM", "litellm", "httpx", "httpcore", "dspy"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


def _print_estimate(estimates: dict, *, max_cost: float | None) -> None:
    from dd_prompting.evals.estimate import Estimate

    total = Estimate(cost=0.0)
    print(f"{'dataset | model | strategy':<60} {'examples':>8} {'calls':>7} {'cached':>7} {'tokens in':>10} "
          f"{'tokens out':>10} {'est. cost':>11}")
    for label, estimate in estimates.items():
        total.add(estimate)
        print(f"{label:<60} {estimate.examples:>8} {estimate.calls:>7} {estimate.cached_calls:>7} "
              f"{estimate.prompt_tokens:>10} {estimate.completion_tokens:>10} {_money(estimate.cost):>11}")
    print(f"{'total':<60} {total.examples:>8} {total.calls:>7} {total.cached_calls:>7} {total.prompt_tokens:>10} "
          f"{total.completion_tokens:>10} {_money(total.cost):>11}")
    print("Estimates use each model's real prompts and typical reply lengths; cached calls cost nothing. "
          "No model was called.")
    if max_cost is not None and total.cost is not None and total.cost > max_cost:
        print(f"The estimate passes --max-cost ${max_cost:.4f}: the run would stop before finishing.")


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = vars(make_parser().parse_args(argv))
    command = args.pop("command")
    if command == "report":
        from dd_prompting.evals.report import write_report

        for path in write_report(args["output_dir"], plots=args["plots"]):
            print(path)
        return EXIT_OK

    # litellm (imported for prices and token counts) fetches its price map from the network unless told not to.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    _setup_logging(args.pop("verbose"))
    from dd_prompting.config import overrides_from_args
    from dd_prompting.data.jsonl import CLI_REMEDY, MalformedLineError
    from dd_prompting.evals.config import EvalConfig, load_config
    from dd_prompting.evals.harness import Harness

    config_path = args.pop("config")
    try:
        config = load_config(config_path, overrides=overrides_from_args(args, EvalConfig))
        harness = Harness(config)
        if config.dry_run:
            _print_estimate(harness.estimate(), max_cost=config.max_cost)
            return EXIT_OK
        summary = harness.run()
    except MalformedLineError as err:  # its way out names this command's option, not the Python keyword
        print(f"error: {err.with_remedy(CLI_REMEDY)}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, ImportError) as err:
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
