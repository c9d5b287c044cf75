"""The models of a run, built once each and shared by its cells: API and local LMs wrapped in the call cache,
student programs, and the decomposers of hybrid strategies. Every model is checked before the first call."""

from __future__ import annotations

from typing import Any

import dspy

from dd_prompting.evals.cell import Cell
from dd_prompting.evals.config import EvalConfig, ModelConfig
from dd_prompting.evals.strategies import load_student_decomposer, load_student_program, make_adapter
from dd_prompting.models import CallCache, build_lm, identity_for
from dd_prompting.serving import ServedModel

__all__ = ["LMPool"]


class LMPool:
    """One LM (or student program) per model name, wrapped in `cache`, made on first use."""

    def __init__(self, config: EvalConfig, cache: CallCache):
        self.config = config
        self.cache = cache
        self.lms: dict[str, dspy.BaseLM | dspy.Module] = {}

    def serving_stats(self) -> dict[str, dict[str, Any]]:
        """Each served student model's requests, prompt tokens and prefix-cache hits so far (this process)."""
        return {name: program.student.stats() for name, program in self.lms.items()
                if getattr(program, "served", False)}

    def check(self, cells: list[Cell]) -> None:
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
                for entry in (model.servers or {}).values():  # a server that is down is said before any call
                    url, name = (entry, None) if isinstance(entry, str) else (entry.get("url"), entry.get("model"))
                    ServedModel(url, model=name, retries=0, timeout=self.config.timeout or 30).models()

    def attach(self, cell: Cell) -> None:
        """Give the cell its LM and adapter (or its student program)."""
        model = cell.model
        if model.kind == "student":
            if model.name not in self.lms:
                serving = {}
                if model.servers:  # as an API model is called: the run's time-out and retries unless it has its own
                    serving = {"max_in_flight": model.threads or self.config.threads,
                               "timeout": model.timeout or self.config.timeout,
                               "retries": self.config.retries if model.retries is None else model.retries}
                self.lms[model.name] = load_student_program(model.run_dir, student=model.student,
                                                            servers=model.servers, **serving)
            cell.program = self.lms[model.name]
            cell.memo = (self.cache, identity_for(model))
            return
        cell.lm = self.lm(model)
        cell.adapter = make_adapter(cell.adapter_name)  # adapters keep no per-call state; one serves all threads
        if cell.strategy.decomposer is not None:
            self._attach_decomposer(cell)

    def lm(self, model: ModelConfig) -> dspy.BaseLM:
        if model.name not in self.lms:
            self.lms[model.name] = build_lm(model, cache=self.cache, timeout=self.config.timeout,
                                            retries=self.config.retries, retry_backoff=self.config.retry_backoff)
        return self.lms[model.name]

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
        program.decompose.set_lm(self.lm(decomposer))
        if decomposer.default_adapter != cell.adapter_name:
            cell.adapter = None
