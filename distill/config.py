"""`RunConfig`: everything one `dd-distill` run does, from the teacher to the evaluation.

One typed dataclass per part (`TeacherConfig`, `DataConfig`, `EvalConfig`; the students'
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
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from dd_prompting.distill.generator import GeneratorConfig
from dd_prompting.distill.train_config import TrainConfig

__all__ = [
    "TeacherConfig",
    "DataConfig",
    "EvalConfig",
    "RunConfig",
    "ROLES",
    "ConfigError",
    "read_config_file",
    "add_config_arguments",
    "overrides_from_args",
]

ROLES = ("decomposer", "solver", "cot")
TEACHER_KINDS = ("generator", "socratic", "dspy")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the field or the file."""


@dataclass
class TeacherConfig:
    """Who writes the decompositions the students learn from."""

    kind: Literal["generator", "socratic", "dspy"] = field(
        default="generator",
        metadata={
            "help": "'generator': the built-in problem generator (exact steps, offline); 'socratic': the annotated "
            "sub-questions in the data (GSM8K Socratic); 'dspy': an LM running DecomposedSolver."
        },
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "kind=dspy: a dspy.LM model ('openai/gpt-4o-mini', any litellm name), 'local:<dir or hub id>' "
            "for an in-process transformers model, or 'smollm2' for the offline SmolLM2-135M."
        },
    )
    api_base: str | None = field(default=None, metadata={"help": "kind=dspy: the API's base URL, if not the provider's."})
    api_key_env: str | None = field(
        default=None,
        metadata={
            "help": "kind=dspy: name of the environment variable holding the API key (default: the provider's own, "
            "e.g. OPENAI_API_KEY). The key itself is never written to configs, caches or logs."
        },
    )
    engine: Literal["auto", "litellm"] = field(
        default="auto", metadata={"help": "kind=dspy: dspy's own HTTP engine ('auto') or litellm ('litellm')."}
    )
    mode: Literal["joint", "iterative"] = field(
        default="joint",
        metadata={"help": "DecomposedSolver mode: 'joint' (2 calls per problem) or 'iterative' (1 + one per step)."},
    )
    max_subquestions: int = field(default=8, metadata={"help": "Most sub-questions a teacher decomposition keeps."})
    samples: int = field(
        default=1, metadata={"help": "Teacher samples per problem; >1 needs a temperature and keeps distinct correct ones."}
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature (default: the LM's own; set it when samples > 1)."}
    )
    max_tokens: int | None = field(default=None, metadata={"help": "Most tokens per teacher reply."})
    num_threads: int = field(default=8, metadata={"help": "Concurrent teacher calls (use 1 for a local model)."})
    retries: int = field(
        default=3, metadata={"help": "Retries of a problem after a rate limit, server error or time-out (with back-off)."}
    )
    backoff: float = field(default=1.0, metadata={"help": "First back-off in seconds; doubles at each retry."})
    lm_retries: int = field(default=3, metadata={"help": "dspy.LM's own num_retries for each call."})
    timeout: float | None = field(default=None, metadata={"help": "Seconds before a teacher call times out."})
    cache_dir: str | None = field(
        default="~/.cache/dd-distill/teacher",
        metadata={
            "help": "Disk cache of teacher results, shared across runs ('none' turns it off). DSPy's own response "
            "cache is not used for the teacher."
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
    skip_malformed: bool = field(
        default=False,
        metadata={"help": "Skip (and count) malformed lines of the trace file instead of stopping with an error."},
    )

    def __post_init__(self):
        _check_choice("teacher.kind", self.kind, TEACHER_KINDS)
        _check_choice("teacher.engine", self.engine, ("auto", "litellm"))
        _check_choice("teacher.mode", self.mode, ("joint", "iterative"))
        if self.kind == "dspy" and not self.model:
            raise ConfigError("teacher.model is required when teacher.kind = 'dspy' (e.g. 'openai/gpt-4o-mini')")
        if self.api_key_env is not None and not self.api_key_env.replace("_", "").isalnum():
            raise ConfigError(
                "teacher.api_key_env must be the NAME of an environment variable (like OPENAI_API_KEY), "
                "got something else; never put the key itself in a config"
            )
        _check_min("teacher.max_subquestions", self.max_subquestions, 1)
        _check_min("teacher.samples", self.samples, 1)
        _check_min("teacher.num_threads", self.num_threads, 1)
        _check_min("teacher.retries", self.retries, 0)
        _check_min("teacher.lm_retries", self.lm_retries, 0)
        _check_min("teacher.backoff", self.backoff, 0)
        if self.temperature is not None:
            _check_min("teacher.temperature", self.temperature, 0)
        if self.samples > 1 and not self.temperature:
            raise ConfigError(f"teacher.samples = {self.samples} needs teacher.temperature > 0 (got {self.temperature})")
        if self.max_tokens is not None:
            _check_min("teacher.max_tokens", self.max_tokens, 1)
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"teacher.timeout must be positive seconds, got {self.timeout}")


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

    def __post_init__(self):
        if isinstance(self.generator, dict):
            self.generator = _build(GeneratorConfig, self.generator, "data.generator")
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
        self._check_disjoint()

    @property
    def resolved_eval_source(self) -> str:
        return self.eval_source or self.source

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
class EvalConfig:
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
            "help": "Also run the teacher on the held-out problems (kind=dspy: API calls, cached). Otherwise the report "
            "gives the teacher's accuracy on the training problems."
        },
    )

    def __post_init__(self):
        for name in ("batch_size", "max_decomposition_tokens", "max_answer_tokens", "max_cot_tokens"):
            _check_min(f"eval.{name}", getattr(self, name), 1)


@dataclass
class RunConfig:
    """A whole `dd-distill` run: teacher -> traces -> rows -> students -> evaluation -> report."""

    name: str | None = field(
        default=None, metadata={"help": "Run name: the run directory is <output_dir>/<name> (default: a timestamp)."}
    )
    output_dir: str = field(default="runs", metadata={"help": "Where run directories are created."})
    train_cot: bool = field(
        default=True, metadata={"help": "Also train the chain-of-thought student of the same size (the baseline)."}
    )
    teacher: TeacherConfig = field(default_factory=TeacherConfig, metadata={"help": "The teacher."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training and held-out problems."})
    student: TrainConfig = field(
        default_factory=TrainConfig, metadata={"help": "Training settings shared by the three students."}
    )
    decomposer: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Overrides of `student` for the decomposer."}
    )
    solver: dict[str, Any] = field(default_factory=dict, metadata={"help": "Overrides of `student` for the solver."})
    cot: dict[str, Any] = field(default_factory=dict, metadata={"help": "Overrides of `student` for the CoT student."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})

    def __post_init__(self):
        for name, cls in (("teacher", TeacherConfig), ("data", DataConfig), ("student", TrainConfig), ("eval", EvalConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, _build(cls, getattr(self, name), name))
        if self.teacher.kind == "generator" and self.data.source != "generator":
            raise ConfigError(
                f"teacher.kind = 'generator' writes the generator's own problems; data.source must be 'generator', "
                f"got {self.data.source!r} (use teacher.kind = 'socratic' or 'dspy' for other problems)"
            )
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
            raise ConfigError(f"{role} must be a table of TrainConfig fields, got {type(overrides).__name__}")
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"{role}: unknown field(s) {unknown}; the fields are those of [student] (TrainConfig)")
        try:
            return replace(self.student, **{k: _coerce(v, _hints(TrainConfig)[k], f"{role}.{k}") for k, v in overrides.items()})
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{role}: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a nested dict (a parsed config file); unknown keys are errors naming them."""
        return _build(cls, data, "")

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, overrides: dict[str, Any] | None = None,
             base: dict[str, Any] | None = None) -> RunConfig:
        """Defaults, then `base` (e.g. a run directory's saved config), then the file at `path`, then `overrides`."""
        merged: dict[str, Any] = {}
        for layer in (base, read_config_file(path) if path else None, overrides):
            if layer:
                merged = _deep_merge(merged, layer)
        return cls.from_dict(merged)

    def save(self, path: str | os.PathLike) -> None:
        """Write the resolved config as JSON (loadable with `RunConfig.load`)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


# --- files -----------------------------------------------------------------------------------------


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a TOML, YAML or JSON config file into a dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError as err:  # Python 3.10
                raise ConfigError(f"{path}: reading TOML needs Python 3.11+ (tomllib); use a YAML or JSON config") from err
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: config files must end in .toml, .yaml, .yml or .json")
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - each parser has its own error type; all mean "bad file"
        raise ConfigError(f"{path}: not a valid {suffix[1:].upper()} file: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of settings, got {type(data).__name__}")
    return data


# --- command-line flags ----------------------------------------------------------------------------

_SECTIONS: tuple[tuple[str, type], ...] = (
    ("teacher", TeacherConfig),
    ("data", DataConfig),
    ("data.generator", GeneratorConfig),
    ("student", TrainConfig),
    ("decomposer", TrainConfig),
    ("solver", TrainConfig),
    ("cot", TrainConfig),
    ("eval", EvalConfig),
)
_TOP_LEVEL = ("name", "output_dir", "train_cot")


def add_config_arguments(parser: argparse.ArgumentParser, *, sections: tuple[str, ...] | None = None) -> None:
    """Add one `--<section>.<field>` flag per config field (and `--name`, `--output-dir`, `--train-cot`).

    Flags left out do not appear in the parsed namespace, so they override nothing.
    """
    top = parser.add_argument_group("run")
    for name in _TOP_LEVEL:
        _add_flag(top, f"--{name.replace('_', '-')}", name, _field(RunConfig, name), _hints(RunConfig)[name])
    for section, cls in _SECTIONS:
        if sections is not None and section.split(".")[0] not in sections:
            continue
        title = f"{section} (overrides of [student] for this role)" if section in ROLES else section
        group = parser.add_argument_group(title)
        hints = _hints(cls)
        for item in fields(cls):
            if is_dataclass(hints[item.name]) or item.name.startswith("_"):
                continue
            dest = f"{section}.{item.name}"
            _add_flag(group, f"--{dest}", dest, item, hints[item.name])


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config flags actually given, as a nested dict for `RunConfig.load(overrides=...)`."""
    overrides: dict[str, Any] = {}
    known = set(_TOP_LEVEL) | {f"{section}.{item.name}" for section, cls in _SECTIONS for item in fields(cls)}
    for dest, value in vars(args).items():
        if dest not in known:
            continue
        node = overrides
        *parents, leaf = dest.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return overrides


def _add_flag(group, flag: str, dest: str, item, hint) -> None:
    help_text = item.metadata.get("help", "")
    base, optional = _unwrap_optional(hint)
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
    if base is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if typing.get_origin(base) is Literal:
        kwargs["choices"] = list(typing.get_args(base))
        base = type(kwargs["choices"][0])
    if typing.get_origin(base) is list:
        kwargs["nargs"] = "+"
        base = typing.get_args(base)[0]
    if typing.get_origin(base) is dict:
        return
    kwargs["type"] = _optional_parser(base) if optional else base
    if "choices" not in kwargs:
        kwargs["metavar"] = base.__name__.upper()
    group.add_argument(flag, **kwargs)


def _optional_parser(base: type):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else base(text)

    parse.__name__ = base.__name__
    return parse


# --- building dataclasses from dicts ---------------------------------------------------------------


def _build(cls, data: Any, where: str):
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a table of settings, got {type(data).__name__}")
    hints = _hints(cls)
    known = {item.name: item for item in fields(cls) if item.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown setting(s) {[prefix + name for name in unknown]}; known in {where or 'the top level'}: "
            f"{sorted(known)}"
        )
    values = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        hint = hints[name]
        if is_dataclass(hint):
            values[name] = _build(hint, value, path)
        else:
            values[name] = _coerce(value, hint, path)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where + ': ' if where else ''}{err}") from err


def _coerce(value: Any, hint, path: str):
    """Check (and gently convert: int -> float, 'none' -> None) one value against its annotation."""
    base, optional = _unwrap_optional(hint)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{path} cannot be empty (None)")
    if base is Any:
        return value
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise ConfigError(f"{path} must be one of {list(choices)}, got {value!r}")
        return value
    if typing.get_origin(base) is list:
        (item_type,) = typing.get_args(base)
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return [_coerce(item, item_type, f"{path}[{index}]") for index, item in enumerate(value)]
    if typing.get_origin(base) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a table, got {value!r}")
        return dict(value)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float, str) and (not isinstance(value, base) or isinstance(value, bool)):
        raise ConfigError(f"{path} must be {'an' if base is int else 'a'} {base.__name__}, got {value!r}")
    return value


def _unwrap_optional(hint) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field(cls, name: str):
    return next(item for item in fields(cls) if item.name == name)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_min(name: str, value: Any, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"{name} must be a number >= {minimum}, got {value!r}")

