"""What an eval run compares: models x strategies x datasets, read from a TOML or YAML file.

    [[models]]
    name = "gpt-4o-mini"
    model = "openai/gpt-4o-mini"          # any litellm model string
    api_key_env = "OPENAI_API_KEY"        # the key is read from the environment, never from the file

    [[strategies]]
    name = "cot"
    kind = "cot"

    [[datasets]]
    name = "gsm8k"
    kind = "gsm8k"

Each section is a dataclass whose fields carry `metadata={"help": ...}`, read by the one config
engine (`dd_prompting.config`, shared with `dd-distill`): values are type-checked, an unknown key is
named with the nearest valid one, and the command line is built from `EvalConfig`'s own fields, so
a flag and the file key of the same name always agree. A model is a `dd_prompting.models.ModelConfig`,
the same description a `dd-distill` teacher uses.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dd_prompting.answer_types import ANSWER_KINDS
from dd_prompting.config import ConfigError, from_dict, load, read_config_file
from dd_prompting.models import MODEL_KINDS, ModelConfig

__all__ = [
    "ModelConfig",
    "StrategyConfig",
    "DatasetConfig",
    "EvalConfig",
    "load_config",
    "ConfigError",
    "MODEL_KINDS",
    "STRATEGY_KINDS",
    "DATASET_KINDS",
]

STRATEGY_KINDS = ("direct", "cot", "decomposed", "student")
DATASET_KINDS = ("gsm8k", "file")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./:+-]*$")


def _check_name(section: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{section}: name {name!r} must start with a letter or digit and use only letters, digits and _ . / : + -"
        )


@dataclass
class StrategyConfig:
    """One way of prompting: answer directly, chain of thought, decomposition, or a distilled student."""

    kind: Literal["direct", "cot", "decomposed", "student"] = field(
        metadata={"help": f"One of {STRATEGY_KINDS}: dspy.Predict, dspy.ChainOfThought, "
                          "dd_prompting.DecomposedSolver, or a dd-distill student pair."})
    name: str | None = field(default=None, metadata={"help": "Short name used in reports; defaults to the kind "
                                                             "(and mode)."})
    mode: Literal["joint", "iterative"] = field(
        default="joint", metadata={"help": "DecomposedSolver mode: 'joint' or 'iterative'."})
    demos: int | str = field(default=0, metadata={"help": "Few-shot demos: 0 for none, N to draw N solved "
                                                          "examples from the dataset's demo pool (seeded), or "
                                                          "'builtin' for dd_prompting's hand-written worked "
                                                          "examples."})
    max_subquestions: int = field(default=8, metadata={"help": "DecomposedSolver cap on sub-questions."})
    decomposer: str | None = field(
        default=None, metadata={"help": "kind='decomposed': a hybrid pair. The name of the [[models]] entry that "
                                        "writes the sub-questions (an API or local model, or a dd-distill student "
                                        "run, whose decomposer student is used); each model of the run then only "
                                        "solves them."})

    def __post_init__(self):
        if self.kind not in STRATEGY_KINDS:
            raise ConfigError(f"strategies: kind must be one of {STRATEGY_KINDS}, got {self.kind!r}")
        if self.decomposer is not None and self.kind != "decomposed":
            raise ConfigError(f"strategies[{self.name or self.kind}]: decomposer is for kind = 'decomposed' (a hybrid "
                              f"pair), not {self.kind!r}")
        if self.name is None:
            self.name = f"decomposed-{self.mode}" if self.kind == "decomposed" else self.kind
            if self.decomposer is not None:
                self.name += f"+{self.decomposer}"
        section = f"strategies[{self.name}]"
        _check_name(section, self.name)
        if self.mode not in ("joint", "iterative"):
            raise ConfigError(f"{section}: mode must be 'joint' or 'iterative', got {self.mode!r}")
        if isinstance(self.demos, bool) or not (
            self.demos == "builtin" or (isinstance(self.demos, int) and self.demos >= 0)
        ):
            raise ConfigError(f"{section}: demos must be a count >= 0 or 'builtin', got {self.demos!r}")
        if self.max_subquestions < 1:
            raise ConfigError(f"{section}: max_subquestions must be at least 1, got {self.max_subquestions}")
        if self.kind == "student" and self.demos not in (0,):
            raise ConfigError(f"{section}: a student pipeline takes no demos (it was trained without them)")


@dataclass
class DatasetConfig:
    """One dataset: the bundled GSM8K, or a JSON/JSONL/CSV file with a field mapping."""

    kind: Literal["gsm8k", "file"] = field(metadata={"help": f"One of {DATASET_KINDS}."})
    name: str | None = field(default=None, metadata={"help": "Short name used in reports; defaults to the kind or "
                                                             "file stem."})
    split: Literal["train", "test", "test_socratic"] = field(
        default="test", metadata={"help": "GSM8K split: train, test or test_socratic."})
    path: str | None = field(default=None, metadata={"help": "The data file (kind='file'); .json (a list of "
                                                             "objects), .jsonl or .csv."})
    question: str | list[str] = field(default="question", metadata={"help": "Field(s) that make the question; "
                                                                            "several are joined with a space "
                                                                            "(e.g. ['Body', 'Question'])."})
    question_template: str | None = field(default=None, metadata={"help": "Python format string over the row's "
                                                                          "fields, e.g. '{Body} {Question}'; "
                                                                          "overrides `question`."})
    answer: str = field(default="answer", metadata={"help": "Field with the gold answer."})
    answer_format: Literal["number", "gsm8k"] = field(
        default="number", metadata={"help": "'number' (the field is the answer) or 'gsm8k' (a solution ending "
                                            "'#### N')."})
    answer_type: Literal["number", "yes_no", "choice"] = field(
        default="number", metadata={"help": "What the answer is: 'number', 'yes_no' (gold: yes/no, true/false) or "
                                            "'choice' (gold: one of `choices`). It types the answer field of every "
                                            "strategy's signature (str, bool, Literal) and picks the reader."})
    choices: list[str] | None = field(
        default=None, metadata={"help": "answer_type='choice': the options, e.g. ['A', 'B', 'C', 'D'] (put them in "
                                        "the question too, e.g. with question_template); default: the distinct "
                                        "gold answers of the file, in order of first appearance."})
    id: str | None = field(default=None, metadata={"help": "Field with a unique example id; default: line/row "
                                                           "number."})
    demos_path: str | None = field(default=None, metadata={"help": "File of solved examples (same mapping) that "
                                                                   "few-shot demos are drawn from; default for "
                                                                   "GSM8K: the train split."})
    solution: str | None = field(default=None, metadata={"help": "Field with a worked solution (used as the "
                                                                 "chain-of-thought demo reasoning)."})

    def __post_init__(self):
        if self.kind not in DATASET_KINDS:
            raise ConfigError(f"datasets: kind must be one of {DATASET_KINDS}, got {self.kind!r}")
        if self.kind == "file" and not self.path:
            raise ConfigError(f"datasets[{self.name or 'file'}]: kind='file' needs path")
        if self.name is None:
            self.name = Path(self.path).stem if self.kind == "file" else f"gsm8k-{self.split}"
        section = f"datasets[{self.name}]"
        _check_name(section, self.name)
        if self.kind == "gsm8k" and self.split not in ("train", "test", "test_socratic"):
            raise ConfigError(f"{section}: split must be train, test or test_socratic, got {self.split!r}")
        if self.answer_format not in ("number", "gsm8k"):
            raise ConfigError(f"{section}: answer_format must be 'number' or 'gsm8k', got {self.answer_format!r}")
        if self.answer_type not in ANSWER_KINDS:
            raise ConfigError(f"{section}: answer_type must be one of {ANSWER_KINDS}, got {self.answer_type!r}")
        if self.answer_type != "number" and (self.kind == "gsm8k" or self.answer_format == "gsm8k"):
            raise ConfigError(f"{section}: GSM8K answers are numbers; answer_type {self.answer_type!r} needs a file "
                              "dataset with answer_format = 'number'")
        if self.choices is not None:
            if self.answer_type != "choice":
                raise ConfigError(f"{section}: choices are for answer_type = 'choice', not {self.answer_type!r}")
            if len(set(self.choices)) < 2 or len(set(self.choices)) != len(self.choices):
                raise ConfigError(f"{section}: choices must be two or more distinct options, got {self.choices!r}")
        if isinstance(self.question, str):
            self.question = [self.question]
        if not self.question or not all(isinstance(name, str) and name for name in self.question):
            raise ConfigError(f"{section}: question must name one or more fields, got {self.question!r}")


@dataclass
class EvalConfig:
    """A whole run. Every scalar field is also a command-line flag, which overrides the file."""

    models: list[ModelConfig] = field(default_factory=list, metadata={"help": "Models to evaluate."})
    strategies: list[StrategyConfig] = field(default_factory=list, metadata={"help": "Strategies to compare."})
    datasets: list[DatasetConfig] = field(default_factory=list, metadata={"help": "Datasets to run on."})
    output_dir: str = field(default="evals_output", metadata={"help": "Where results.jsonl, the report, plots and "
                                                                      "(by default) the call cache go."})
    cache_dir: str | None = field(default=None, metadata={"help": "On-disk call cache; default <output_dir>/cache. "
                                                                  "Share it between runs to never pay twice."})
    limit: int | None = field(default=None, metadata={"help": "Examples per dataset: a sample drawn with `seed`."})
    seed: int = field(default=0, metadata={"help": "Seed for the example sample and the few-shot demos."})
    split: Literal["train", "test", "test_socratic"] | None = field(
        default=None, metadata={"help": "GSM8K split for every gsm8k dataset (overrides the file)."})
    threads: int = field(default=8, metadata={"help": "Concurrent examples."})
    max_cost: float | None = field(default=None, metadata={"help": "Budget in USD for new (uncached) calls; the run "
                                                                   "stops before it would pass it."})
    dry_run: bool = field(default=False, metadata={"help": "Estimate calls, tokens, cost and seconds per cell (to "
                                                           "OUTPUT_DIR/estimate.json), then stop without calling any "
                                                           "model (unless `pilot` is set)."})
    pilot: int | None = field(
        default=None, metadata={"help": "With dry_run: first run this many problems of each cell for real (drawn with "
                                        "`seed`; their rows go to results.jsonl, count against max_cost, and the run "
                                        "resumes past them), then estimate the rest from what they took."})
    retries: int = field(default=3, metadata={"help": "Retries of a failed call (rate limits, server errors, "
                                                      "time-outs), with exponential back-off."})
    retry_backoff: float = field(default=1.0, metadata={"help": "First back-off in seconds; doubled each retry."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds before one call times out."})
    only_models: str | None = field(default=None, metadata={"help": "Comma-separated model names to run (default: "
                                                                    "all)."})
    only_strategies: str | None = field(default=None, metadata={"help": "Comma-separated strategy names to run."})
    only_datasets: str | None = field(default=None, metadata={"help": "Comma-separated dataset names to run."})
    skip_malformed: bool = field(
        default=False, metadata={"help": "Skip malformed lines of the data files (and demos_path files) instead of "
                                         "stopping with an error; each is logged and listed, as file:line, in the "
                                         "report. dd-distill has the same option."})
    wait: bool = field(default=False, metadata={"help": "If another process is writing output_dir, wait for it to "
                                                        "finish instead of refusing to start."})
    plots: bool = field(default=True, metadata={"help": "Write PNG plots with the report."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        self.models = [_section(ModelConfig, item, f"models[{index}]") for index, item in enumerate(self.models)]
        self.strategies = [_section(StrategyConfig, item, f"strategies[{index}]")
                           for index, item in enumerate(self.strategies)]
        self.datasets = [_section(DatasetConfig, item, f"datasets[{index}]") for index, item in enumerate(self.datasets)]
        if self.split is not None:
            for dataset in self.datasets:
                if dataset.kind == "gsm8k":
                    if dataset.name == f"gsm8k-{dataset.split}":  # a default name follows the split
                        dataset.name = f"gsm8k-{self.split}"
                    dataset.split = self.split
                    dataset.__post_init__()
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1, got {self.limit}")
        if self.max_cost is not None and self.max_cost < 0:
            raise ConfigError(f"max_cost must be >= 0, got {self.max_cost}")
        if self.pilot is not None and self.pilot < 1:
            raise ConfigError(f"pilot must be at least 1 problem per cell, got {self.pilot}")
        if self.pilot is not None and not self.dry_run:
            raise ConfigError(f"pilot ({self.pilot}) runs only with dry_run (--dry-run --pilot {self.pilot}); a run "
                              "without it runs every problem, and its budget guard learns from the first ones")
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout}")
        for section, items in (("models", self.models), ("strategies", self.strategies),
                               ("datasets", self.datasets)):
            names = [item.name for item in items]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ConfigError(f"{section}: names must be unique; repeated: {duplicates}")
        known = {model.name: model for model in self.models}
        for strategy in self.strategies:
            if strategy.decomposer is not None and strategy.decomposer not in known:
                raise ConfigError(f"strategies[{strategy.name}]: decomposer {strategy.decomposer!r} is not one of the "
                                  f"models {sorted(known)}")
        # A hybrid's decomposer is found here even when only_models leaves it out of the models that solve.
        self.decomposers = {strategy.decomposer: known[strategy.decomposer] for strategy in self.strategies
                            if strategy.decomposer is not None}
        self.models = _only(self.models, self.only_models, "only_models")
        self.strategies = _only(self.strategies, self.only_strategies, "only_strategies")
        self.datasets = _only(self.datasets, self.only_datasets, "only_datasets")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir) / "cache"

    def check_runnable(self) -> None:
        """Fail early when there is nothing to run."""
        from dd_prompting.batches import check_batchable

        for section in ("models", "strategies", "datasets"):
            if not getattr(self, section):
                raise ConfigError(f"The config lists no {section}; add at least one [[{section}]] section.")
        for model in self.models:  # a model called in batches: its provider has a batch API (and a run, its key)
            check_batchable(model, cache=True, key=not (self.dry_run and not self.pilot))


def _only(items: list, names: str | None, flag: str) -> list:
    if not names:
        return items
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    known = {item.name for item in items}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ConfigError(f"{flag}: unknown names {unknown}; the config has {sorted(known)}")
    return [item for item in items if item.name in wanted]


def _section(cls: type, item: Any, where: str):
    """One entry of `[[models]]`, `[[strategies]]` or `[[datasets]]` (a table, or an instance in Python)."""
    if isinstance(item, dict):
        _refuse_api_key(item, where)
    return from_dict(cls, item, where)


def _refuse_api_key(item: dict[str, Any], where: str) -> None:
    if "api_key" in item:
        raise ConfigError(
            f"{where}: 'api_key' is not accepted in a config file, so that keys never land in shared files; "
            "set api_key_env to the name of the environment variable that holds it"
        )


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> EvalConfig:
    """Read a TOML, YAML or JSON config, apply `overrides` (e.g. from flags), and validate.

    Errors name the file and the key at fault.
    """
    data = read_config_file(path)  # its errors name the file already
    for section in ("models", "strategies", "datasets"):
        entries = data.get(section)
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, dict):
                _refuse_api_key(entry, f"{path}: {section}[{entry.get('name') or index}]")
    try:
        return load(EvalConfig, base=data, overrides=overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
