"""Run every (dataset, model, strategy) cell of a config, concurrently, resumably, within a budget.

Each example runs in a worker thread under `dspy.context(lm=..., adapter=...)`. When it ends, its row
is appended to results.jsonl and flushed, so a killed run loses at most the examples in flight, and
their calls are already in the call cache. A rerun skips finished rows and retries rows that ended
in an API error.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dspy

from dd_prompting.data import Problem
from dd_prompting.evals.budget import Budget, CellEstimate, CostModel
from dd_prompting.evals.cell import Cell, evaluate_example
from dd_prompting.evals.config import EvalConfig, ModelConfig, StrategyConfig
from dd_prompting.evals.datasets import Dataset, load_dataset, load_demo_pool
from dd_prompting.evals.estimate import PRIOR_PROFILE, Estimate, ReplyProfile, estimate_example, prior_seconds
from dd_prompting.models.config import SERVING_FIELDS
from dd_prompting.models import (
    CallCache,
    Pricing,
    build_lm,
    environment_secrets,
    identity_for,
    lookup_pricing,
    redact,
    safe_url,
    url_secrets,
)
from dd_prompting.result_store import RESULTS_FILE, RUN_FILE, ResultStore, write_run_file
from dd_prompting.results import PARSE_FAILURES
from dd_prompting.run_lock import RunLock, RunLockHolder
from dd_prompting.evals.strategies import (
    build_program,
    choose_demos,
    describe_program,
    load_student_decomposer,
    load_student_program,
    make_adapter,
    program_fingerprint,
)

__all__ = ["Harness", "RunSummary"]

logger = logging.getLogger(__name__)

ESTIMATE_FILE = "estimate.json"


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


def _all_models(config: EvalConfig) -> list[ModelConfig]:
    """The models that solve, and the hybrid decomposers (which only_models may have left out of them)."""
    names = {model.name for model in config.models}
    return [*config.models, *(model for name, model in config.decomposers.items() if name not in names)]


def _secrets(config: EvalConfig) -> list[str]:
    """Values that must never be written: configured keys, key-like environment variables, URL credentials."""
    models = _all_models(config)
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


def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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
        self._cells: list[Cell] | None = None
        self._cache: CallCache | None = None
        self._pricing: dict[str, Pricing] = {}
        self._lms: dict[str, dspy.BaseLM] = {}
        self._datasets: dict[str, Dataset] = {}
        self._skipped: dict[str, None] = {}  # malformed lines of the input files, in the order met

    # ---------------------------------------------------------------- planning
    @property
    def cache(self) -> CallCache:
        if self._cache is None:
            self._cache = CallCache(self.config.cache_path)
        return self._cache

    def pricing(self, model: ModelConfig) -> Pricing:
        if model.name not in self._pricing:
            self._pricing[model.name] = lookup_pricing(model)
        return self._pricing[model.name]

    def cells(self) -> list[Cell]:
        """Every runnable (dataset, model, strategy): students pair only with the student strategy."""
        if self._cells is not None:
            return self._cells
        config = self.config
        strategies = list(config.strategies)
        if any(m.kind == "student" for m in config.models) and not any(s.kind == "student" for s in strategies):
            strategies.append(StrategyConfig(kind="student"))
        cells = []
        for dataset_config in config.datasets:
            dataset = load_dataset(dataset_config, limit=config.limit, seed=config.seed,
                                   skip_malformed=config.skip_malformed)
            self._datasets[dataset.name] = dataset
            self._skipped.update(dict.fromkeys(dataset.skipped))
            evaluated = {problem.id for problem in dataset.problems}
            for strategy in strategies:
                program, prompts, demo_source = None, [], None
                if strategy.kind != "student":
                    demos: list[Problem] = []
                    if isinstance(strategy.demos, int) and strategy.demos > 0:
                        skipped: list[str] = []
                        pool, demo_source = load_demo_pool(dataset_config, socratic=strategy.kind == "decomposed",
                                                           exclude=evaluated, answer_type=dataset.answer_type,
                                                           skip_malformed=config.skip_malformed, skipped=skipped)
                        self._skipped.update(dict.fromkeys(skipped))
                        demos = choose_demos(pool, strategy.demos, seed=config.seed)
                    elif strategy.demos == "builtin":
                        demo_source = "dd_prompting.demos.WORKED_EXAMPLES"
                    program = build_program(strategy, demos, dataset.answer_type)
                    prompts = describe_program(program)
                for model in config.models:
                    if (model.kind == "student") != (strategy.kind == "student"):
                        continue
                    cell = Cell(dataset=dataset, dataset_config=dataset_config, model=model, strategy=strategy,
                                program=program, prompts=prompts, demo_source=demo_source,
                                adapter_name=model.default_adapter)
                    cell.fingerprint = self._fingerprint(cell)
                    cells.append(cell)
        unused = [s.name for s in strategies if s.kind == "student"] if not any(
            m.kind == "student" for m in config.models) else []
        if unused:
            logger.warning("Strategies %s run only on student models (kind = 'student'); none is configured.", unused)
        if not cells:
            raise ValueError("No (dataset, model, strategy) combination to run: student models run only the "
                             "'student' strategy and other models only the other strategies.")
        self._cells = cells
        return cells

    def _fingerprint(self, cell: Cell) -> str:
        # The name and the endpoint are part of a cell: two servers of one model string are two rows.
        model = self._public_model(cell.model)
        dataset = {key: value for key, value in asdict(cell.dataset_config).items() if key not in ("name",)}
        for key, default in (("answer_type", "number"), ("choices", None)):  # keep earlier runs' fingerprints
            if dataset.get(key) == default:
                del dataset[key]
        dataset["sha256"] = cell.dataset.sha256
        strategy = program_fingerprint(cell.prompts) if cell.program is not None else asdict(cell.strategy)
        identity = {"model": model, "dataset": dataset, "strategy": strategy, "adapter": cell.adapter_name}
        if cell.strategy.decomposer is not None:
            identity["decomposer"] = self._public_model(self.config.decomposers[cell.strategy.decomposer])
        return _hash(identity)

    @staticmethod
    def _public_model(model: ModelConfig) -> dict[str, Any]:
        # What makes a model's replies what they are; not its concurrency, key variable, prices or retries.
        return {key: value for key, value in model.to_public_dict().items()
                if key not in ("threads", "api_key_env", "input_cost_per_million", "output_cost_per_million",
                               "retries", "retry_backoff", "timeout", *SERVING_FIELDS)}

    def _lm_for(self, cell: Cell) -> None:
        """Build the cell's LM (or student program) on first use, wrapped in the call cache."""
        model = cell.model
        if model.kind == "student":
            if model.name not in self._lms:
                self._lms[model.name] = load_student_program(model.run_dir, student=model.student)
            cell.program = self._lms[model.name]
            cell.memo = (self.cache, identity_for(model))
            return
        cell.lm = self._lm(model)
        cell.adapter = make_adapter(cell.adapter_name)  # adapters keep no per-call state; one serves all threads
        if cell.strategy.decomposer is not None:
            self._attach_decomposer(cell)

    def _lm(self, model: ModelConfig) -> dspy.BaseLM:
        if model.name not in self._lms:
            self._lms[model.name] = build_lm(model, cache=self.cache, timeout=self.config.timeout,
                                             retries=self.config.retries, retry_backoff=self.config.retry_backoff)
        return self._lms[model.name]

    def _attach_decomposer(self, cell: Cell) -> None:
        """A hybrid pair: the strategy's decomposer model writes the sub-questions, the cell's model solves.

        The program is shared by the strategy's cells, and so is its decomposer. When the two models
        want different prompt formats (a local decomposer, an API solver), no adapter is set for the
        cell, so each call takes the format of the LM it goes to (see `DecomposedSolver`).
        """
        decomposer = self.config.decomposers[cell.strategy.decomposer]
        program = cell.program
        if decomposer.kind == "student":
            from dd_prompting.distill.students.modules import DecomposerModule

            if decomposer.student != "pair":
                raise ValueError(f"strategies[{cell.strategy.name}]: decomposer {decomposer.name!r} is a "
                                 f"{decomposer.student!r} student; a hybrid needs a pair run's decomposer")
            if not isinstance(program.decompose, DecomposerModule):
                program.decompose = load_student_decomposer(decomposer.run_dir)
            return
        program.decompose.set_lm(self._lm(decomposer))
        if decomposer.default_adapter != cell.adapter_name:
            cell.adapter = None

    # ---------------------------------------------------------------- estimating
    def estimate(self, *, skip_done: bool = True) -> dict[str, CellEstimate]:
        """Calls, tokens, cost and seconds per cell for the examples still to run; no model is called.

        Each cell's `CostModel` learns from what is in the cache for it: its finished rows (a pilot's
        first), and problems whose calls are all cached though they have no row; with none, the prior.
        """
        done = ResultStore(self.output_dir / RESULTS_FILE, read_only=True).completed() if skip_done else {}
        return {cell.label: self._estimate_cell(cell, done) for cell in self.cells()}

    def _estimate_cell(self, cell: Cell, done: dict) -> CellEstimate:
        model = self._cost_model(cell, done)
        todo = [problem for problem in cell.dataset.problems if (cell.fingerprint, problem.id) not in done]
        predictions = {problem.id: model.predict(problem) for problem in todo}

        def replayed(problem: Problem) -> bool:
            replay = predictions[problem.id].replay
            return replay is not None and replay.complete

        # Problems paid for by another run (a shared cache) are free here, and teach the model what they took.
        before = len(model.observations)
        for problem in filter(replayed, todo):
            model.observe_replay(problem, predictions[problem.id].replay, refit=False)
        if len(model.observations) > before:
            model.fit()
            predictions.update({problem.id: model.predict(problem) for problem in todo if not replayed(problem)})
        return model.summarize(list(predictions.values()), dataset=cell.dataset.name, model=cell.model.name,
                               strategy=cell.strategy.name, done=len(cell.dataset.problems) - len(todo))

    def _cost_model(self, cell: Cell, done: dict) -> CostModel:
        """The cell's cost model, fitted on its finished rows (the pilot's first, at most MAX_OBSERVATIONS)."""
        pilot = self._pilot_ids(cell)
        model = CostModel(lambda problem, profile, cached: self._estimate_one(
            cell, problem, profile=profile, cache="run" if cached else None), pilot=pilot)
        problems = {problem.id: problem for problem in cell.dataset.problems}
        rows = [row for (fingerprint, example_id), row in done.items()
                if fingerprint == cell.fingerprint and example_id in problems]
        rows.sort(key=lambda row: row["example_id"] not in pilot)  # stable: then in the order they ran
        for row in rows[:CostModel.MAX_OBSERVATIONS]:
            model.observe_row(problems[row["example_id"]], row, refit=False)
        model.fit()
        return model

    def _pilot_ids(self, cell: Cell) -> set[str]:
        """The problems a pilot runs in this cell: `pilot` of them, drawn with the run's seed (the same in every
        cell of a dataset)."""
        if not self.config.pilot:
            return set()
        ids = [problem.id for problem in cell.dataset.problems]
        return set(random.Random(f"pilot-{self.config.seed}").sample(ids, min(self.config.pilot, len(ids))))

    def _estimate_one(self, cell: Cell, problem: Problem, *, profile: ReplyProfile = PRIOR_PROFILE,
                      cache: Any = "run") -> Estimate:
        if cell.model.kind == "student":
            return Estimate(examples=1, calls=1, cost=0.0, seconds=prior_seconds(1, 0))  # one local pipeline run
        priced_as = None
        decompose = getattr(cell.program, "decompose", None)
        if cell.strategy.decomposer is not None and isinstance(decompose, dspy.Predict):
            # A hybrid's decomposition is priced as its own model's (free for a student), with no LM built.
            decomposer = self.config.decomposers[cell.strategy.decomposer]
            priced_as = {decompose.signature: (identity_for(decomposer), self.pricing(decomposer), decomposer.model)}
        return estimate_example(
            cell.program, {"question": problem.question}, adapter=make_adapter(cell.adapter_name),
            token_model=cell.model.model, identity=identity_for(cell.model),
            cache=self.cache if cache == "run" else cache, pricing=self.pricing(cell.model), priced_as=priced_as,
            profile=profile,
        )

    def _write_estimate(self, estimates: dict[str, CellEstimate], summary: RunSummary) -> None:
        from dd_prompting.evals.budget import PRIOR_RANGE

        record = {
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cells": [estimate.to_dict() for estimate in estimates.values()],
            "pilot": {"problems_per_cell": self.config.pilot, "examples_run": summary.pilot_rows,
                      "spent": round(summary.spent, 6)},
            "notes": {
                "problems": "problems still to run; done: finished already (their rows are in results.jsonl)",
                "cost": "USD for new calls; cached calls are free",
                "seconds": "the new calls one after another (a run with T threads takes about this / T)",
                "low, high": "80% interval of `range_of` (cost in USD, or prompt + completion tokens for free or "
                             "unpriced models): from the observed problems' spread around the model; with "
                             f"basis 'prior', the prior's measured error, x{PRIOR_RANGE[0]} to x{PRIOR_RANGE[1]}",
                "basis": "prior: typical reply lengths; pilot: problems a --pilot ran for real; cache: finished rows "
                         "or cached calls of this model and strategy",
            },
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        text = redact(json.dumps(record, indent=2, ensure_ascii=False, default=str), self.secrets)
        (self.output_dir / ESTIMATE_FILE).write_text(text + "\n", encoding="utf-8")

    def _check_models(self, cells: list[Cell]) -> None:
        """Every model the run will load, checked now, before any call: a local model that is neither on disk nor
        in the Hugging Face cache, or a run directory without the trained students, fails in one sentence."""
        from dd_prompting.distill.students.lookup import check_run_students
        from dd_prompting.model_loading import check_model_available

        models = {cell.model.name: cell.model for cell in cells}
        models.update({model.name: model for model in self.config.decomposers.values()})
        for model in models.values():
            if model.kind == "local" and model.model != "smollm2":
                check_model_available(model.model, gguf_file=model.gguf_file)
            elif model.kind == "student":
                check_run_students(model.run_dir, student=model.student)

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
            self._write_estimate(summary.estimates, summary)
            return summary
        with RunLock(self.output_dir, command="dd-evals run", wait=self.config.wait):  # before anything is written
            return self._run(summary)

    def _run(self, summary: RunSummary) -> RunSummary:
        from dd_prompting.evals.report import write_report

        cells = self.cells()
        self._check_models(cells)
        store = ResultStore(self.output_dir / RESULTS_FILE)
        done = store.completed()
        self._check_budget_prices(cells, done)
        budget = Budget(self.config.max_cost)
        wall = _load_wall_times(self.output_dir / RUN_FILE)
        started = time.perf_counter()
        try:
            for cell in cells:
                todo = [p for p in cell.dataset.problems if (cell.fingerprint, p.id) not in done]
                summary.examples_skipped += len(cell.dataset.problems) - len(todo)
                if self.config.dry_run:  # a pilot
                    pilot = self._pilot_ids(cell)
                    todo = [problem for problem in todo if problem.id in pilot]
                if not todo:
                    logger.info("%s: all %d examples done already", cell.label, len(cell.dataset.problems))
                    continue
                cell_started = time.perf_counter()
                try:
                    self._run_cell(cell, todo, store, budget, summary, done)
                finally:
                    wall[cell.fingerprint] = wall.get(cell.fingerprint, 0.0) + time.perf_counter() - cell_started
                if summary.stopped:
                    break
        except KeyboardInterrupt:
            summary.stopped = "interrupted"
            raise
        finally:
            store.close()
            if self._cache is not None:
                self._cache.close()  # reopens by itself if this harness runs again
            summary.wall_s = time.perf_counter() - started
            summary.spent = budget.spent
            summary.skipped_lines = list(self._skipped)
            self._write_run_file(summary, wall)
            summary.report_files = write_report(self.output_dir, plots=self.config.plots)
            self._log_summary(summary)
        if self.config.dry_run:
            summary.pilot_rows = summary.rows_written
            summary.estimates = self.estimate()
            self._write_estimate(summary.estimates, summary)
        return summary

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
                  summary: RunSummary, done: dict) -> None:
        from tqdm.auto import tqdm

        self._lm_for(cell)
        workers = min(self.config.threads, cell.workers_cap or self.config.threads)
        total = len(cell.dataset.problems)
        previous = [row for key, row in done.items() if key[0] == cell.fingerprint]
        correct = sum(bool(row.get("correct")) for row in previous)
        finished = len(previous)
        # The guard reserves by the same model the dry run estimates with, and it goes on learning as rows come.
        model = self._cost_model(cell, done) if budget.limit is not None else None
        progress = tqdm(total=total, initial=total - len(todo), desc=cell.label, unit="ex",
                        disable=not self.config.progress, dynamic_ncols=True)
        logger.info("%s: %d examples to run (%d done already), %d at a time", cell.label, len(todo),
                    total - len(todo), workers)
        tally = _CellTally(started=time.perf_counter())
        pending: dict[Future, tuple[Problem, float, Estimate | None]] = {}
        queue = iter(todo)
        exhausted = False

        def record(future: Future) -> None:
            nonlocal correct, finished
            problem, reserve, estimate = pending.pop(future)
            row = future.result()
            store.append(row)
            budget.settle(reserve, row["new_cost"])
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

    # ---------------------------------------------------------------- records
    def _write_run_file(self, summary: RunSummary, wall: dict[str, float]) -> None:
        from dd_prompting.evals.report import environment_versions

        cells = self._cells or []
        models = {}
        for model in _all_models(self.config):
            pricing = self.pricing(model)
            models[model.name] = {
                "model": model.model, "kind": model.kind, "api_base": safe_url(model.api_base),
                "temperature": model.temperature, "max_tokens": model.max_tokens, "adapter": model.default_adapter,
                "run_dir": model.run_dir, "gguf_file": model.gguf_file,
                "price_source": pricing.source,
                "input_cost_per_million": None if pricing.input_per_token is None else pricing.input_per_token * 1e6,
                "output_cost_per_million": None if pricing.output_per_token is None
                else pricing.output_per_token * 1e6,
            }
        record = {
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": dict(environment_versions()),
            "seed": self.config.seed,
            "limit": self.config.limit,
            "threads": self.config.threads,
            "max_cost": self.config.max_cost,
            "cache_dir": str(self.config.cache_path),
            "skipped_lines": list(self._skipped),
            "models": models,
            "datasets": {
                name: {"source": dataset.source, "sha256": dataset.sha256,
                       "selection_sha256": dataset.selection_sha256, "rows_in_file": dataset.total,
                       "evaluated": len(dataset.problems)}
                for name, dataset in self._datasets.items()
            },
            "cells": {
                cell.fingerprint: {
                    "dataset": cell.dataset.name, "model": cell.model.name, "strategy": cell.strategy.name,
                    "strategy_config": asdict(cell.strategy), "adapter": cell.adapter_name,
                    "demo_source": cell.demo_source, "prompts": cell.prompts,
                    "wall_s": round(wall.get(cell.fingerprint, 0.0), 3),
                }
                for cell in cells
            },
            "last_run": {
                "rows_written": summary.rows_written, "examples_skipped": summary.examples_skipped,
                "new_calls": summary.new_calls, "cached_calls": summary.cached_calls,
                "spent": round(summary.spent, 6), "failed": summary.failed,
                "parse_failures": summary.parse_failures, "stopped": summary.stopped,
                "wall_s": round(summary.wall_s, 3),
            },
        }
        write_run_file(self.output_dir, record, secrets=self.secrets)

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


def _load_wall_times(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", {})
    except (json.JSONDecodeError, AttributeError):
        return {}
    return {fingerprint: float(cell.get("wall_s") or 0.0) for fingerprint, cell in cells.items()}
