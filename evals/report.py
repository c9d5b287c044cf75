"""The report of a run: summary.md, summary.csv, paired.csv and PNG plots, from results.jsonl and run.json.

It can be rebuilt at any time from those two files (`python -m dd_prompting.evals report DIR`), so a report always
matches the rows it was made from.
"""

from __future__ import annotations

import csv
import functools
import json
import platform
from collections import Counter
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from dd_prompting.result_store import ResultStore
from dd_prompting.results import CellSummary, PairedTest, paired_tests, summarize
from dd_prompting.serving import describe_serving

__all__ = ["write_report", "environment_versions"]

_PACKAGES = ("dd-prompting", "dspy", "litellm", "openai", "transformers", "torch", "diskcache", "tokenizers")


@functools.lru_cache(maxsize=1)
def environment_versions() -> dict[str, str | None]:
    """Python and package versions, read from installed metadata (nothing is imported)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}  # read once per process
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _load(output_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """run.json, the latest row of each (cell, example), and how many finished rows were written twice.

    Read-only: a report of a run in progress reads what is written so far and changes nothing."""
    run_path = output_dir / "run.json"
    run = json.loads(run_path.read_text(encoding="utf-8")) if run_path.exists() else {}
    store = ResultStore(output_dir / "results.jsonl", read_only=True)
    rows = store.latest()
    if run.get("cells"):
        rows = [row for row in rows if row["cell"] in run["cells"]]  # rows of the config the run.json describes
    return run, rows, store.duplicates


def write_report(output_dir: str | Path, *, plots: bool = True) -> list[str]:
    """Write summary.md, summary.csv, paired.csv (and PNG plots) into `output_dir`; return their paths."""
    output_dir = Path(output_dir)
    run, rows, duplicates = _load(output_dir)
    summaries = summarize(rows, run)
    tests = paired_tests(rows)
    written = [_write_csv(output_dir / "summary.csv", [asdict(s) for s in summaries], CellSummary),
               _write_csv(output_dir / "paired.csv", [asdict(t) for t in tests], PairedTest)]
    if plots and summaries:
        written += _plot(output_dir, summaries)
        written += _plot_compute(output_dir, summaries, rows)
    markdown = _markdown(run, rows, summaries, tests, [Path(path).name for path in written], duplicates=duplicates)
    (output_dir / "summary.md").write_text(markdown, encoding="utf-8")
    return [str(output_dir / "summary.md"), *written]


def _write_csv(path: Path, records: list[dict[str, Any]], cls: type) -> str:
    names = [field for field in cls.__dataclass_fields__]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for record in records:
            writer.writerow({key: _csv_value(value) for key, value in record.items()})
    return str(path)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _money(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"${value:.6f}" if value < 0.01 else f"${value:.4f}"


def _markdown(run: dict[str, Any], rows: list[dict[str, Any]], summaries: list[CellSummary],
              tests: list[PairedTest], files: list[str], *, duplicates: int = 0) -> str:
    lines = ["# Eval report", ""]
    last = run.get("last_run") or {}
    if run:
        lines.append(f"Written {run.get('written', '?')}; seed {run.get('seed')}, limit {run.get('limit')}, "
                     f"{run.get('threads')} threads.")
        spent = last.get("spent")
        lines.append(f"Last invocation: {last.get('rows_written', 0)} rows written, "
                     f"{last.get('examples_skipped', 0)} skipped as already done, {last.get('new_calls', 0)} new "
                     f"calls, {last.get('cached_calls', 0)} answered from the cache, "
                     f"{_money(spent) if spent is not None else '?'} spent, {last.get('wall_s', 0):.1f} s.")
        if last.get("stopped"):
            lines.append(f"**Stopped early: {last['stopped']}.** Run again (with a larger --max-cost) to go on "
                         "where it stopped.")
    for name, info in (run or {}).get("models", {}).items():
        for role, served in (info.get("serving") or {}).items():
            lines.append(f"{name}: the {role} student ran on a server in the last invocation: "
                         f"{describe_serving(served)}.")
    if duplicates:
        lines.append(f"{duplicates} row(s) of results.jsonl repeat an example already finished (two runs wrote this "
                     "directory at once, before dd-evals locked it); each example is counted once.")
    failed = sum(bool(row.get("error")) for row in rows)
    if failed:
        lines.append(f"**{failed} example(s) failed** after retries (API errors, rate limits, time-outs); they "
                     "count as wrong below and are retried by the next run.")
    lines += ["", "## Accuracy", "",
              "Flexible extraction takes the last number in the answer; strict accepts only an explicit answer "
              "(a bare number, or 'The answer is N'). Intervals are 95% Wilson intervals. Parse failures are "
              "outputs with no readable answer; they count as wrong.", "",
              "| dataset | model | strategy | n | accuracy (flexible) | accuracy (strict) | parse failures | "
              "failed | calls/problem | tokens/problem (in + out) | cost/problem | total cost | wall time |",
              "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        n = f"{s.n}" if s.planned in (None, s.n) else f"{s.n} of {s.planned}"
        wall = "" if s.wall_s is None else f"{s.wall_s:.1f} s"
        lines.append(
            f"| {s.dataset} | {s.model} | {s.strategy} | {n} | {_pct(s.accuracy)} "
            f"[{_pct(s.accuracy_low)}, {_pct(s.accuracy_high)}] | {_pct(s.accuracy_strict)} "
            f"[{_pct(s.accuracy_strict_low)}, {_pct(s.accuracy_strict_high)}] | {_pct(s.parse_failure_rate)} | "
            f"{s.failed} | {s.calls_per_problem:.2f} | {s.prompt_tokens_per_problem:.0f} + "
            f"{s.completion_tokens_per_problem:.0f} | {_money(s.cost_per_problem)} | {_money(s.total_cost)} | {wall} |"
        )
    lines += ["", "## Paired comparisons", ""]
    if tests:
        lines += ["Exact McNemar test on the problems both strategies finished (two-sided; flexible extraction). "
                  "'A only' counts problems A solved and B did not.", "",
                  "| dataset | model | A | B | paired n | accuracy A | accuracy B | A only | B only | p-value |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for t in tests:
            lines.append(f"| {t.dataset} | {t.model} | {t.strategy_a} | {t.strategy_b} | {t.n} | "
                         f"{_pct(t.accuracy_a)} | {_pct(t.accuracy_b)} | {t.only_a} | {t.only_b} | {t.p_value:.4g} |")
    else:
        lines.append("No two strategies ran on the same problems with the same model.")
    skipped = run.get("skipped_lines") or []
    if skipped:
        lines += ["", "## Skipped lines", "",
                  f"{len(skipped)} malformed line(s) of the input files were left out (skip_malformed):", ""]
        lines += [f"- `{entry}`" for entry in skipped]
    errors = Counter(str(row["error"]).split(":", 1)[0] for row in rows if row.get("error"))
    if errors:
        lines += ["", "## Failures", "", "| error | examples |", "|---|---:|"]
        lines += [f"| {name} | {count} |" for name, count in errors.most_common()]
    lines += _reproducibility(run)
    if any(name.startswith("accuracy_vs_seconds") for name in files):
        lines += ["", "## Compute", "", "`accuracy_vs_tokens.png` and `accuracy_vs_seconds.png` plot the models "
                  "without a price (or at $0). " + COMPUTE_NOTE]
    lines += ["", "## Files", ""]
    lines += [f"- `{name}`" for name in ["results.jsonl", "run.json", *files]]
    return "\n".join(lines) + "\n"


def _reproducibility(run: dict[str, Any]) -> list[str]:
    if not run:
        return []
    lines = ["", "## Reproducibility", "", "Versions: " + ", ".join(
        f"{name} {version}" for name, version in run.get("versions", {}).items() if version), ""]
    lines += ["| dataset | source | sha256 | evaluated | selection sha256 |", "|---|---|---|---:|---|"]
    for name, info in run.get("datasets", {}).items():
        lines.append(f"| {name} | {info['source']} | `{info['sha256'][:16]}` | {info['evaluated']} of "
                     f"{info['rows_in_file']} | `{info['selection_sha256'][:16]}` |")
    lines += ["", "| model | model string | api base | temperature | max tokens | adapter | prices (USD / 1M in, out) |",
              "|---|---|---|---:|---:|---|---|"]
    for name, info in run.get("models", {}).items():
        price = info.get("price_source")
        if info.get("input_cost_per_million") is not None:
            price = f"{info['input_cost_per_million']:g}, {info['output_cost_per_million']:g} ({price})"
        lines.append(f"| {name} | `{info['model']}` | {info.get('api_base') or ''} | {info.get('temperature')} | "
                     f"{info.get('max_tokens')} | {info.get('adapter')} | {price} |")
    lines += ["", "### Prompts", "",
              "Each strategy's predictors with their instructions and demos (run.json has the demos in full)."]
    seen = set()
    for cell in run.get("cells", {}).values():
        key = (cell["dataset"], cell["strategy"])
        if key in seen:
            continue
        seen.add(key)
        lines += ["", f"**{cell['strategy']}** on {cell['dataset']} (demos from: {cell.get('demo_source') or 'none'})"]
        for predictor in cell.get("prompts", []):
            fields = ", ".join(predictor["inputs"]) + " -> " + ", ".join(predictor["outputs"])
            instructions = " ".join(str(predictor["instructions"]).split())
            lines.append(f"- `{predictor['predictor']}` ({fields}), {len(predictor['demos'])} demos: {instructions}")
    return lines


COMPUTE_NOTE = ("Seconds per problem: the mean time of one problem's program run (all its calls, retries included), "
                "over the problems none of whose calls came from the cache; with several threads, problems overlap, "
                "so a cell's wall time is shorter than their sum. Tokens per problem: prompt + completion tokens.")


def _seconds_per_problem(rows: list[dict[str, Any]], summary: CellSummary) -> float | None:
    times = [row["latency_s"] for row in rows if row["dataset"] == summary.dataset and row["model"] == summary.model
             and row["strategy"] == summary.strategy and row.get("calls") and not row.get("cached_calls")
             and row.get("latency_s") is not None]
    return sum(times) / len(times) if times else None


def _plot_compute(output_dir: Path, summaries: list[CellSummary], rows: list[dict[str, Any]]) -> list[str]:
    """Accuracy against tokens and seconds per problem, for cells that cost nothing or have no price (local
    models): their points on the cost plot all sit at $0."""
    from matplotlib.figure import Figure

    free = [s for s in summaries if not s.cost_per_problem]
    if not free:
        return []
    written = []
    strategies = sorted({s.strategy for s in summaries})
    models = sorted({s.model for s in summaries})
    colours = {name: f"C{index % 10}" for index, name in enumerate(strategies)}
    markers = {name: "osD^vP*X"[index % 8] for index, name in enumerate(models)}
    several = len({s.dataset for s in free}) > 1
    for name, label, value in (
        ("tokens", "tokens per problem (prompt + completion)",
         lambda s: s.prompt_tokens_per_problem + s.completion_tokens_per_problem),
        ("seconds", "seconds per problem (uncached problems)", lambda s: _seconds_per_problem(rows, s)),
    ):
        points = [(s, value(s)) for s in free]
        points = [(s, x) for s, x in points if x is not None]
        if not points:
            continue
        figure = Figure(figsize=(7.5, 5.2))
        axis = figure.subplots()
        for s, x in points:
            axis.errorbar(x, 100 * s.accuracy,
                          yerr=[[100 * (s.accuracy - s.accuracy_low)], [100 * (s.accuracy_high - s.accuracy)]],
                          fmt=markers[s.model], color=colours[s.strategy], capsize=3,
                          label=f"{s.model} / {s.strategy}" + (f" ({s.dataset})" if several else ""))
        axis.set_xlabel(label)
        axis.set_ylabel("accuracy (%), 95% interval")
        axis.set_ylim(0, 100)
        axis.set_title(f"Accuracy against {name} (models without a price)")
        axis.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
        if name == "seconds":
            figure.text(0.01, 0.01, "Mean time of one problem's calls, over problems with no cache hit.",
                        fontsize="small")
        figure.tight_layout(rect=(0, 0.04, 1, 1))
        path = output_dir / f"accuracy_vs_{name}.png"
        figure.savefig(path, dpi=120)
        written.append(str(path))
    return written


def _plot(output_dir: Path, summaries: list[CellSummary]) -> list[str]:
    # A bare Figure renders with Agg and leaves pyplot's global state (and the user's backend) alone.
    from matplotlib.figure import Figure

    written = []
    datasets = sorted({s.dataset for s in summaries})
    models = sorted({s.model for s in summaries})
    strategies = sorted({s.strategy for s in summaries})
    figure = Figure(figsize=(max(6.0, 1.2 * len(strategies) * len(models)) * len(datasets) ** 0.5, 4.5))
    axes = figure.subplots(1, len(datasets), squeeze=False)
    width = 0.8 / max(1, len(models))
    for axis, dataset in zip(axes[0], datasets):
        for index, model in enumerate(models):
            cells = {s.strategy: s for s in summaries if s.dataset == dataset and s.model == model}
            xs = [i + (index - (len(models) - 1) / 2) * width for i, name in enumerate(strategies) if name in cells]
            found = [cells[name] for name in strategies if name in cells]
            if not found:
                continue
            heights = [100 * s.accuracy for s in found]
            errors = [[100 * (s.accuracy - s.accuracy_low) for s in found],
                      [100 * (s.accuracy_high - s.accuracy) for s in found]]
            axis.bar(xs, heights, width=width, yerr=errors, capsize=3, label=model)
        axis.set_xticks(range(len(strategies)), strategies, rotation=20, ha="right")
        axis.set_ylim(0, 100)
        axis.set_ylabel("accuracy (%), 95% interval")
        axis.set_title(dataset)
        axis.legend(fontsize="small")
    figure.tight_layout()
    path = output_dir / "accuracy.png"
    figure.savefig(path, dpi=120)
    written.append(str(path))

    priced = [s for s in summaries if s.cost_per_problem is not None]
    if priced:
        # Colour by strategy, marker by model: labels beside the points would overlap.
        colours = {name: f"C{index % 10}" for index, name in enumerate(strategies)}
        markers = {name: "osD^vP*X"[index % 8] for index, name in enumerate(models)}
        figure = Figure(figsize=(7.5, 4.8))
        axis = figure.subplots()
        for s in priced:
            label = f"{s.model} / {s.strategy}" + (f" ({s.dataset})" if len(datasets) > 1 else "")
            axis.errorbar(s.cost_per_problem, 100 * s.accuracy,
                          yerr=[[100 * (s.accuracy - s.accuracy_low)], [100 * (s.accuracy_high - s.accuracy)]],
                          fmt=markers[s.model], color=colours[s.strategy], capsize=3, label=label)
        positive = [s.cost_per_problem for s in priced if s.cost_per_problem > 0]
        if positive and max(positive) / min(positive) > 20 and len(positive) == len(priced):
            axis.set_xscale("log")
        axis.set_xlabel("cost per problem (USD)")
        axis.set_ylabel("accuracy (%), 95% interval")
        axis.set_ylim(0, 100)
        axis.set_title("Accuracy against cost")
        axis.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
        figure.tight_layout()
        path = output_dir / "accuracy_vs_cost.png"
        figure.savefig(path, dpi=120)
        written.append(str(path))
    return written
