"""Run every (dataset, model, strategy) cell of a config, concurrently, resumably, within a budget.

`Harness` runs what the other modules decide: `plan` (the cells and their fingerprints), `lm_pool` (one LM per
model, in the call cache), `dry_run` (estimates and the budget's cost model) and `run_file` (run.json). Each
example runs in a worker thread under `dspy.context(lm=..., adapter=...)`. When it ends, its row is appended to
results.jsonl and flushed, so a killed run loses at most the examples in flight, and their calls are already in
the call cache. A rerun skips finished rows and retries rows that ended in an API error.

A model with `batch = true` runs in batch rounds (`dd_prompting.batches.BatchRounds`): each pass runs all its
cells' unfinished problems with the calls answered from the cache, writes the rows that finished, and the calls
it could not answer go out as one batch; the next pass runs when the batch has answered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dd_prompting.data import Problem
from dd_prompting.evals.budget import Budget, CellEstimate
from dd_prompting.evals.cell import Cell, evaluate_example
from dd_prompting.evals.config import EvalConfig, ModelConfig
from dd_prompting.evals.dry_run import Estimator, write_estimate
from dd_prompting.evals.estimate import Estimate
from dd_prompting.evals.lm_pool import LMPool
from dd_prompting.evals.plan import Plan, all_models, plan_cells
from dd_prompting.evals.run_file import load_wall_times, write_eval_run_file
from dd_prompting.models import CallCache, Pricing, environment_secrets, lookup_pricing, url_secrets
from dd_prompting.models.pricing import batch_pricing
from dd_prompting.result_store import RESULTS_FILE, RUN_FILE, ResultStore
from dd_prompting.results import PARSE_FAILURES
from dd_prompting.run_lock import RunLock, RunLockHolder

__all__ = ["Harness", "RunSummary"]

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run did: rows written, calls made, money spent, failures, and why it stopped early."""

    rows_written: int = 0
    examples_skipped: int = 0
    new_calls: int = 0
    cached_calls: int = 0
    spent: float = 0.0
    failed: int = 0
    parse_failures: int = 0
    stopped: str | None = None
    wall_s: float = 0.0
    report_files: list[str] = field(default_factory=list)
    estimates: dict[str, CellEstimate] = field(default_factory=dict)
    pilot_rows: int = 0  # examples a dry run's pilot ran for real
    skipped_lines: list[str] = field(default_factory=list)  # malformed input lines left out: "path:line: reason"
    in_use_by: RunLockHolder | None = None  # a dry run's note: the process writing the directory meanwhile


def _secrets(config: EvalConfig) -> list[str]:
    """Values that must never be written: configured keys, key-like environment variables, URL credentials."""
    models = all_models(config)
    names = [model.api_key_env for model in models if model.api_key_env]
    return [*environment_secrets(names), *(secret for model in models for secret in url_secrets(model.api_base))]


def _check_directory(path: Path, setting: str) -> None:
    """Fail before any call when `path` cannot be a directory: it, or a folder it would be made in, is a file."""
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                what = f"{setting} {path}" + ("" if place == path else f" cannot be made: {place}")
                raise ValueError(f"{what} is a file, not a directory; choose another {setting} "
                                 f"(--{setting.replace('_', '-')}) or move the file away")
            return


class Harness:
    """Plans, estimates and runs an `EvalConfig`.

    Args:
        config: The run.
        on_row: Called with each row after it is written (progress hooks, tests).
    """

    def __init__(self, config: EvalConfig, *, on_row: Callable[[dict[str, Any]], None] | None = None):
        config.check_runnable()
        _check_directory(Path(config.output_dir), "output_dir")
        _check_directory(config.cache_path, "cache_dir")
        self.config = config
        self.on_row = on_row
        self.output_dir = Path(config.output_dir)
        self.secrets = _secrets(config)
        self._plan: Plan | None = None
        self._cache: CallCache | None = None
        self._lm_pool: LMPool | None = None
        self._estimator: Estimator | None = None
        self._pricing: dict[str, Pricing] = {}
        self._batches: dict[str, Any] = {}  # each batched model's RoundsSummary, this invocation

    @property
    def cache(self) -> CallCache:
        if self._cache is None:
            self._cache = CallCache(self.config.cache_path)
        return self._cache

    @property
    def lm_pool(self) -> LMPool:
        if self._lm_pool is None:
            self._lm_pool = LMPool(self.config, self.cache)
        return self._lm_pool

    @property
    def estimator(self) -> Estimator:
        if self._estimator is None:
            self._estimator = Estimator(self.config, self.cache, self.pricing)
        return self._estimator

    def pricing(self, model: ModelConfig) -> Pricing:
        """What the model's calls cost in this run: batch prices for a model called in batches."""
        if model.name not in self._pricing:
            self._pricing[model.name] = batch_pricing(model) if model.batch else lookup_pricing(model)
        return self._pricing[model.name]

    def cells(self) -> list[Cell]:
        """Every runnable (dataset, model, strategy): students pair only with the student strategy."""
        if self._plan is None:
            self._plan = plan_cells(self.config)
        return self._plan.cells

    def estimate(self, *, skip_done: bool = True) -> dict[str, CellEstimate]:
        """Calls, tokens, cost and seconds per cell for the examples still to run; no model is called."""
        done = ResultStore(self.output_dir / RESULTS_FILE, read_only=True).completed() if skip_done else {}
        return self.estimator.estimate(self.cells(), done)

    def _write_estimate(self, summary: RunSummary) -> None:
        write_estimate(self.output_dir, summary.estimates, pilot=self.config.pilot, pilot_rows=summary.pilot_rows,
                       spent=summary.spent, secrets=self.secrets)

    # ---------------------------------------------------------------- running
    def run(self) -> RunSummary:
        """Run every cell; write results, then the report.

        With `dry_run`, only estimate (writing estimate.json); with `pilot` too, first run that many
        problems of each cell for real, as a run would (rows, cache, budget), and estimate the rest. A run (a
        pilot too) holds the output directory's `RunLock`: a second one is refused, or with `wait` waits.
        """
        summary = RunSummary()
        if self.config.dry_run and not self.config.pilot:  # a reader: never waits for, nor blocks, a run
            summary.in_use_by = RunLock.holder(self.output_dir)
            summary.estimates = self.estimate()
            self._write_estimate(summary)
            return summary
        with RunLock(self.output_dir, command="dd-evals run", wait=self.config.wait):  # before anything is written
            return self._run(summary)

    def _run(self, summary: RunSummary) -> RunSummary:
        from dd_prompting.evals.report import write_report

        cells = self.cells()
        self.lm_pool.check(cells)
        store = ResultStore(self.output_dir / RESULTS_FILE)
        done = store.completed()
        self._check_budget_prices(cells, done)
        budget = Budget(self.config.max_cost)
        wall = load_wall_times(self.output_dir / RUN_FILE)
        started = time.perf_counter()
        try:
            for cell in cells:
                if cell.model.batch:
                    continue  # below, in rounds
                todo = self._todo(cell, done, summary)
                if todo:
                    self._timed(cell, wall, self._run_cell, cell, todo, store, budget, summary, done)
                if summary.stopped:
                    break
            for model in {cell.model.name: cell.model for cell in cells if cell.model.batch}.values():
                if summary.stopped:
                    break
                group = [cell for cell in cells if cell.model.name == model.name]
                self._run_batched(model, group, store, budget, summary, done, wall)
        except KeyboardInterrupt:
            summary.stopped = "interrupted"
            raise
        finally:
            store.close()
            if self._cache is not None:
                self._cache.close()  # reopens by itself if this harness runs again
            summary.wall_s = time.perf_counter() - started
            summary.spent = budget.spent
            summary.skipped_lines = list(self._plan.skipped)
            self._write_run_file(summary, wall)
            summary.report_files = write_report(self.output_dir, plots=self.config.plots)
            self._log_summary(summary)
        if self.config.dry_run:
            summary.pilot_rows = summary.rows_written
            summary.estimates = self.estimate()
            self._write_estimate(summary)
        return summary

    def _todo(self, cell: Cell, done: dict, summary: RunSummary) -> list[Problem]:
        todo = [p for p in cell.dataset.problems if (cell.fingerprint, p.id) not in done]
        summary.examples_skipped += len(cell.dataset.problems) - len(todo)
        if self.config.dry_run:  # a pilot
            pilot = self.estimator.pilot_ids(cell)
            todo = [problem for problem in todo if problem.id in pilot]
        if not todo:
            logger.info("%s: all %d examples done already", cell.label, len(cell.dataset.problems))
        return todo

    @staticmethod
    def _timed(cell: Cell, wall: dict[str, float], run: Callable, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return run(*args, **kwargs)
        finally:
            wall[cell.fingerprint] = wall.get(cell.fingerprint, 0.0) + time.perf_counter() - started

    def _run_batched(self, model: ModelConfig, cells: list[Cell], store: ResultStore, budget: Budget,
                     summary: RunSummary, done: dict, wall: dict[str, float]) -> None:
        """Every cell of a model called in batches, in rounds until all their problems have rows."""
        from dd_prompting.batches import MANIFEST_FILE, BatchManifest, BatchRounds
        from dd_prompting.evals.budget import round_cost

        todo = {cell.fingerprint: self._todo(cell, done, summary) for cell in cells}
        if not any(todo.values()):
            return
        for cell in cells:
            self.lm_pool.attach(cell)
        reserved = 0.0

        def one_pass() -> None:
            for cell in cells:
                if todo[cell.fingerprint]:
                    todo[cell.fingerprint] = self._timed(cell, wall, self._run_cell, cell, todo[cell.fingerprint],
                                                         store, budget, summary, done, batched=True)

        def before_submit(lines: list[dict[str, Any]]) -> str | None:
            nonlocal reserved
            cost = round_cost(lines, model.model, self.pricing(model))
            if not budget.try_reserve(cost):
                return (f"budget: ${budget.spent:.4f} spent; the next round of {model.name} ({len(lines)} calls, "
                        f"about ${cost:.4f} at batch prices) would pass max_cost ${budget.limit:.4f}, so it was not "
                        "submitted")
            reserved += cost
            return None

        def on_billed(billed: float) -> None:
            nonlocal reserved
            budget.settle(reserved, billed)
            reserved = 0.0

        engine = self.lm_pool.lm(model).engine
        rounds = BatchRounds(engine, model, BatchManifest(self.output_dir / MANIFEST_FILE),
                             before_submit=before_submit, on_billed=on_billed, progress=self.config.progress)
        result = rounds.run(one_pass)
        self._batches[model.name] = result
        logger.info("%s: %d passes, %d batch(es), %d calls sent, %d answered, %d sent again, %d failed for good; "
                    "$%.4f billed", model.name, result.passes, len(result.batches), result.lines_sent, result.answered,
                    result.resent, result.given_up, result.billed)
        if result.stopped:
            summary.stopped = result.stopped

    def _check_budget_prices(self, cells: list[Cell], done: dict) -> None:
        if self.config.max_cost is None:
            return
        unpriced = sorted({cell.model.name for cell in cells if not self.pricing(cell.model).known
                           and any((cell.fingerprint, p.id) not in done for p in cell.dataset.problems)})
        if unpriced:
            raise ValueError(
                f"max_cost needs a price for every model, and litellm's price map has none for {unpriced}; set "
                "input_cost_per_million and output_cost_per_million in their [[models]] sections"
            )

    def _run_cell(self, cell: Cell, todo: list[Problem], store: ResultStore, budget: Budget,
                  summary: RunSummary, done: dict, *, batched: bool = False) -> list[Problem]:
        """Run `todo` through the cell; returns the problems still waiting on a batch (in a batch round).

        In a batch round nothing is spent per example: the budget reserves and settles a round's batch."""
        from tqdm.auto import tqdm

        self.lm_pool.attach(cell)
        workers = min(self.config.threads, cell.workers_cap or self.config.threads)
        total = len(cell.dataset.problems)
        previous = [row for key, row in done.items() if key[0] == cell.fingerprint]
        correct = sum(bool(row.get("correct")) for row in previous)
        finished = len(previous)
        # The guard reserves by the same model the dry run estimates with, and it goes on learning as rows come.
        model = self.estimator.cost_model(cell, done) if budget.limit is not None and not batched else None
        progress = tqdm(total=total, initial=total - len(todo), desc=cell.label, unit="ex",
                        disable=not self.config.progress, dynamic_ncols=True)
        logger.info("%s: %d examples to run (%d done already), %d at a time", cell.label, len(todo),
                    total - len(todo), workers)
        tally = _CellTally(started=time.perf_counter())
        pending: dict[Future, tuple[Problem, float, Estimate | None]] = {}
        queue = iter(todo)
        exhausted = False
        waiting: list[Problem] = []

        def record(future: Future) -> None:
            nonlocal correct, finished
            problem, reserve, estimate = pending.pop(future)
            row = future.result()
            if row is None:  # waits on a batch: no row this round
                waiting.append(problem)
                budget.settle(reserve, 0.0)
                return
            store.append(row)
            budget.settle(reserve, 0.0 if batched else row["new_cost"])
            if model is not None:
                model.observe_row(problem, row)
            tally.add(row)
            logger.debug("%s: example %s: %s%s, %d calls (%d from the cache), %d retries", cell.label,
                         row["example_id"], "right" if row["correct"] else "wrong",
                         "" if row["parse_status"] == "ok" else f" ({row['parse_status']})", row["calls"],
                         row["cached_calls"], row.get("retries") or 0)
            summary.rows_written += 1
            summary.new_calls += row["calls"] - row["cached_calls"]
            summary.cached_calls += row["cached_calls"]
            summary.failed += bool(row["error"])
            summary.parse_failures += row["parse_status"] in PARSE_FAILURES
            finished += 1
            correct += bool(row["correct"])
            progress.update(1)
            progress.set_postfix(acc=f"{correct / finished:.1%}", spent=f"${budget.spent:.4f}",
                                 failed=summary.failed, refresh=False)
            if self.on_row is not None:
                self.on_row(row)

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="evals")
        # Twice as many queued as there are workers, so none waits for this thread to hand it work; under a
        # budget only as many as run, since every queued example holds a reservation the run cannot spend.
        depth = workers if budget.limit is not None else 2 * workers
        try:
            while True:
                # Until the model has seen a few problems, a budgeted run feels its way one example at a time.
                room = depth if model is None or model.calibrated else 1
                while not exhausted and not summary.stopped and len(pending) < room:
                    problem = next(queue, None)
                    if problem is None:
                        exhausted = True
                        break
                    reserve, estimate = 0.0, None
                    if model is not None:
                        estimate = model.predict(problem)
                        reserve = model.reserve(estimate)
                    if not budget.try_reserve(reserve):
                        summary.stopped = (f"budget: ${budget.spent:.4f} spent and ${budget.reserved:.4f} in flight; "
                                           f"the next example (about ${reserve:.4f}) would pass max_cost "
                                           f"${budget.limit:.4f}")
                        break
                    future = pool.submit(evaluate_example, cell, problem, secrets=self.secrets)
                    pending[future] = (problem, reserve, estimate)
                if not pending:
                    break
                completed, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in completed:
                    record(future)
        except KeyboardInterrupt:
            # Queued examples are dropped; running ones are paid for already, so they finish and are kept.
            summary.stopped = "interrupted"
            for future in list(pending):
                if future.cancel():
                    budget.settle(pending.pop(future)[1], 0.0)
            if pending:
                logger.warning("Interrupted: finishing the %d examples already running (interrupt again to abort)",
                               len(pending))
            for future in as_completed(list(pending)):
                record(future)
            pool.shutdown(wait=True)
            raise
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            progress.close()
            tally.log(cell.label)
        pool.shutdown(wait=True)
        if waiting:
            logger.info("%s: %d examples wait on a batch", cell.label, len(waiting))
        return waiting

    # ---------------------------------------------------------------- records
    def _write_run_file(self, summary: RunSummary, wall: dict[str, float]) -> None:
        last_run = {
            "rows_written": summary.rows_written, "examples_skipped": summary.examples_skipped,
            "new_calls": summary.new_calls, "cached_calls": summary.cached_calls,
            "spent": round(summary.spent, 6), "failed": summary.failed,
            "parse_failures": summary.parse_failures, "stopped": summary.stopped,
            "wall_s": round(summary.wall_s, 3),
        }
        from dd_prompting.batches import MANIFEST_FILE, BatchManifest

        serving = self._lm_pool.serving_stats() if self._lm_pool is not None else None
        manifest = BatchManifest(self.output_dir / MANIFEST_FILE)
        batches = manifest.batches if manifest.path.is_file() else None
        if self._batches:
            last_run["batch_rounds"] = {name: asdict(result) for name, result in self._batches.items()}
        write_eval_run_file(self.output_dir, self.config, self._plan, pricing=self.pricing, last_run=last_run,
                            wall=wall, secrets=self.secrets, serving=serving, batches=batches)

    def _log_summary(self, summary: RunSummary) -> None:
        logger.info(
            "%d rows written (%d skipped as done), %d new calls, %d from cache, $%.4f spent, %d failed, "
            "%d parse failures%s",
            summary.rows_written, summary.examples_skipped, summary.new_calls, summary.cached_calls, summary.spent,
            summary.failed, summary.parse_failures, f"; stopped early: {summary.stopped}" if summary.stopped else "",
        )


@dataclass
class _CellTally:
    """What one invocation did in one cell, for the log line that closes the cell."""

    started: float
    examples: int = 0
    correct: int = 0
    calls: int = 0
    cached_calls: int = 0
    retries: int = 0
    new_cost: float = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.examples += 1
        self.correct += bool(row["correct"])
        self.calls += row["calls"]
        self.cached_calls += row["cached_calls"]
        self.retries += row.get("retries") or 0
        self.new_cost += row.get("new_cost") or 0.0

    def log(self, label: str) -> None:
        logger.info("%s: %d examples run (%d right), %d calls: %d cache hits, %d new, %d retries; $%.4f new cost, "
                    "%.1f s", label, self.examples, self.correct, self.calls, self.cached_calls,
                    self.calls - self.cached_calls, self.retries, self.new_cost, time.perf_counter() - self.started)
