"""A run's report: `metrics.json`, `report.md` (Markdown tables) and PNG plots.

Plots: `loss.png` (each student's training loss against its optimizer steps) and `accuracy.png`
(held-out accuracy of the student pair, the CoT student and the teacher).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dd_prompting.serving import describe_serving
from dd_prompting.stats import wilson_interval

__all__ = [
    "write_metrics",
    "write_report",
    "plot_losses",
    "plot_accuracy",
    "comparison_table",
    "paired_sentence",
    "evaluation_notes",
    "budget_sentence",
    "steps_table",
]

logger = logging.getLogger(__name__)

_LABELS = {"pair": "student pair (decomposer + solver)", "cot": "CoT student", "teacher": "teacher"}


def write_metrics(metrics: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(metrics, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def comparison_table(evaluation: Mapping[str, Any]) -> str:
    """The held-out comparison as a Markdown table (one row per system), accuracies with 95% Wilson intervals."""
    lines = ["| system | accuracy [95% interval] | correct / problems | seconds | on |", "|---|---|---|---|---|"]
    for key in ("pair", "cot", "teacher"):
        result = evaluation.get(key)
        if not result:
            continue
        seconds = result.get("seconds")
        lines.append(
            f"| {_LABELS[key]} | {_with_interval(result)} | "
            f"{result['correct']} / {result['problems']} | {'' if seconds is None else f'{seconds:.1f}'} | "
            f"{result.get('on', 'held-out problems')} |"
        )
    return "\n".join(lines)


def _with_interval(result: Mapping[str, Any]) -> str:
    """An accuracy with its 95% Wilson interval, as "94.0% [90.7%, 96.2%]"."""
    low, high = result.get("interval") or wilson_interval(result["correct"], result["problems"])
    return f"{100 * result['accuracy']:.1f}% [{100 * low:.1f}%, {100 * high:.1f}%]"


def paired_sentence(evaluation: Mapping[str, Any]) -> str | None:
    """Which of the pair and the CoT student wins on the same held-out problems, and whether it is significant."""
    test = evaluation.get("paired")
    if not test:
        return None
    a, b = test["accuracy_a"], test["accuracy_b"]
    names = {"pair": "the student pair", "cot": "the CoT student"}
    first, second = names.get(test["strategy_a"], test["strategy_a"]), names.get(test["strategy_b"], test["strategy_b"])
    verdict = "significant at the 5% level" if test["p_value"] < 0.05 else "not significant at the 5% level"
    if a == b:
        lead = f"{first} and {second} score the same ({100 * a:.1f}%)"
    else:
        winner, loser = (first, second) if a > b else (second, first)
        lead = f"{winner[0].upper() + winner[1:]} beats {loser} by {100 * abs(a - b):.1f} points"
    return (f"{lead} on the same {test['n']} held-out problems ({test['only_a']} solved only by {first}, "
            f"{test['only_b']} only by {second}; exact McNemar p = {test['p_value']:.3g}, {verdict}).")


def evaluation_notes(evaluation: Mapping[str, Any]) -> list[str]:
    """One-line facts under the table: how the pair's decompositions went, truncations, API errors."""
    notes = []
    pair = evaluation.get("pair") or {}
    if "subquestions_exact" in pair:
        notes.append(f"The decomposer wrote exactly the reference sub-questions for {100 * pair['subquestions_exact']:.1f}% "
                     "of the held-out problems.")
    if pair.get("fallbacks"):
        notes.append(f"The decomposer wrote no sub-questions for {pair['fallbacks']} problems (the question was asked directly).")
    for key in ("pair", "cot"):
        if (evaluation.get(key) or {}).get("truncated"):
            notes.append(f"{_LABELS[key]}: {evaluation[key]['truncated']} outputs ran out of tokens.")
    for role, served in ((evaluation.get("serving") or {}).get("students") or {}).items():
        notes.append(f"The {role} student ran on a server: {describe_serving(served)}.")
    teacher = evaluation.get("teacher") or {}
    if teacher.get("api_errors"):
        notes.append(f"The teacher's API failed on {teacher['api_errors']} problems (counted as wrong).")
    return notes


def budget_sentence(students: Mapping[str, Any], *, equal_compute: bool = False) -> str | None:
    """The training each side of the comparison had: steps and seconds of the pair (both students) and of CoT."""
    if not all(role in students for role in ("decomposer", "solver", "cot")):
        return None

    def total(roles, key):
        values = [students[role].get(key) for role in roles]
        return None if any(v is None for v in values) else sum(values)

    pair_steps, pair_seconds = total(("decomposer", "solver"), "steps"), total(("decomposer", "solver"), "train_seconds")
    cot_steps, cot_seconds = students["cot"].get("steps"), students["cot"].get("train_seconds")
    if pair_steps is None or cot_steps is None:
        return None
    seconds = (lambda s: "" if s is None else f" in {s:.0f} s")
    sentence = (f"Training budget: the student pair trained {pair_steps:,} steps in all (decomposer "
                f"{students['decomposer']['steps']:,} + solver {students['solver']['steps']:,}){seconds(pair_seconds)}, "
                f"the CoT student {cot_steps:,} steps{seconds(cot_seconds)}")
    if equal_compute:
        return sentence + " (`equal_compute`: the CoT student gets the pair's total steps)."
    if cot_steps < pair_steps:
        return sentence + "; rerun with `--equal-compute` to give the CoT student the pair's total steps."
    return sentence + "."


def steps_table(evaluation: Mapping[str, Any]) -> str | None:
    """Held-out accuracy by the number of reference steps of a problem, one column per system."""
    by_steps = evaluation.get("by_steps")
    if not by_steps:
        return None
    systems = [key for key in ("pair", "cot", "teacher") if any(key in cell for cell in by_steps.values())]
    lines = ["| steps | problems | " + " | ".join(_LABELS[key] for key in systems) + " |",
             "|---|---|" + "---|" * len(systems)]
    for count, cells in by_steps.items():
        problems = max(cell["problems"] for cell in cells.values())
        shown = []
        for key in systems:
            shown.append(_with_interval(cells[key]) if key in cells else "")
        lines.append(f"| {count} | {problems} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def plot_losses(student_dirs: Mapping[str, str | Path], path: str | Path) -> Path | None:
    """One curve per student from its `loss.json` (the Trainer's log history); None if there is none."""
    curves = {}
    for role, directory in student_dirs.items():
        loss_file = Path(directory) / "loss.json"
        if not loss_file.is_file():
            continue
        history = json.loads(loss_file.read_text(encoding="utf-8"))
        points = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]
        if points:
            curves[role] = points
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for role, points in curves.items():
        ax.plot(*zip(*points), label=f"{role} student")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.set_yscale("log")
    ax.set_title("Training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_accuracy(evaluation: Mapping[str, Any], path: str | Path) -> Path | None:
    """Bars of held-out accuracy: the student pair, the CoT student and the teacher."""
    systems = [key for key in ("pair", "cot", "teacher") if evaluation.get(key)]
    if not systems:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    values = [100 * evaluation[key]["accuracy"] for key in systems]
    labels = [_LABELS[key].replace(" (", "\n(") for key in systems]
    if "teacher" in systems and evaluation["teacher"].get("on") not in (None, "held-out problems"):
        labels[systems.index("teacher")] += f"\n({evaluation['teacher']['on']})"
    intervals = [evaluation[key].get("interval") or wilson_interval(evaluation[key]["correct"], evaluation[key]["problems"])
                 for key in systems]
    errors = [[value - 100 * low for value, (low, _) in zip(values, intervals)],
              [100 * high - value for value, (_, high) in zip(values, intervals)]]
    bars = ax.bar(labels, values, yerr=errors, capsize=4, color=["tab:blue", "tab:orange", "tab:gray"][: len(systems)])
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:.1f}%", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom")
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%), 95% interval")
    problems = evaluation.get("problems")
    ax.set_title(f"Held-out accuracy ({problems} problems)" if problems else "Held-out accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_report(run_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write `report.md` from `metrics` (as in `metrics.json`), linking the plots that exist."""
    run_dir = Path(run_dir)
    lines = [f"# dd-distill run `{metrics.get('run', run_dir.name)}`", ""]
    teacher = metrics.get("teacher", {})
    if teacher:
        lines += [f"Teacher: `{teacher.get('kind')}`" + (f" ({teacher['model']})" if teacher.get("model") else "") + ".", ""]
    evaluation = metrics.get("evaluation")
    if evaluation:
        lines += ["## Held-out accuracy", "", comparison_table(evaluation), ""]
        sentence = paired_sentence(evaluation)
        if sentence:
            lines += [sentence, ""]
        budget = budget_sentence(metrics.get("students") or {}, equal_compute=bool(metrics.get("equal_compute")))
        if budget:
            lines += [budget, ""]
        notes = evaluation_notes(evaluation)
        if notes:
            lines += [f"- {note}" for note in notes] + [""]
        by_steps = steps_table(evaluation)
        if by_steps:
            lines += ["### By number of steps", "", "Accuracy [95% interval] on the held-out problems with that many "
                      "reference steps.", "", by_steps, ""]
        if (run_dir / "accuracy.png").is_file():
            lines += ["![accuracy](accuracy.png)", ""]
    traces = metrics.get("traces")
    if traces:
        from dd_prompting.distill.teach.traces import TraceReport

        lines += ["## Teacher traces", "", TraceReport(**traces).to_markdown(), ""]
    rows = metrics.get("rows")
    if rows:
        lines += ["## Fine-tuning rows", "", "| role | rows |", "|---|---|"]
        lines += [f"| {role} | {count} |" for role, count in rows.items()] + [""]
    students = metrics.get("students")
    if students:
        lines += [
            "## Students",
            "",
            "| role | model | parameters | steps | seconds | torch threads | final training loss |",
            "|---|---|---|---|---|---|---|",
        ]
        for role, info in students.items():
            loss = info.get("final_train_loss")
            lines.append(
                f"| {role} | {info.get('base_model', '')} | {_count(info.get('parameters'))} | {info.get('steps', '')} | "
                f"{info.get('train_seconds', '')} | {info.get('torch_threads', '')} | {'' if loss is None else f'{loss:.4f}'} |"
            )
        lines.append("")
        if (run_dir / "loss.png").is_file():
            lines += ["![training loss](loss.png)", ""]
    timings = metrics.get("stage_seconds")
    if timings:
        lines += ["## Time per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in timings.items()] + [""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _count(value: Any) -> str:
    if not isinstance(value, int):
        return ""
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.0f}k"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
