import argparse
import dataclasses
import json
import warnings

import pytest

from dd_prompting.distill.run.run_config import (
    ConfigError,
    RunConfig,
    TeacherConfig,
    add_config_arguments,
    overrides_from_args,
    read_config_file,
)


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return overrides_from_args(parser.parse_args(argv))


TOML = """
name = "demo"

[teacher]
kind = "api"
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
        ({"teacher": {"kind": "api"}}, r"teacher.model is required"),
        ({"teacher": {"samples": 0}}, r"teacher.samples must be"),
        ({"teacher": {"samples": 4}}, r"teacher.samples = 4 needs teacher.temperature"),
        ({"teacher": {"api_key_env": "sk-abc123/xyz"}}, r"teacher.api_key_env must be the NAME"),
        ({"teacher": {"threads": "8"}}, r"teacher.threads must be an int"),
        ({"teacher": {"temprature": 0.5}}, r"unknown setting teacher.temprature; did you mean teacher.temperature\?"),
        ({"teacher": {"lm_retries": 2}}, r"teacher.lm_retries is no longer a setting: retries are per call"),
        ({"teacher": {"threads": 2, "num_threads": 4}}, r"are one setting"),
        ({"data": {"source": "imagenet"}}, r"data.source must be"),
        ({"data": {"generator": {"max_factor": 1}}}, r"max_factor"),
        ({"data": {"source": "gsm8k", "split": "test_socratic"}}, r"overlap the held-out"),
        ({"student": {"tiny_hidden": 100, "tiny_heads": 3}}, r"student: .*tiny_hidden"),
        ({"solver": {"learning_rate": -1.0}}, r"solver: .*learning_rate"),
        ({"cot": {"max_stepz": 1}}, r"unknown setting cot.max_stepz; did you mean cot.max_steps\?"),
        ({"solver": {"epochs": "3"}}, r"solver.epochs must be a float, got '3'"),
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


def test_old_teacher_spellings_still_load_with_a_future_warning():
    with pytest.warns(FutureWarning) as caught:
        config = RunConfig.from_dict({"teacher": {"kind": "dspy", "model": "openai/gpt-4o-mini", "num_threads": 4,
                                                  "backoff": 0.5}})
    assert (config.teacher.kind, config.teacher.threads, config.teacher.retry_backoff) == ("api", 4, 0.5)
    assert {str(w.message) for w in caught} == {"teacher.num_threads is now spelled teacher.threads",
                                                "teacher.backoff is now spelled teacher.retry_backoff",
                                                "teacher.kind = 'dspy' is now 'api'"}
    with pytest.warns(FutureWarning) as caught:
        smollm2 = RunConfig.from_dict({"teacher": {"kind": "dspy", "model": "smollm2"}})
    assert any("teacher.kind = 'local'" in str(w.message) for w in caught)
    assert (smollm2.teacher.kind, smollm2.teacher.model) == ("local", "smollm2")
    with pytest.warns(FutureWarning, match="teacher.kind = 'dspy' is now 'api'"):
        direct = TeacherConfig(kind="dspy", model="openai/gpt-4o-mini")  # the Python API too
    assert direct.kind == "api"
    with pytest.warns(FutureWarning, match="kind = 'local'"):
        local = RunConfig.from_dict({"teacher": {"kind": "api", "model": "local:runs/x/students/solver"}})
    assert (local.teacher.kind, local.teacher.model) == ("local", "runs/x/students/solver")


def test_a_saved_config_never_holds_url_credentials(tmp_path):
    config = RunConfig.from_dict({"teacher": {"kind": "api", "model": "openai/m",
                                              "api_base": "http://bob:s3cret-pw@proxy:8000/v1"}})
    config.save(tmp_path / "config.json")
    text = (tmp_path / "config.json").read_text()
    assert "s3cret-pw" not in text and "http://proxy:8000/v1" in text
    assert config.teacher.api_base == "http://bob:s3cret-pw@proxy:8000/v1"  # the run itself still uses them


def test_old_teacher_flags_and_a_saved_config_do_not_collide(tmp_path):
    # A run directory's config.json has the new spelling; an old flag still overrides it.
    RunConfig.from_dict({"teacher": {"kind": "socratic"}}).save(tmp_path / "config.json")
    base = json.loads((tmp_path / "config.json").read_text())
    with pytest.warns(FutureWarning, match="teacher.num_threads is now spelled teacher.threads"):
        config = RunConfig.load(overrides=_parse(["--teacher.num_threads", "3"]), base=base)
    assert config.teacher.threads == 3


def test_teacher_is_a_model_config_with_the_same_fields_as_an_eval_model():
    from dd_prompting.models import ModelConfig

    teacher = RunConfig.from_dict({"teacher": {"kind": "api", "model": "openai/m", "api_base": "http://h/v1",
                                               "input_cost_per_million": 1, "output_cost_per_million": 2}}).teacher
    assert isinstance(teacher, ModelConfig) and teacher.section == "teacher"
    assert (teacher.threads, teacher.retries, teacher.retry_backoff, teacher.temperature) == (8, 3, 1.0, None)
    with pytest.raises(ConfigError, match="teacher: set both input_cost_per_million"):
        RunConfig.from_dict({"teacher": {"kind": "api", "model": "openai/m", "input_cost_per_million": 1}})


def test_held_out_evaluation_is_held_out_config_in_the_eval_section():
    from dd_prompting.distill.run.run_config import HeldOutConfig

    config = RunConfig.from_dict({"eval": {"batch_size": 8}})
    assert isinstance(config.eval, HeldOutConfig) and config.eval.batch_size == 8


def test_one_seed_seeds_the_problems_and_every_student_and_per_part_seeds_still_win(tmp_path):
    config = RunConfig.load(overrides=_parse(["--seed", "3"]))
    assert config.data.seed == 3 and all(config.train_config(role).seed == 3 for role in ("decomposer", "solver", "cot"))
    expert = RunConfig.load(overrides=_parse(["--seed", "3", "--data.seed", "5", "--solver.seed", "9"]))
    assert expert.data.seed == 5 and expert.student.seed == 3 and expert.train_config("solver").seed == 9
    # A saved run (data.seed 1) rerun with --seed 4: the flag's layer is the later one, so it wins.
    path = tmp_path / "config.json"
    RunConfig.load(overrides={"data": {"seed": 1}}).save(path)
    again = RunConfig.load(base=json.loads(path.read_text()), overrides=_parse(["--seed", "4"]))
    assert again.data.seed == 4 and again.student.seed == 4
    (tmp_path / "run.toml").write_text("seed = 2\n")
    assert RunConfig.load(tmp_path / "run.toml").data.seed == 2


def test_equal_compute_gives_the_cot_student_the_pairs_total_steps():
    steps = _parse(["--decomposer.max_steps", "400", "--solver.max_steps", "1400", "--cot.max_steps", "1400"])
    assert RunConfig.load(overrides=steps).train_config("cot").max_steps == 1400
    equal = RunConfig.load(overrides={**steps, "equal_compute": True})
    assert equal.train_config("cot").max_steps == 1800 and equal.pair_steps() == 1800
    with pytest.raises(ConfigError, match="equal_compute needs"):
        RunConfig.load(overrides={"equal_compute": True, "student": {"max_steps": -1, "epochs": 2}})


def test_held_out_problems_can_be_deeper_than_the_training_problems():
    from dd_prompting.distill.teach.problem_sources import make_problems

    config = RunConfig.load(overrides=_parse(["--data.train_problems", "200", "--data.eval_problems", "30",
                                              "--data.eval_min_steps", "5", "--data.eval_max_steps", "6"]))
    train, held_out = make_problems(config)
    assert {len(p.subquestions) for p in train} <= {2, 3, 4} and {len(p.subquestions) for p in held_out} == {5, 6}
    with pytest.raises(ConfigError, match="eval_max_steps"):
        RunConfig.load(overrides={"data": {"eval_max_steps": 9}})
    with pytest.raises(ConfigError, match="generated held-out"):
        RunConfig.load(overrides={"teacher": {"kind": "socratic"}, "data": {"source": "gsm8k", "eval_max_steps": 6}})


def test_the_old_teacher_skip_malformed_key_still_loads_with_a_warning(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[teacher]\nskip_malformed = true\n")
    with pytest.warns(FutureWarning, match=r"is now the run's skip_malformed \(--skip-malformed\)"):
        config = RunConfig.load(path)
    assert config.skip_malformed  # what the stages read
    # ... and the old key is cleared, so that a copy of the teacher's config (as a batch round makes) warns no more.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataclasses.replace(config.teacher)
    assert RunConfig.load(overrides={"skip_malformed": True}).skip_malformed
    assert not RunConfig().skip_malformed


def test_how_the_teacher_is_served_is_not_a_stage_setting(tmp_path):
    from dd_prompting.distill.run.run_config import RunConfig
    from dd_prompting.distill.run.directory import Run

    config = RunConfig.from_dict({"teacher": {"kind": "local", "model": "smollm2", "device": "cpu",
                                              "max_batch_size": 4}, "data": {"source": "gsm8k"}})
    run = Run(tmp_path / "run", config)
    assert "device" not in run.settings("traces")["teacher"] and "max_batch_size" not in run.settings("traces")["teacher"]
    run.mark_done("traces", 1.0)
    config.teacher.max_batch_size, config.teacher.device = 16, "cuda"
    assert run.changed_settings("traces") == []  # a rerun served otherwise resumes; it is not refused
    config.teacher.max_new_tokens = 7
    assert run.changed_settings("traces") == ["teacher.max_new_tokens"]


def test_an_evaluate_stage_recorded_before_servers_existed_is_still_finished(tmp_path):
    import json

    from dd_prompting.distill.run.directory import Run
    from dd_prompting.distill.run.run_config import RunConfig

    run = Run(tmp_path / "run", RunConfig())
    run.mark_done("evaluate", 1.0)
    stages = json.loads((run.dir / "stages.json").read_text())
    del stages["evaluate"]["settings"]["servers"]  # as 0.1.0 recorded it
    (run.dir / "stages.json").write_text(json.dumps(stages))
    assert run.changed_settings("evaluate") == []  # a rerun skips it
    run.config.servers.max_in_flight = 4
    assert run.changed_settings("evaluate") == []  # how many requests a server takes decides nothing
    run.config.servers.cot = "http://127.0.0.1:8000/v1"
    assert run.changed_settings("evaluate") == ["servers.cot"]


def test_saving_the_config_is_atomic_so_a_killed_save_leaves_the_old_file(tmp_path, monkeypatch):
    # A dd-distill killed while writing config.json left it empty, and the next run failed on it (found by
    # tests/distill/test_run_dir_lock.py's SIGKILL test, about 1 run in 20).
    from pathlib import Path

    from dd_prompting.distill.run.directory import saved_settings
    from dd_prompting.distill.run.run_config import RunConfig

    path = tmp_path / "config.json"
    RunConfig().save(path)
    before = path.read_text()
    write_text = Path.write_text

    def killed_half_way(self, text, *args, **kwargs):
        write_text(self, text[:10], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_half_way)
    changed = RunConfig()
    changed.seed = 7
    with pytest.raises(KeyboardInterrupt):
        changed.save(path)
    monkeypatch.undo()
    assert path.read_text() == before and saved_settings(tmp_path)["seed"] == RunConfig().seed
    path.write_text("")  # a file broken some other way is named, not a bare JSON error
    with pytest.raises(ValueError, match=r"config.json is not valid JSON .*remove the run directory"):
        saved_settings(tmp_path)
