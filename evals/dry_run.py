"""A dry run: calls, tokens, cost and seconds per cell for the problems still to run, with no model called.

Each cell's `CostModel` learns from what is in the call cache for it: its finished rows (a pilot's first), and
problems whose calls are all cached though they have no row; with none, the prior. The same model guards a run's
budget (`Harness`), so a run reserves what its dry run would have estimated.
"""

from __future__ import annotations

import datetime
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy

from dd_prompting.data import Problem
from dd_prompting.evals.budget import PRIOR_RANGE, CellEstimate, CostModel
from dd_prompting.evals.cell import Cell
from dd_prompting.evals.config import EvalConfig, ModelConfig
from dd_prompting.evals.estimate import PRIOR_PROFILE, Estimate, ReplyProfile, estimate_example, prior_seconds
from dd_prompting.evals.strategies import make_adapter
from dd_prompting.models import CallCache, Pricing, identity_for, redact

__all__ = ["Estimator", "write_estimate", "ESTIMATE_FILE"]

ESTIMATE_FILE = "estimate.json"


class Estimator:
    """Estimates cells of `config` from `cache`, pricing each model with `pricing`."""

    def __init__(self, config: EvalConfig, cache: CallCache, pricing: Callable[[ModelConfig], Pricing]):
        self.config = config
        self.cache = cache
        self.pricing = pricing

    def estimate(self, cells: list[Cell], done: dict) -> dict[str, CellEstimate]:
        """Each cell's estimate for its problems without a row in `done` ((fingerprint, example id) -> row)."""
        return {cell.label: self._estimate_cell(cell, done) for cell in cells}

    def _estimate_cell(self, cell: Cell, done: dict) -> CellEstimate:
        model = self.cost_model(cell, done)
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
        estimate = model.summarize(list(predictions.values()), dataset=cell.dataset.name, model=cell.model.name,
                                   strategy=cell.strategy.name, done=len(cell.dataset.problems) - len(todo))
        if cell.model.batch and estimate.problems:
            # A problem's program makes its calls one after another, each answered by the next round's batch.
            estimate.rounds = math.ceil(max(0.0, estimate.calls - estimate.cached_calls) / estimate.problems - 1e-9)
        return estimate

    def cost_model(self, cell: Cell, done: dict) -> CostModel:
        """The cell's cost model, fitted on its finished rows (the pilot's first, at most MAX_OBSERVATIONS)."""
        pilot = self.pilot_ids(cell)
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

    def pilot_ids(self, cell: Cell) -> set[str]:
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


def write_estimate(output_dir: Path, estimates: dict[str, CellEstimate], *, pilot: int, pilot_rows: int,
                   spent: float, secrets: list[str]) -> None:
    """`estimate.json`: every cell's estimate, what a pilot ran and spent, and what the numbers mean."""
    record = {
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cells": [estimate.to_dict() for estimate in estimates.values()],
        "pilot": {"problems_per_cell": pilot, "examples_run": pilot_rows, "spent": round(spent, 6)},
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
    output_dir.mkdir(parents=True, exist_ok=True)
    text = redact(json.dumps(record, indent=2, ensure_ascii=False, default=str), secrets)
    (output_dir / ESTIMATE_FILE).write_text(text + "\n", encoding="utf-8")
