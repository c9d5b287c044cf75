"""Which students train side by side: the plan `distill.training.workers` runs.

On a CPU a tiny student's step is small matrix products: two students trained at once with one torch
thread each get through more steps than one student after the other with both threads (on the 2-core
CPUs measured, two one-thread runs side by side did 1.26x the steps of one two-thread run). The
decomposer, the solver and the CoT student learn from the same rows independently, so any of them can
share a core. The plan splits the torch threads evenly between workers and gives each worker a list
of students, longest first onto the least loaded worker, so the workers finish near each other.

A student's numbers depend on the threads it trained with (floating-point sums in another order), never
on which worker or what trained beside it: with one thread each, a student equals the one
`OMP_NUM_THREADS=1` trains alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from dd_prompting.distill.training.train_config import TrainConfig

__all__ = ["StudentJob", "WorkerPlan", "plan_workers", "MIN_SIDE_STEPS"]

# A worker process starts by importing torch and transformers: about 7 s on the 2-core CPUs here. Below
# this many optimizer steps on its lightest worker (about 20 s of tiny-preset training), a plan trains
# the students one after another instead.
MIN_SIDE_STEPS = 200


@dataclass
class StudentJob:
    """One student to train: `train_student`'s arguments."""

    role: str
    rows: Path
    config: TrainConfig
    output_dir: Path
    eval_rows: Path | None = None

    @property
    def steps(self) -> int:
        """Optimizer steps this job will run (from max_steps, or epochs over the rows)."""
        if self.config.max_steps > 0:
            return self.config.max_steps
        return max(1, int(self.config.epochs * self._row_stats[0] / self._rows_per_step))

    @property
    def cost(self) -> float:
        """Work in row characters: steps x rows per step x the rows' mean length (a step's time follows its tokens)."""
        return self.steps * self._rows_per_step * self._row_stats[1]

    @property
    def _rows_per_step(self) -> int:
        return self.config.batch_size * self.config.gradient_accumulation_steps

    @cached_property
    def _row_stats(self) -> tuple[int, float]:
        """The rows file's row count and mean line length, read once (planning asks for a job's cost often)."""
        if not os.path.isfile(self.rows):
            return 0, 1.0
        with open(self.rows, "rb") as handle:
            sizes = [len(line) for line in handle if line.strip()]
        return len(sizes), (sum(sizes) / len(sizes) if sizes else 1.0)


@dataclass
class WorkerPlan:
    """The students one worker trains, in order, and the torch threads it trains them with."""

    jobs: list[StudentJob] = field(default_factory=list)
    threads: int = 1

    @property
    def cost(self) -> float:
        return sum(job.cost for job in self.jobs)

    @property
    def roles(self) -> list[str]:
        return [job.role for job in self.jobs]


def plan_workers(jobs: list[StudentJob], *, threads: int, workers: int | None = None,
                 distributed: bool = False) -> list[WorkerPlan]:
    """Split `jobs` between workers sharing `threads` torch threads.

    `workers=None` decides: two workers when there are two threads and two students to share them, each
    worker has at least `MIN_SIDE_STEPS` steps, and the run is not distributed (under `torchrun` each rank
    trains every student with its own device); otherwise one. `workers=1` trains one student after another
    with all the threads (the single plan's threads are then `threads`, what torch would use anyway).
    """
    if not jobs:
        return []
    if workers is not None and workers < 1:
        raise ValueError(f"train_workers must be at least 1, got {workers}")
    if distributed:
        return [WorkerPlan(list(jobs), threads)]
    wanted = min(2, threads, len(jobs)) if workers is None else min(workers, threads, len(jobs))
    plans = _longest_first(jobs, max(wanted, 1))
    if workers is None and len(plans) > 1 and min(sum(job.steps for job in plan.jobs) for plan in plans) < MIN_SIDE_STEPS:
        plans = _longest_first(jobs, 1)
    share, extra = divmod(threads, len(plans))
    for index, plan in enumerate(plans):
        plan.threads = share + (1 if index < extra else 0)
    return plans


def _longest_first(jobs: list[StudentJob], count: int) -> list[WorkerPlan]:
    """Longest job first onto the least loaded worker; each worker keeps its jobs in the given order."""
    plans = [WorkerPlan() for _ in range(count)]
    order = {id(job): index for index, job in enumerate(jobs)}
    for job in sorted(jobs, key=lambda job: job.cost, reverse=True):
        min(plans, key=lambda plan: plan.cost).jobs.append(job)
    for plan in plans:
        plan.jobs.sort(key=lambda job: order[id(job)])
    return [plan for plan in plans if plan.jobs]
