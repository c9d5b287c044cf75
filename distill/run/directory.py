"""A `dd-distill` run directory: where each artefact lives, and which stages finished with which settings.

    config.json   the resolved config (api_base without credentials)
    stages.json   each finished stage: the settings it ran with, its seconds, when it finished
    problems.jsonl, heldout.jsonl, traces.jsonl, data/, students/<role>/, eval/, metrics.json, report.md, *.png

A stage is recorded as finished only when it produced something usable (see `dd_prompting.distill.run.stages`),
so a rerun redoes a stage that failed, and skips one that finished with the same settings. One process
writes a run directory at a time (`Run.writer`, `dd_prompting.run_lock`).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dd_prompting.distill.run.run_config import ROLES, ConfigError, RunConfig
from dd_prompting.distill.training.distributed import is_main_process
from dd_prompting.models.config import BATCH_FIELDS, SERVING_FIELDS
from dd_prompting.run_lock import RunLock

__all__ = ["Run", "STAGES", "STAGE_SETTINGS", "EXPENSIVE_STAGES", "saved_settings", "write_json"]

STAGES = ("traces", "build", "train", "evaluate")

# Which settings each stage's results depend on: a finished stage whose settings changed is redone
# (rows, evaluation) or refused (traces, students: they cost time or money; see `--force`).
STAGE_SETTINGS = {
    "traces": ("teacher", "data"),
    "build": ("teacher", "data"),
    "train": ("student", "decomposer", "solver", "cot", "train_cot"),
    "evaluate": ("eval", "servers"),
}
EXPENSIVE_STAGES = ("traces", "train")


@dataclass
class Run:
    """A run directory and the config it runs with."""

    dir: Path
    config: RunConfig

    @classmethod
    def open(cls, directory: str | os.PathLike) -> Run:
        """An existing run directory with the settings it saved."""
        directory = Path(directory)
        settings = saved_settings(directory)
        if settings is None:
            raise FileNotFoundError(f"{directory} is not a dd-distill run directory (no config.json)")
        return cls(directory, RunConfig.load(base=settings))

    def writer(self, command: str, *, wait: bool = False):
        """The directory's one-writer lock, as a context manager: another writer is refused in one sentence (or,
        with `wait`, waited for). Only the main process takes it: the ranks of one distributed run share it."""
        if not is_main_process():
            return contextlib.nullcontext()
        return RunLock(self.dir, command=command, wait=wait)

    @property
    def traces(self) -> Path:
        return self.dir / "traces.jsonl"

    @property
    def problems(self) -> Path:
        return self.dir / "problems.jsonl"

    @property
    def heldout(self) -> Path:
        return self.dir / "heldout.jsonl"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def eval(self) -> Path:
        return self.dir / "eval"

    def student(self, role: str) -> Path:
        return self.dir / "students" / role

    def read_problems(self, path: Path) -> list:
        """The problems of one of the run's problem files, read with the run's answer type."""
        from dd_prompting.distill.teach.problem_sources import read_problems

        return read_problems(path, answer_type=self.config.data.answers)

    @property
    def roles(self) -> tuple[str, ...]:
        return ROLES if self.config.train_cot else ("decomposer", "solver")

    # -- stage bookkeeping --------------------------------------------------------------------------

    def _stages_file(self) -> Path:
        return self.dir / "stages.json"

    def stages(self) -> dict[str, Any]:
        path = self._stages_file()
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def settings(self, stage: str) -> dict[str, Any]:
        config = self.config.to_public_dict()  # what stages.json records: never a URL's credentials
        for name in (*SERVING_FIELDS, *BATCH_FIELDS):  # how the teacher is served decides nothing about its traces
            (config.get("teacher") or {}).pop(name, None)
        (config.get("servers") or {}).pop("max_in_flight", None)  # nor how many requests a student's server takes
        return {name: config[name] for name in STAGE_SETTINGS[stage]}

    def mark_done(self, stage: str, seconds: float) -> None:
        if not is_main_process():
            return
        stages = self.stages()
        stages[stage] = {"settings": self.settings(stage), "seconds": round(seconds, 2), "finished": _now()}
        write_json(self._stages_file(), stages)

    def forget(self, stage: str) -> None:
        stages = self.stages()
        if stages.pop(stage, None) is not None:
            write_json(self._stages_file(), stages)

    def changed_settings(self, stage: str) -> list[str]:
        """The settings that differ from those the finished stage ran with (dotted names)."""
        done = self.stages().get(stage)
        if not done:
            return []
        settings = done["settings"]
        # Recorded by an older dd-distill: skip_malformed was a teacher setting then; it is the run's now.
        (settings.get("teacher") or {}).pop("skip_malformed", None)
        # A section an older dd-distill did not record (servers, 0.2.0) ran with that section's defaults.
        missing = [name for name in STAGE_SETTINGS[stage] if name not in settings]
        if missing:
            defaults = Run(self.dir, RunConfig()).settings(stage)
            settings.update({name: defaults[name] for name in missing})
        return _diff(settings, self.settings(stage))


def saved_settings(directory: Path) -> dict[str, Any] | None:
    """The settings a run directory saved (`config.json`), or None if it has none."""
    saved = Path(directory) / "config.json"
    if not saved.is_file():
        return None
    try:
        settings = json.loads(saved.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{saved} is not valid JSON ({err}): restore it, or remove the run directory to "
                          "start the run over") from err
    # Servers are the invocation's that names them (config.json records the last ones used): a later `dd-distill
    # evaluate` without --servers.* runs the students here, and one server gone never blocks the run.
    settings.pop("servers", None)
    # Written by an older dd-distill: retries are per call now, so its nested-retry setting means nothing.
    (settings.get("teacher") or {}).pop("lm_retries", None)
    # Written by an older dd-distill: skip_malformed was the teacher's; it is the run's now (no warning: our file).
    if (settings.get("teacher") or {}).pop("skip_malformed", None):
        settings.setdefault("skip_malformed", True)
    return settings


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        changed = []
        for key in sorted(set(old) | set(new)):
            changed += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return changed
    return [] if old == new else [prefix.rstrip(".")]


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")
