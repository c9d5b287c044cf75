import argparse
import json

import pytest

from dd_prompting.distill.config import ConfigError, RunConfig, add_config_arguments, overrides_from_args, read_config_file


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return overrides_from_args(parser.parse_args(argv))


TOML = """
name = "demo"

[teacher]
kind = "dspy"
model = "openai/gpt-4o-mini"
samples = 2
temperature = 0.7

[data]
source = "gsm8k"
train_problems = 100
eval_problems = 50

[data.generator]
max_value = 300

[student]
model = "gpt2"
learning_rate = 5e-5
epochs = 3

[solver]
epochs = 5
"""


def test_toml_config_builds_typed_sections_and_role_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TOML)
    config = RunConfig.load(path)
    assert config.name == "demo" and config.teacher.samples == 2 and config.data.generator.max_value == 300
    assert config.train_config("solver").epochs == 5.0
    assert config.train_config("decomposer").epochs == 3.0
    assert config.train_config("cot").learning_rate == 5e-5 and config.train_config("cot").model == "gpt2"


def test_yaml_and_json_configs_load_the_same(tmp_path):
    yaml = pytest.importorskip("yaml")
    data = {"teacher": {"kind": "socratic"}, "data": {"train_problems": 10}, "cot": {"max_steps": 7}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "a.json").write_text(json.dumps(data))
    assert RunConfig.load(tmp_path / "a.yaml") == RunConfig.load(tmp_path / "a.json")
    assert RunConfig.load(tmp_path / "a.yaml").train_config("cot").max_steps == 7


def test_flags_override_the_file_and_the_file_overrides_defaults(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TOML)
    overrides = _parse(["--teacher.samples", "3", "--solver.epochs", "1", "--no-train-cot", "--data.eval_problems", "none"])
    config = RunConfig.load(path, overrides=overrides)
    assert config.teacher.samples == 3 and config.teacher.temperature == 0.7  # untouched value survives
    assert config.train_config("solver").epochs == 1.0 and config.train_cot is False
    assert config.data.eval_problems is None and config.data.train_problems == 100


def test_flags_not_given_override_nothing():
    assert _parse([]) == {}


def test_saved_config_reloads_identically(tmp_path):
    config = RunConfig.from_dict({"teacher": {"kind": "socratic"}, "solver": {"max_steps": 9}})
    config.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == config


@pytest.mark.parametrize(
    "data, message",
    [
        ({"teacher": {"kind": "oracle"}}, r"teacher.kind must be one of"),
        ({"teacher": {"kind": "dspy"}}, r"teacher.model is required"),
        ({"teacher": {"samples": 0}}, r"teacher.samples must be"),
        ({"teacher": {"samples": 4}}, r"teacher.samples = 4 needs teacher.temperature"),
        ({"teacher": {"api_key_env": "sk-abc123/xyz"}}, r"teacher.api_key_env must be the NAME"),
        ({"teacher": {"num_threads": "8"}}, r"teacher.num_threads must be an int"),
        ({"teacher": {"modle": "x"}}, r"unknown setting\(s\) \['teacher.modle'\]"),
        ({"data": {"source": "imagenet"}}, r"data.source must be"),
        ({"data": {"generator": {"max_factor": 1}}}, r"max_factor"),
        ({"data": {"source": "gsm8k", "split": "test_socratic"}}, r"overlap the held-out"),
        ({"student": {"tiny_hidden": 100, "tiny_heads": 3}}, r"student: .*tiny_hidden"),
        ({"solver": {"learning_rate": -1.0}}, r"solver: .*learning_rate"),
        ({"cot": {"max_stepz": 1}}, r"cot: unknown field"),
        ({"eval": {"batch_size": 0}}, r"eval.batch_size"),
        ({"name": "a/b"}, r"name must be a plain directory name"),
        ({"train_cot": "yes"}, r"train_cot must be true or false"),
        ({"data": {"source": "gsm8k"}}, r"teacher.kind = 'generator' .* data.source must be 'generator'"),
        ({"data": {"train_problems": None}}, r"data.train_problems must be a number"),
        ({"eval": {"max_answer_tokens": 0}}, r"eval.max_answer_tokens"),
    ],
)
def test_bad_values_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(data)


def test_disjoint_gsm8k_ranges_of_one_split_are_accepted():
    config = RunConfig.from_dict(
        {"teacher": {"kind": "socratic"}, "data": {"source": "gsm8k", "split": "test_socratic", "train_problems": 1000, "eval_offset": 1000,
                  "eval_problems": 319}}
    )
    assert config.data.resolved_eval_source == "gsm8k"


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.toml", "teacher = [", "bad.toml: not a valid TOML file"),
        ("bad.yaml", "teacher: [1, 2", "bad.yaml: not a valid YAML file"),
        ("list.json", "[1, 2]", "list.json: the top level must be a table"),
        ("run.ini", "[teacher]", "must end in .toml"),
    ],
)
def test_bad_config_files_name_the_file(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_config_file(tmp_path / name)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found: .*nope.toml"):
        RunConfig.load(tmp_path / "nope.toml")
