"""`RunConfig`: everything one `dd-distill` run does, from the teacher to the evaluation.

One typed dataclass per part (`TeacherConfig`, `DataConfig`, `HeldOutConfig`; the students'
training is the students' own `TrainConfig`), read from a TOML, YAML or JSON file and overridden
by command-line flags that are built from the same dataclasses (`--teacher.model`,
`--data.train_problems`, `--student.learning_rate`, `--solver.max_steps`, ...), so the file, the
flags and the Python API cannot drift apart.

The students share one `[student]` section (a `TrainConfig`); `[decomposer]`, `[solver]` and
`[cot]` override any of its fields for one role:

    [student]
    model = "gpt2"
    learning_rate = 5e-5

    [solver]
    epochs = 3

A bad value is an error naming the field (`teacher.samples`), the value and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from dd_prompting.distill.teach.generator import GeneratorConfig
from dd_prompting.distill.training.train_config import TrainConfig

from dd_prompting.answer_types import ANSWER_KINDS, AnswerType
from dd_prompting.config import (
    ConfigError,
    add_arguments,
    from_dict,
    load,
    read_config_file,
)
from dd_prompting.config import overrides_from_args as _overrides_from_args
from dd_prompting.models import ModelConfig, safe_url

__all__ = [
    "TeacherConfig",
    "DataConfig",
    "HeldOutConfig",
    "ServersConfig",
    "RunConfig",
    "ROLES",
    "ConfigError",
    "read_config_file",
    "add_config_arguments",
    "overrides_from_args",
]

ROLES = ("decomposer", "solver", "cot")
TEACHER_KINDS = ("generator", "socratic", "api", "local", "program")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class TeacherConfig(ModelConfig):
    """Who writes the decompositions the students learn from.

    A model teacher (`kind` "api" or "local") is described with the same fields as a `dd-evals` model
    (`dd_prompting.models.ModelConfig`) and built by the same factory, with its calls cached in
    `cache_dir`. Old spellings still load, with a FutureWarning: `kind = "dspy"` (now "api"),
    `model = "local:<dir>"` (now kind "local"), `num_threads` (now `threads`), `backoff` (now
    `retry_backoff`).
    """

    __renamed__: ClassVar[dict[str, str]] = {"num_threads": "threads", "backoff": "retry_backoff"}
    __removed__: ClassVar[dict[str, str]] = {"lm_retries": "retries are per call now and never nested: set teacher.retries, and delete lm_retries"}
    __renamed_values__: ClassVar[dict[str, dict[str, str]]] = {"kind": {"dspy": "api"}}

    kind: Literal["generator", "socratic", "api", "local", "program"] = field(
        default="generator",
        metadata={
            "help": "'generator': the built-in problem generator (exact steps, offline); 'socratic': the annotated "
            "sub-questions in the data (GSM8K Socratic); 'api': a litellm model (at its provider or an api_base) "
            "running DecomposedSolver; 'local': a transformers model in process ('smollm2', a directory, a hub id); "
            "'program': a DSPy program given to DecompositionDistillation in Python (model records its LM)."
        },
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature (default: the model's own; set it when samples > 1)."})
    max_tokens: int | None = field(default=None, metadata={"help": "Most tokens per teacher reply (kind='api')."})
    threads: int | None = field(default=8, metadata={"help": "Concurrent teacher calls (a local teacher decodes them together)."})
    retries: int | None = field(
        default=3, metadata={"help": "Retries of one failed call (rate limit, server error, time-out), with back-off."})
    retry_backoff: float | None = field(default=1.0, metadata={"help": "First back-off in seconds; doubles at each retry."})
    mode: Literal["joint", "iterative"] = field(
        default="joint",
        metadata={"help": "DecomposedSolver mode: 'joint' (2 calls per problem) or 'iterative' (1 + one per step)."},
    )
    max_subquestions: int = field(default=8, metadata={"help": "Most sub-questions a teacher decomposition keeps."})
    samples: int = field(
        default=1, metadata={"help": "Teacher samples per problem; >1 needs a temperature and keeps distinct correct ones."}
    )
    cache_dir: str | None = field(
        default="~/.cache/dd-distill/teacher",
        metadata={
            "help": "The call cache of the teacher, shared across runs ('none' turns it off): every call is stored "
            "(as JSON) when it returns, so a rerun or a resumed run pays for no finished call twice."
        },
    )
    require_correct: bool = field(
        default=True, metadata={"help": "Keep only traces whose final answer matches the gold answer."}
    )
    keep_duplicate_samples: bool = field(
        default=False, metadata={"help": "Keep samples of a problem whose steps repeat an earlier sample."}
    )
    retry_failed: bool = field(
        default=True, metadata={"help": "On resume, ask again for problems whose last record is an API error."}
    )
    skip_malformed: bool | None = field(
        default=None,
        metadata={"help": "Deprecated (goes in the next release): the run's skip_malformed (--skip-malformed)."},
    )

    @property
    def section(self) -> str:
        return "teacher"

    def __post_init__(self):
        self._upgrade_old_spellings()
        if self.skip_malformed is not None:
            warnings.warn("teacher.skip_malformed (--teacher.skip_malformed) is now the run's skip_malformed "
                          "(--skip-malformed), the option dd-evals has too; the old name goes in the next release",
                          FutureWarning, stacklevel=4)
        _check_choice("teacher.kind", self.kind, TEACHER_KINDS)
        _check_choice("teacher.mode", self.mode, ("joint", "iterative"))
        # Checked for every kind: a key pasted here would be written to config.json even by a generator run.
        if self.api_key_env is not None and not _ENV_NAME.match(str(self.api_key_env)):
            raise ConfigError("teacher.api_key_env must be the NAME of an environment variable (like OPENAI_API_KEY), "
                              "got something else; never put the key itself in a config")
        if self.kind in ("api", "local"):
            if not self.model:
                raise ConfigError(f"teacher.model is required when teacher.kind = {self.kind!r} "
                                  "(e.g. 'openai/gpt-4o-mini', or 'smollm2' for kind 'local')")
            self._check_model()  # ModelConfig's own checks (engine, prices, threads, retries, ...)
        _check_min("teacher.max_subquestions", self.max_subquestions, 1)
        _check_min("teacher.samples", self.samples, 1)
        for name, minimum in (("threads", 1), ("retries", 0), ("retry_backoff", 0)):
            if getattr(self, name) is not None:
                _check_min(f"teacher.{name}", getattr(self, name), minimum)
        if self.samples > 1 and not self.temperature:
            raise ConfigError(f"teacher.samples = {self.samples} needs teacher.temperature > 0 (got {self.temperature})")

    def _upgrade_old_spellings(self) -> None:
        # Files and flags have kind = "dspy" renamed by the config engine (__renamed_values__); this
        # covers `TeacherConfig(kind="dspy")` in Python and the spellings that depend on two fields.
        if self.kind == "dspy":
            warnings.warn("teacher.kind = 'dspy' is now 'api' (or 'local' for an in-process model)", FutureWarning,
                          stacklevel=4)
            self.kind = "api"
        if self.kind in ("api", "local") and isinstance(self.model, str) and self.model.startswith("local:"):
            warnings.warn("teacher.model = 'local:<dir>' is now teacher.kind = 'local' with teacher.model = '<dir>'",
                          FutureWarning, stacklevel=4)
            self.model, self.kind = self.model.removeprefix("local:"), "local"
        if self.kind == "api" and self.model == "smollm2":  # the bundled model only ever ran in process
            warnings.warn("teacher.model = 'smollm2' runs in process: it is teacher.kind = 'local'", FutureWarning,
                          stacklevel=4)
            self.kind = "local"


@dataclass
class DataConfig:
    """Which problems the teacher sees, and which held-out problems the students are evaluated on."""

    source: str = field(
        default="generator",
        metadata={"help": "'generator', 'gsm8k', or a JSONL file of GSM8K-style rows (question, answer)."},
    )
    split: str = field(default="train", metadata={"help": "source=gsm8k: the split of the training problems."})
    train_problems: int | None = field(
        default=4000, metadata={"help": "Training problems given to the teacher (None: all of the split or file)."}
    )
    offset: int = field(default=0, metadata={"help": "Skip this many problems of the training source first."})
    eval_source: str | None = field(
        default=None, metadata={"help": "Held-out problems: 'generator', 'gsm8k' or a JSONL file (default: `source`)."}
    )
    eval_split: str = field(default="test", metadata={"help": "eval_source=gsm8k: the split of the held-out problems."})
    eval_problems: int | None = field(default=300, metadata={"help": "Held-out problems to evaluate on (None: all)."})
    eval_offset: int = field(default=0, metadata={"help": "Skip this many problems of the held-out source first."})
    seed: int = field(
        default=0, metadata={"help": "Generator seed of the training problems (held-out ones use seed + 1, deduplicated)."}
    )
    packed_solver: bool = field(
        default=True, metadata={"help": "One solver row per problem with every step (else one row per step)."}
    )
    generator: GeneratorConfig = field(
        default_factory=GeneratorConfig, metadata={"help": "The built-in generator's problem shapes and number ranges."}
    )
    eval_min_steps: int | None = field(
        default=None,
        metadata={"help": "Generated held-out problems: fewest steps (default: generator.min_steps). With "
                  "eval_max_steps above generator.max_steps the held-out problems are longer than any trained on."},
    )
    eval_max_steps: int | None = field(
        default=None, metadata={"help": "Generated held-out problems: most steps (default: generator.max_steps)."}
    )
    answer_type: Literal["number", "yes_no", "choice"] = field(
        default="number",
        metadata={"help": "What the answers are: numbers, yes/no, or one of `choices` (the text after '####' in a "
                  "file's answers, and what the last step of a solution names)."},
    )
    choices: list[str] | None = field(
        default=None, metadata={"help": "answer_type = 'choice': the options, e.g. ['A', 'B', 'C', 'D']."})

    def __post_init__(self):
        if isinstance(self.generator, dict):
            self.generator = from_dict(GeneratorConfig, self.generator, "data.generator")
        _check_choice("data.answer_type", self.answer_type, ANSWER_KINDS)
        try:
            self.answers
        except ValueError as err:
            raise ConfigError(f"data.answer_type / data.choices: {err}") from err
        numeric = {"generator", "gsm8k"} & {self.source, self.resolved_eval_source}
        if self.answer_type != "number" and numeric:
            raise ConfigError(f"data.answer_type = {self.answer_type!r}: the {sorted(numeric)[0]} problems have "
                              "numeric answers; yes/no and choice answers come from JSONL files")
        for name in ("offset", "eval_offset"):
            _check_min(f"data.{name}", getattr(self, name), 0)
        for name in ("train_problems", "eval_problems"):
            if getattr(self, name) is not None:
                _check_min(f"data.{name}", getattr(self, name), 1)
        for name in ("source", "eval_source"):
            value = getattr(self, name)
            if value is not None and value not in ("generator", "gsm8k") and not value.endswith((".jsonl", ".json")):
                raise ConfigError(f"data.{name} must be 'generator', 'gsm8k' or a .jsonl file, got {value!r}")
        if self.source == "gsm8k":
            _check_choice("data.split", self.split, ("train", "test", "test_socratic"))
        if self.source == "generator" and self.train_problems is None:
            raise ConfigError("data.train_problems must be a number when data.source = 'generator'")
        if self.resolved_eval_source == "generator" and self.eval_problems is None:
            raise ConfigError("data.eval_problems must be a number when the held-out problems are generated")
        if self.resolved_eval_source == "gsm8k":
            _check_choice("data.eval_split", self.eval_split, ("train", "test", "test_socratic"))
        if self.eval_min_steps is not None or self.eval_max_steps is not None:
            if self.resolved_eval_source != "generator":
                raise ConfigError("data.eval_min_steps / data.eval_max_steps shape generated held-out problems; "
                                  f"the held-out problems come from {self.resolved_eval_source!r}")
            try:
                self.eval_generator
            except ValueError as err:
                raise ConfigError(f"data.eval_min_steps / data.eval_max_steps: {err}") from err
        self._check_disjoint()

    @property
    def answers(self) -> AnswerType:
        """How the run's answers are read and compared."""
        return AnswerType(self.answer_type, choices=tuple(self.choices or ()))

    @property
    def resolved_eval_source(self) -> str:
        return self.eval_source or self.source

    @property
    def eval_generator(self) -> GeneratorConfig:
        """The generator config of the held-out problems: `generator` with the held-out step range."""
        return replace(
            self.generator,
            min_steps=self.generator.min_steps if self.eval_min_steps is None else self.eval_min_steps,
            max_steps=self.generator.max_steps if self.eval_max_steps is None else self.eval_max_steps,
        )

    def _check_disjoint(self) -> None:
        # The same GSM8K problems under two split names: test_socratic is test with Socratic solutions.
        same = {"test": "test", "test_socratic": "test", "train": "train"}
        if self.source == "gsm8k" and self.resolved_eval_source == "gsm8k" and same[self.split] == same[self.eval_split]:
            train_end = None if self.train_problems is None else self.offset + self.train_problems
            eval_end = None if self.eval_problems is None else self.eval_offset + self.eval_problems
            overlap = (train_end is None or self.eval_offset < train_end) and (eval_end is None or self.offset < eval_end)
            if overlap:
                raise ConfigError(
                    f"data: the training problems (gsm8k {self.split}, offset {self.offset}, {self.train_problems}) "
                    f"overlap the held-out ones (gsm8k {self.eval_split}, eval_offset {self.eval_offset}, "
                    f"{self.eval_problems}); set data.offset / data.eval_offset so that they are disjoint"
                )
        if self.source.endswith((".jsonl", ".json")) and self.source == self.resolved_eval_source:
            train_end = None if self.train_problems is None else self.offset + self.train_problems
            if train_end is None or self.eval_offset < train_end:
                if self.eval_problems is None or self.offset < self.eval_offset + self.eval_problems:
                    raise ConfigError(
                        f"data: training and held-out problems both come from {self.source} and overlap; "
                        "set data.offset / data.eval_offset (and the counts) so that they are disjoint"
                    )


@dataclass
class HeldOutConfig:
    """How the students (and optionally the teacher) are evaluated on the held-out problems."""

    batch_size: int = field(default=64, metadata={"help": "Problems decoded together by each student."})
    max_decomposition_tokens: int = field(
        default=160, metadata={"help": "Most tokens the decomposer writes for one problem's sub-questions."}
    )
    max_answer_tokens: int = field(default=48, metadata={"help": "Most tokens the solver writes for one sub-answer."})
    max_cot_tokens: int = field(default=200, metadata={"help": "Most tokens the CoT student writes for one solution."})
    teacher: bool = field(
        default=False,
        metadata={
            "help": "Also run the teacher on the held-out problems (a model teacher: calls, cached). Otherwise the report "
            "gives the teacher's accuracy on the training problems."
        },
    )

    def __post_init__(self):
        for name in ("batch_size", "max_decomposition_tokens", "max_answer_tokens", "max_cot_tokens"):
            _check_min(f"eval.{name}", getattr(self, name), 1)


@dataclass
class ServersConfig:
    """Servers the trained students are evaluated on (vLLM, SGLang: an OpenAI-compatible `/v1/completions`), instead
    of in this process. A setting of the evaluation only: the students trained are the same."""

    decomposer: str | None = field(default=None, metadata={"help": "The decomposer's server, e.g. "
                                                                   "http://127.0.0.1:8000/v1 (with --servers.solver)."})
    solver: str | None = field(default=None, metadata={"help": "The solver's server (with --servers.decomposer)."})
    cot: str | None = field(default=None, metadata={"help": "The CoT student's server."})
    max_in_flight: int = field(default=32, metadata={"help": "Requests open at once to each server."})

    def __post_init__(self):
        if (self.decomposer is None) != (self.solver is None):
            raise ConfigError("servers.decomposer and servers.solver go together: the pair runs on servers or here")
        _check_min("servers.max_in_flight", self.max_in_flight, 1)

    def of(self, roles: tuple[str, ...]) -> dict[str, str] | None:
        """The servers of these roles, or None when they run in this process."""
        urls = {role: getattr(self, role) for role in roles}
        return urls if all(urls.values()) else None


@dataclass
class RunConfig:
    """A whole `dd-distill` run: teacher -> traces -> rows -> students -> evaluation -> report."""

    # `seed = 3` (or `--seed 3`) stands for data.seed = 3 and student.seed = 3; either given too wins.
    __shorthands__: ClassVar[dict[str, tuple[str, ...]]] = {"seed": ("data.seed", "student.seed")}

    name: str | None = field(
        default=None, metadata={"help": "Run name: the run directory is <output_dir>/<name> (default: a timestamp)."}
    )
    output_dir: str = field(default="runs", metadata={"help": "Where run directories are created."})
    seed: int | None = field(
        default=None,
        metadata={
            "help": "One seed for the whole run: the problems (data.seed) and every student (student.seed). "
            "data.seed, student.seed and a role's seed (solver.seed, ...) still override it."
        },
    )
    train_cot: bool = field(
        default=True, metadata={"help": "Also train the chain-of-thought student of the same size (the baseline)."}
    )
    equal_compute: bool = field(
        default=False,
        metadata={
            "help": "Give the CoT student as many training steps as the pair has in total (decomposer + solver "
            "max_steps), so that the comparison is at equal training compute rather than equal steps per student."
        },
    )
    train_workers: int | None = field(
        default=None,
        metadata={
            "help": "Students trained at once, each in its own process with an equal share of the torch threads. "
            "Default: 2 on a CPU with at least 2 threads when each side has 200 steps or more, else 1 (one "
            "after another with every thread). A student's numbers depend on its thread count, not on this."
        },
    )
    teacher: TeacherConfig = field(default_factory=TeacherConfig, metadata={"help": "The teacher."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training and held-out problems."})
    student: TrainConfig = field(
        default_factory=TrainConfig, metadata={"help": "Training settings shared by the three students."}
    )
    decomposer: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Overrides of [student] for the decomposer.", "fields_of": TrainConfig},
    )
    solver: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Overrides of [student] for the solver.", "fields_of": TrainConfig}
    )
    cot: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Overrides of [student] for the CoT student.", "fields_of": TrainConfig}
    )
    eval: HeldOutConfig = field(default_factory=HeldOutConfig, metadata={"help": "Evaluation."})
    servers: ServersConfig = field(default_factory=ServersConfig,
                                   metadata={"help": "Evaluate the students on servers (vLLM, SGLang)."})
    skip_malformed: bool = field(
        default=False,
        metadata={"help": "Skip malformed lines of the data and trace files instead of stopping with an error; each "
                  "is logged and listed with its file:line in the report. dd-evals has the same option."},
    )

    def __post_init__(self):
        for name, cls in (("teacher", TeacherConfig), ("data", DataConfig), ("student", TrainConfig), ("eval", HeldOutConfig),
                          ("servers", ServersConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, from_dict(cls, getattr(self, name), name))
        # The old teacher.skip_malformed (warned about by TeacherConfig) still counts, here; then it is cleared, so
        # that a copy of the teacher's config (a batch round's capture config) does not warn again.
        self.skip_malformed = bool(self.skip_malformed or self.teacher.skip_malformed)
        self.teacher.skip_malformed = None
        if self.teacher.kind == "generator" and self.data.source != "generator":
            raise ConfigError(
                f"teacher.kind = 'generator' writes the generator's own problems; data.source must be 'generator', "
                f"got {self.data.source!r} (use teacher.kind = 'socratic', 'api' or 'local' for other problems)"
            )
        if self.train_workers is not None:
            _check_min("train_workers", self.train_workers, 1)
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise ConfigError(f"name must be a plain directory name, got {self.name!r}")
        for role in ROLES:
            self.train_config(role)  # validates the overrides now, naming the role and field

    def train_config(self, role: str) -> TrainConfig:
        """The `TrainConfig` of one student: `student` with the role's overrides applied."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        overrides = getattr(self, role)
        if not isinstance(overrides, dict):
            raise ConfigError(f"{role} must be a table of [student] (TrainConfig) fields, got {type(overrides).__name__}")
        shared = {item.name: getattr(self.student, item.name) for item in fields(TrainConfig) if item.init}
        if role == "cot" and self.equal_compute:
            overrides = {**overrides, "max_steps": self.pair_steps()}
        return from_dict(TrainConfig, {**shared, **overrides}, role)

    def pair_steps(self) -> int:
        """The student pair's training steps in all (decomposer + solver); needs both set by max_steps."""
        steps = [self.train_config(role).max_steps for role in ("decomposer", "solver")]
        if min(steps) <= 0:
            raise ConfigError("equal_compute needs decomposer and solver trained for a number of steps "
                              f"(student.max_steps or decomposer/solver.max_steps), got max_steps {steps}")
        return sum(steps)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["teacher"]["skip_malformed"]  # the run's skip_malformed; not a setting of the teacher's stages
        if data["teacher"].get("servers") is None:
            data["teacher"].pop("servers", None)  # students' servers: never a teacher's (see [servers])
        if data["teacher"]["name"] == data["teacher"]["model"]:
            del data["teacher"]["name"]  # derived from the model; a saved one would go stale when the model changes
        return data

    def to_public_dict(self) -> dict[str, Any]:
        """The config as written to the run directory: the teacher's api_base without credentials."""
        data = self.to_dict()
        data["teacher"]["api_base"] = safe_url(self.teacher.api_base)
        for role in ROLES:
            data["servers"][role] = safe_url(data["servers"][role])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a nested dict (a parsed config file); unknown keys are errors naming the nearest valid one."""
        return from_dict(cls, data)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, overrides: dict[str, Any] | None = None,
             base: dict[str, Any] | None = None) -> RunConfig:
        """Defaults, then `base` (e.g. a run directory's saved config), then the file at `path`, then `overrides`."""
        return load(cls, path, base=base, overrides=overrides)

    def save(self, path: str | os.PathLike) -> None:
        """Write the resolved config as JSON (loadable with `RunConfig.load`), without URL credentials.

        Atomically: a run killed while saving leaves the old file or the new one, never an empty one (which the
        next run could not read)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_public_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)


# --- command-line flags ----------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser, *, sections: tuple[str, ...] | None = None) -> None:
    """Add one `--<section>.<field>` flag per config field (and `--name`, `--output-dir`, `--train-cot`).

    Flags left out do not appear in the parsed namespace, so they override nothing.
    """
    add_arguments(parser, RunConfig, sections=sections, title="run")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config flags actually given, as a nested dict for `RunConfig.load(overrides=...)`."""
    return _overrides_from_args(args, RunConfig)


# --- checks ----------------------------------------------------------------------------------------


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_min(name: str, value: Any, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"{name} must be a number >= {minimum}, got {value!r}")

