"""`run.json` of an eval run: what it ran (versions, models with their prices, datasets, each cell's prompts and
wall time) and what its last invocation did. The report reads it beside `results.jsonl`."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dd_prompting.evals.config import EvalConfig, ModelConfig
from dd_prompting.evals.plan import Plan, all_models
from dd_prompting.models import Pricing, safe_url
from dd_prompting.models.config import public_servers
from dd_prompting.result_store import write_run_file

__all__ = ["write_eval_run_file", "load_wall_times"]


def write_eval_run_file(output_dir: Path, config: EvalConfig, plan: Plan | None, *,
                        pricing: Callable[[ModelConfig], Pricing], last_run: dict[str, Any],
                        wall: dict[str, float], secrets: list[str],
                        serving: dict[str, dict[str, Any]] | None = None,
                        batches: dict[str, dict[str, Any]] | None = None) -> None:
    from dd_prompting.evals.report import environment_versions

    models = {}
    for model in all_models(config):
        price = pricing(model)
        models[model.name] = {
            "model": model.model, "kind": model.kind, "api_base": safe_url(model.api_base),
            "temperature": model.temperature, "max_tokens": model.max_tokens, "adapter": model.default_adapter,
            "run_dir": model.run_dir, "gguf_file": model.gguf_file,
            "price_source": price.source,
            "input_cost_per_million": None if price.input_per_token is None else price.input_per_token * 1e6,
            "output_cost_per_million": None if price.output_per_token is None else price.output_per_token * 1e6,
        }
        if model.batch:
            models[model.name]["batch"] = True
        if model.servers:
            models[model.name]["servers"] = public_servers(model.servers)
        if serving and model.name in serving:  # this invocation's requests and prefix-cache hits, per student
            models[model.name]["serving"] = serving[model.name]
    cells = plan.cells if plan is not None else []
    datasets = plan.datasets if plan is not None else {}
    record = {
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": dict(environment_versions()),
        "seed": config.seed,
        "limit": config.limit,
        "threads": config.threads,
        "max_cost": config.max_cost,
        "cache_dir": str(config.cache_path),
        "skipped_lines": list(plan.skipped) if plan is not None else [],
        "models": models,
        "datasets": {
            name: {"source": dataset.source, "sha256": dataset.sha256,
                   "selection_sha256": dataset.selection_sha256, "rows_in_file": dataset.total,
                   "evaluated": len(dataset.problems)}
            for name, dataset in datasets.items()
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
        "last_run": last_run,
    }
    if batches:  # every batch the run sent: id, model, server, requests, state, answered (batches.json has the keys)
        record["batches"] = {batch_id: {name: value for name, value in entry.items() if name != "keys"}
                             for batch_id, entry in batches.items()}
    write_run_file(output_dir, record, secrets=secrets)


def load_wall_times(path: Path) -> dict[str, float]:
    """Each cell's wall time so far, from an earlier `run.json` (none if there is none, or it can't be read)."""
    if not path.exists():
        return {}
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", {})
    except (json.JSONDecodeError, AttributeError):
        return {}
    return {fingerprint: float(cell.get("wall_s") or 0.0) for fingerprint, cell in cells.items()}
