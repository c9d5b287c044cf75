"""The one config engine (`dd_prompting.config`) on small dataclasses of its own."""

import argparse
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pytest

from dd_prompting.config import (
    ConfigError,
    add_arguments,
    deep_merge,
    from_dict,
    load,
    overrides_from_args,
    read_config_file,
)


@dataclass
class Sampling:
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature."})
    max_tokens: int | None = field(default=None, metadata={"help": "Cap on reply tokens."})


@dataclass
class Model:
    __renamed__: ClassVar[dict[str, str]] = {"num_threads": "threads", "backoff": "retry_backoff"}
    __renamed_values__: ClassVar[dict[str, dict[str, str]]] = {"kind": {"dspy": "api"}}
    __removed__: ClassVar[dict[str, str]] = {"lm_retries": "retries are per call now; set retries"}

    model: str = field(metadata={"help": "The model."})
    name: str | None = field(default=None, metadata={"help": "Its name in reports."})
    kind: Literal["api", "local"] = field(default="api", metadata={"help": "Where it runs."})
    threads: int = field(default=8, metadata={"help": "Concurrent calls."})
    retry_backoff: float = field(default=1.0, metadata={"help": "First back-off."})
    sampling: Sampling = field(default_factory=Sampling, metadata={"help": "How it samples."})


@dataclass
class Run:
    output_dir: str = field(default="out", metadata={"help": "Where results go."})
    limit: int | None = field(default=None, metadata={"help": "Examples per dataset."})
    demos: int | str = field(default=0, metadata={"help": "A count, or 'builtin'."})
    question: str | list[str] = field(default="question", metadata={"help": "Field(s) of the question."})
    dry_run: bool = field(default=False, metadata={"help": "Estimate only."})
    max_cost: float | None = field(default=None, metadata={"help": "Budget in USD."})
    split: Literal["train", "test"] = field(default="test", metadata={"help": "The split."})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "Free-form settings."})
    models: list[Model] = field(default_factory=list, metadata={"help": "Models."})
    teacher: Model = field(default_factory=lambda: Model(model="t"), metadata={"help": "The teacher."})
    solver: dict[str, Any] = field(default_factory=dict, metadata={"help": "Sampling overrides.",
                                                                   "fields_of": Sampling})


# --- building ---------------------------------------------------------------------------------------


def test_nested_sections_lists_of_sections_and_tables_are_built():
    run = from_dict(Run, {"teacher": {"model": "m", "sampling": {"temperature": 1}},
                          "models": [{"model": "a"}, {"model": "b", "kind": "local"}], "extra": {"x": [1]}})
    assert run.teacher.sampling.temperature == 1.0 and isinstance(run.teacher.sampling.temperature, float)
    assert [m.kind for m in run.models] == ["api", "local"] and run.extra == {"x": [1]}


@pytest.mark.parametrize("data, expected", [
    ({"demos": 8}, 8),
    ({"demos": "builtin"}, "builtin"),
    ({"question": "q"}, "q"),
    ({"question": ["Body", "Question"]}, ["Body", "Question"]),
])
def test_union_types_accept_each_member(data, expected):
    run = from_dict(Run, data)
    assert getattr(run, next(iter(data))) == expected


@pytest.mark.parametrize("data, message", [
    ({"demos": 1.5}, r"^demos must be an int or a str, got 1.5$"),
    ({"question": ["Body", 2]}, r"^question\[1\] must be a str, got 2$"),
    ({"limit": "10"}, r"^limit must be an int or none, got '10'$"),
    ({"limit": True}, r"^limit must be an int or none, got True$"),
    ({"dry_run": "yes"}, r"^dry_run must be true or false, got 'yes'$"),
    ({"dry_run": 1}, r"^dry_run must be true or false, got 1$"),
    ({"split": "dev"}, r"^split must be one of \['train', 'test'\], got 'dev'$"),
    ({"output_dir": None}, r"^output_dir must be a str, got None$"),
    ({"extra": [1]}, r"^extra must be a table, got a list"),
    ({"teacher": {"model": "m", "sampling": {"temperature": "hot"}}},
     r"^teacher.sampling.temperature must be a float, got 'hot'$"),
    ({"teacher": "gpt"}, r"^teacher must be a table of settings, got 'gpt'$"),
])
def test_type_errors_name_the_dotted_field_the_value_and_what_is_expected(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Run, data)


def test_ints_widen_to_floats_and_none_words_mean_none_for_optional_fields():
    run = from_dict(Run, {"max_cost": 2, "limit": "none", "teacher": {"model": "m", "sampling": {"max_tokens": "null"}}})
    assert run.max_cost == 2.0 and isinstance(run.max_cost, float)
    assert run.limit is None and run.teacher.sampling.max_tokens is None


@pytest.mark.parametrize("data, message", [
    ({"models": [{"model": "a"}, {"model": "b", "kind": "remote"}]},
     r"^models\[1\].kind must be one of \['api', 'local'\], got 'remote'$"),
    ({"models": [{"name": "gpt-4o", "model": "openai/gpt-4o", "kind": "remote"}]},
     r"^models\[gpt-4o\].kind must be one of"),
    ({"models": [{"model": "a", "temprature": 0}]}, r"^unknown setting models\[0\].temprature"),
    ({"models": {"model": "a"}}, r"^models must be a list \(of a table of settings\)"),
])
def test_lists_of_sections_name_the_entry_by_name_or_index(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Run, data)


def test_unknown_keys_are_named_with_the_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"^unknown setting teacher.sampling.temprature; did you mean "
                                          r"teacher.sampling.temperature\?$"):
        from_dict(Run, {"teacher": {"model": "m", "sampling": {"temprature": 0.5}}})
    with pytest.raises(ConfigError, match=r"unknown setting limt; did you mean limit\?"):
        from_dict(Run, {"limt": 3})


def test_an_unknown_key_with_no_near_match_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"^unknown setting teacher.zzz \(the settings of teacher are: kind, model, "
                                          r"name, retry_backoff, sampling, threads\)$"):
        from_dict(Run, {"teacher": {"model": "m", "zzz": 1}})


def test_a_post_init_error_is_named_by_its_section():
    @dataclass
    class Positive:
        n: int = 1

        def __post_init__(self):
            if self.n < 1:
                raise ValueError(f"n must be at least 1, got {self.n}")

    @dataclass
    class Outer:
        inner: Positive = field(default_factory=Positive)

    with pytest.raises(ConfigError, match=r"^inner: n must be at least 1, got 0$"):
        from_dict(Outer, {"inner": {"n": 0}})


# --- old spellings ----------------------------------------------------------------------------------


def test_a_renamed_key_still_works_with_a_future_warning_naming_the_new_spelling():
    with pytest.warns(FutureWarning, match=r"teacher.num_threads is now spelled teacher.threads"):
        run = from_dict(Run, {"teacher": {"model": "m", "num_threads": 4}})
    assert run.teacher.threads == 4


def test_a_renamed_value_still_works_with_a_future_warning():
    with pytest.warns(FutureWarning, match=r"models\[0\].kind = 'dspy' is now 'api'"):
        run = from_dict(Run, {"models": [{"model": "m", "kind": "dspy"}]})
    assert run.models[0].kind == "api"


def test_a_key_given_both_ways_is_an_error():
    with pytest.raises(ConfigError, match=r"teacher.backoff and teacher.retry_backoff are one setting"):
        from_dict(Run, {"teacher": {"model": "m", "backoff": 1, "retry_backoff": 2}})


def test_a_removed_key_is_an_error_saying_why():
    with pytest.raises(ConfigError, match=r"^teacher.lm_retries is no longer a setting: retries are per call now"):
        from_dict(Run, {"teacher": {"model": "m", "lm_retries": 3}})


def test_an_old_key_in_one_layer_and_the_new_one_in_another_do_not_collide():
    # A run's saved config has the new spelling; an old config file or flag still overrides it.
    with pytest.warns(FutureWarning, match="now spelled"):
        run = load(Run, base={"teacher": {"model": "m", "threads": 8}}, overrides={"teacher": {"num_threads": 2}})
    assert run.teacher.threads == 2


# --- files and layers -------------------------------------------------------------------------------

CONFIG = {"limit": 5, "teacher": {"model": "m", "sampling": {"temperature": 0.5}}, "models": [{"model": "a"}]}


def test_json_yaml_and_toml_files_read_the_same(tmp_path):
    yaml = pytest.importorskip("yaml")
    (tmp_path / "c.json").write_text(json.dumps(CONFIG))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "c.yml").write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "c.toml").write_text('limit = 5\n[teacher]\nmodel = "m"\n[teacher.sampling]\ntemperature = 0.5\n'
                                     '[[models]]\nmodel = "a"\n')
    loaded = [read_config_file(tmp_path / name) for name in ("c.json", "c.yaml", "c.yml", "c.toml")]
    assert all(data == CONFIG for data in loaded)
    assert load(Run, tmp_path / "c.toml") == from_dict(Run, CONFIG)


@pytest.mark.parametrize("name, text, message", [
    ("bad.toml", "limit = [", r"bad.toml: not a valid TOML file"),
    ("bad.yaml", "limit: [1, 2", r"bad.yaml: not a valid YAML file"),
    ("bad.json", "{limit: 3}", r"bad.json: not a valid JSON file"),
    ("list.json", "[1, 2]", r"list.json: the top level must be a table of settings, got list"),
    ("run.ini", "[run]", r"run.ini: config files must end in .toml, .yaml, .yml or .json"),
])
def test_bad_files_are_named(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_config_file(tmp_path / name)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"Config file not found: .*nope.toml"):
        load(Run, tmp_path / "nope.toml")


def test_an_old_spelling_error_in_a_file_names_the_file(tmp_path):
    (tmp_path / "old.toml").write_text('[teacher]\nmodel = "m"\nlm_retries = 3\n')
    with pytest.raises(ConfigError, match=r"old.toml: teacher.lm_retries is no longer a setting"):
        load(Run, tmp_path / "old.toml")


def test_layers_are_defaults_then_base_then_file_then_overrides(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"limit": 5, "teacher": {"model": "file", "threads": 3}}))
    run = load(Run, tmp_path / "c.json", base=[{"output_dir": "base", "limit": 1}, {"teacher": {"model": "base2"}}],
               overrides={"teacher": {"threads": 4}})
    assert (run.output_dir, run.limit, run.teacher.model, run.teacher.threads) == ("base", 5, "file", 4)
    assert run.dry_run is False  # a default


def test_deep_merge_merges_tables_and_replaces_everything_else():
    merged = deep_merge({"a": {"x": 1, "y": 2}, "l": [1, 2]}, {"a": {"y": 3}, "l": [3]})
    assert merged == {"a": {"x": 1, "y": 3}, "l": [3]}


# --- flags ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_arguments(parser, Run, aliases={"limit": "-n"})
    return parser


def _overrides(argv):
    return overrides_from_args(_parser().parse_args(argv), Run)


def test_flags_are_built_from_the_dataclass_with_help_and_types(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in ("--output-dir", "--limit", "--dry-run", "--no-dry-run", "--split", "--teacher.model",
                 "--teacher.threads", "--teacher.sampling.temperature", "--solver.temperature", "-n"):
        assert flag in out
    assert "Examples per dataset." in out and "Cap on reply tokens." in out
    assert "--teacher.num_threads" not in out  # old names work but are not advertised
    assert "--models" not in out and "--extra" not in out  # lists of sections and free tables live in files


def test_flags_give_typed_nested_overrides():
    assert _overrides(["--limit", "5", "--max-cost", "0.5", "--no-dry-run", "--split", "train", "--demos", "builtin",
                       "--teacher.threads", "3", "--teacher.sampling.max_tokens", "none", "--solver.temperature", "1",
                       "--question", "Body", "Question"]) == {
        "limit": 5, "max_cost": 0.5, "dry_run": False, "split": "train", "demos": "builtin",
        "question": ["Body", "Question"],
        "teacher": {"threads": 3, "sampling": {"max_tokens": None}}, "solver": {"temperature": 1.0},
    }
    assert _overrides(["--demos", "8", "-n", "none"]) == {"demos": 8, "limit": None}


def test_flags_left_out_override_nothing():
    assert _overrides([]) == {}


@pytest.mark.parametrize("argv, message", [
    (["--split", "dev"], r"invalid choice: 'dev'"),
    (["--teacher.threads", "many"], r"--teacher.threads: expected an int, got 'many'"),
    (["--limit", "ten"], r"--limit: expected an int or none, got 'ten'"),
])
def test_bad_flag_values_are_argparse_errors_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(argv)
    assert re.search(message, capsys.readouterr().err)


def test_old_flag_spellings_still_work_with_a_future_warning():
    overrides = _overrides(["--teacher.num_threads", "2", "--teacher.kind", "dspy"])
    with pytest.warns(FutureWarning) as caught:
        run = load(Run, base={"teacher": {"model": "m"}}, overrides=overrides)
    assert (run.teacher.threads, run.teacher.kind) == (2, "api")
    assert {"teacher.num_threads is now spelled teacher.threads", "teacher.kind = 'dspy' is now 'api'"} <= {
        str(w.message) for w in caught}


def test_the_warning_points_at_the_caller_not_the_engine():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_dict(Run, {"teacher": {"model": "m", "num_threads": 4}})
    assert caught and caught[0].filename == __file__
