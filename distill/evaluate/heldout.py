"""The held-out evaluation of a run: the student pair, the CoT student and the teacher on problems never trained on.

Every system's per-problem results are written in the evals row schema (`dd_prompting.results`) to
`<run>/eval/results.jsonl`, with a `run.json` describing them, so `dd-evals report <run>/eval`
renders a `dd-distill` run like any eval run. The summary it returns (and `metrics.json` keeps)
gives every accuracy with its 95% Wilson interval, and the pair and the CoT student are compared
with an exact McNemar test on the same held-out problems.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from dd_prompting.result_store import RESULTS_FILE, ResultStore, write_run_file
from dd_prompting.results import make_row, paired_tests, score_answer
from dd_prompting.stats import wilson_interval

__all__ = ["evaluate_heldout", "check_trained_students", "STUDENTS_MODEL"]

STUDENTS_MODEL = "students"  # the model label of the pair and the CoT student in the rows: they are paired


def check_trained_students(run) -> None:
    """Raise in one sentence unless the run holds every student it evaluates, trained and complete (nothing loaded)."""
    from dd_prompting.distill.students.artifacts import METADATA_FILE, check_student

    for role in run.roles:
        if not (run.student(role) / METADATA_FILE).is_file():
            raise FileNotFoundError(f"{run.student(role)} holds no trained {role} student: run the `train` stage first")
        check_student(run.student(role), role=role)


def evaluate_heldout(run) -> dict[str, Any]:
    """Run each trained student (and the teacher) on the run's held-out problems; write rows; return the summary."""
    from dd_prompting.distill.students.pipelines import CoTStudent, StudentPipeline


    config = run.config
    problems = run.read_problems(run.heldout)
    questions = [problem.question for problem in problems]
    check_trained_students(run)
    rows: list[dict[str, Any]] = []
    evaluation: dict[str, Any] = {"problems": len(problems)}

    pair_settings = dict(max_subquestions=config.teacher.max_subquestions,
                         max_decomposition_tokens=config.eval.max_decomposition_tokens,
                         max_answer_tokens=config.eval.max_answer_tokens, answer_type=config.data.answers)
    cot_settings = dict(max_new_tokens=config.eval.max_cot_tokens, answer_type=config.data.answers)
    pair_servers = config.servers.of(("decomposer", "solver"))
    cot_servers = config.servers.of(("cot",)) if config.train_cot else None
    if pair_servers:
        from dd_prompting.distill.serving.served_students import ServedStudentPipeline

        pipeline = ServedStudentPipeline.from_directories(run.student("decomposer"), run.student("solver"),
                                                          servers=pair_servers,
                                                          max_in_flight=config.servers.max_in_flight, **pair_settings)
        pipeline.check()
    else:
        pipeline = StudentPipeline.from_pretrained(run.student("decomposer"), run.student("solver"), **pair_settings)
    if cot_servers:
        from dd_prompting.distill.serving.served_students import ServedCoTStudent

        cot = ServedCoTStudent.from_directory(run.student("cot"), servers=cot_servers,
                                              max_in_flight=config.servers.max_in_flight, **cot_settings)
        cot.check()  # every server before the first problem
    started = time.monotonic()
    results = pipeline.solve(questions, batch_size=config.eval.batch_size, progress=True)
    evaluation["pair"], pair_rows = _score(run, "pair", problems, results, time.monotonic() - started)
    rows += pair_rows
    if config.train_cot:
        if not cot_servers:
            cot = CoTStudent.from_pretrained(run.student("cot"), **cot_settings)
        started = time.monotonic()
        results = cot.solve(questions, batch_size=config.eval.batch_size, progress=True)
        evaluation["cot"], cot_rows = _score(run, "cot", problems, results, time.monotonic() - started)
        rows += cot_rows
    serving = {**(pipeline.stats() if pair_servers else {}), **(cot.stats() if cot_servers else {})}
    if serving:  # what each student's server did: requests, prompt tokens, and the share its prefix cache served
        evaluation["serving"] = {"servers": {**(pair_servers or {}), **(cot_servers or {})}, "students": serving}
    evaluation["teacher"], teacher_rows = _teacher(run, problems)
    rows += teacher_rows
    paired = [test for test in paired_tests(rows) if test.model == STUDENTS_MODEL]
    if paired:
        evaluation["paired"] = asdict(paired[0])
    by_steps = _accuracy_by_steps(problems, rows)
    if by_steps:
        evaluation["by_steps"] = by_steps

    _write_results(run, rows)
    (run.eval / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
    return evaluation


def _score(run, system: str, problems, results, seconds: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    answers = run.config.data.answers
    rows = []
    exact = with_reference = 0
    for problem, result in zip(problems, results):
        subquestions = getattr(result, "subquestions", None)
        if problem.subquestions and subquestions is not None:
            with_reference += 1
            exact += list(subquestions) == list(problem.subquestions)
        rows.append(make_row(
            cell=f"{run.dir.name}:{system}", dataset="heldout", model=STUDENTS_MODEL, strategy=system,
            example_id=problem.id, question=problem.question, gold=problem.gold,
            **score_answer(answers, result.answer, problem.gold),
            subquestions=subquestions, subanswers=getattr(result, "subanswers", None) or getattr(result, "steps", None),
            reasoning=getattr(result, "text", None) or getattr(result, "decomposition", None),
            fallback=getattr(result, "fallback", None), calls=1, latency_s=round(seconds / max(len(problems), 1), 4),
            cost=0.0,
        ))
    scored = _accuracy(rows, on="held-out problems")
    scored["seconds"] = round(seconds, 2)
    scored["truncated"] = sum(bool(getattr(result, "truncated", False)) for result in results)
    if any(hasattr(result, "fallback") for result in results):
        scored["fallbacks"] = sum(getattr(result, "fallback", None) is not None for result in results)
    if with_reference:
        scored["subquestions_exact"] = exact / with_reference
    return scored, rows


def _teacher(run, problems) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The teacher on the held-out problems when that is free (annotations) or asked for; else on its traces."""
    from dd_prompting.distill.teach.teachers import SocraticTeacher, collect_traces
    from dd_prompting.distill.teach.traces import API_ERROR, latest_traces, read_traces

    config = run.config
    if config.teacher.kind in ("generator", "socratic") and all(p.subquestions for p in problems):
        traces, on = list(SocraticTeacher(answer_type=config.data.answers).traces(problems)), "held-out problems"
    elif config.eval.teacher:
        from dd_prompting.distill.teach.teachers import make_teacher

        teacher = make_teacher(config)
        try:
            traces = collect_traces(teacher, problems, run.eval / "teacher_traces.jsonl")
        finally:
            getattr(teacher, "close", lambda: None)()
        on = "held-out problems"
    else:
        traces, on = [t for t in latest_traces(read_traces(run.traces)) if t.sample == 0], "training problems"
    rows = [make_row(
        cell=f"{run.dir.name}:teacher", dataset="heldout" if on == "held-out problems" else "train",
        model="teacher", strategy=config.teacher.kind, example_id=trace.id, question=trace.question, gold=trace.gold,
        prediction=trace.answer, prediction_strict=trace.answer, answer_text=trace.answer, correct=trace.correct,
        correct_strict=trace.correct, parse_status="error" if trace.failure == API_ERROR else "ok",
        subquestions=trace.subquestions, subanswers=trace.subanswers,
        calls=int(trace.usage.get("calls", 0) or 0), prompt_tokens=int(trace.usage.get("prompt_tokens", 0) or 0),
        completion_tokens=int(trace.usage.get("completion_tokens", 0) or 0), cost=trace.cost,
        error=trace.error if trace.failure == API_ERROR else None,
    ) for trace in traces]
    scored = _accuracy(rows, on=on)
    scored["api_errors"] = sum(t.failure == API_ERROR for t in traces)
    return scored, rows


def _accuracy(rows: list[dict[str, Any]], *, on: str) -> dict[str, Any]:
    correct, total = sum(bool(row["correct"]) for row in rows), len(rows)
    low, high = wilson_interval(correct, total)
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "problems": total,
            "interval": [low, high], "on": on}


def _accuracy_by_steps(problems, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each system's held-out accuracy per number of reference steps (problems without steps are left out)."""
    steps = {problem.id: len(problem.subquestions) for problem in problems if problem.subquestions}
    if not steps:
        return {}
    groups: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        count = steps.get(row["example_id"])
        if count is not None and row["dataset"] == "heldout":
            system = "teacher" if row["model"] == "teacher" else row["strategy"]
            groups.setdefault(count, {}).setdefault(system, []).append(row)
    return {str(count): {system: _accuracy(system_rows, on="held-out problems")
                         for system, system_rows in groups[count].items()}
            for count in sorted(groups)}


def _write_results(run, rows: list[dict[str, Any]]) -> None:
    """The rows and run.json, through the store `dd-evals` writes with (an evaluation is redone whole)."""
    results = run.eval / RESULTS_FILE
    results.unlink(missing_ok=True)
    store = ResultStore(results)
    try:
        for row in rows:
            store.append(row)
    finally:
        store.close()
    cells = {row["cell"]: {"dataset": row["dataset"], "model": row["model"], "strategy": row["strategy"],
                           "prompts": []} for row in rows}
    write_run_file(run.eval, {"written_by": "dd-distill", "run": run.dir.name, "cells": cells})
