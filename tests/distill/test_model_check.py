"""`dd-distill` checks its student and teacher models before any work: a missing one is one sentence, no traceback,
no trace written and no teacher call spent."""

import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants

from dd_prompting.distill.run.cli import main
from dd_prompting.distill.run.run_config import RunConfig
from dd_prompting.distill.run.directory import Run
from dd_prompting.distill.run.pipeline import check_models
from dd_prompting.model_loading import ModelNotAvailableError
from dd_prompting.testing import OpenAICompatibleServer

ROOT = Path(__file__).resolve().parents[2]
REPLY = '[[ ## subquestions ## ]]\n["What is asked?"]\n\n[[ ## completed ## ]]'


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


def test_run_with_an_uncached_student_model_offline_stops_before_any_trace_or_teacher_call(tmp_path):
    config = tmp_path / "run.toml"
    run_dir = tmp_path / "run"
    with OpenAICompatibleServer(lambda request: REPLY) as server:
        config.write_text(
            '[teacher]\nkind = "api"\nmodel = "openai/gpt-4o-mini"\n'
            f'api_base = "{server.base_url}"\ncache_dir = "{tmp_path / "cache"}"\nretries = 0\n'
            '[data]\nsource = "gsm8k"\ntrain_problems = 4\neval_problems = 2\neval_offset = 4\n'
            '[student]\nmodel = "gpt2"\n'
        )
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
        env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OPENAI_API_KEY="sk-offline",
                   PYTHONPATH=str(ROOT), LITELLM_LOCAL_MODEL_COST_MAP="True")
        result = subprocess.run(
            [sys.executable, "-m", "dd_prompting.distill", "run", "--config", str(config),
             "--run-dir", str(run_dir), "--quiet"],
            env=env, capture_output=True, text=True, timeout=300, check=False)
        calls = server.call_count
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"dd-distill: error: Model 'gpt2' is not available: it is not a local directory and not in the Hugging Face "
        f"cache ({tmp_path / 'hf' / 'hub'}), and the hub can't be reached because HF_HUB_OFFLINE is set; download it "
        "on a connected machine (`hf download gpt2`) and copy the Hugging Face cache here, or point at a local "
        "directory that holds the model."
    ], result.stderr
    assert calls == 0
    assert not (run_dir / "traces.jsonl").exists() and not (tmp_path / "cache").exists()


def test_a_missing_local_teacher_stops_the_traces_stage_before_it_starts(empty_hf_cache, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["traces", "--run-dir", str(run_dir), "--teacher.kind", "local", "--teacher.model",
                 "owner/missing-teacher", "--data.source", "gsm8k", "--data.train_problems", "4",
                 "--data.eval_problems", "2", "--data.eval_offset", "4", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("dd-distill: error: Model 'owner/missing-teacher' is not available:")
    assert "Traceback" not in err and not run_dir.exists()


def test_each_stage_checks_only_the_models_it_loads(empty_hf_cache, tmp_path):
    student_dir = tmp_path / "my-student-base"
    student_dir.mkdir()
    config = RunConfig.from_dict({
        "teacher": {"kind": "local", "model": "owner/missing-teacher"},
        "data": {"source": "gsm8k"},
        "student": {"model": "gpt2"},
        "cot": {"model": str(student_dir)},
        "eval": {"teacher": False},
    })
    run = Run(tmp_path / "run", config)
    check_models(run, ("build",))
    # Evaluating alone loads the trained students (not there yet), and not the teacher (eval.teacher is off).
    with pytest.raises(FileNotFoundError, match="holds no trained decomposer student: run the `train` stage first"):
        check_models(run, ("evaluate",))
    with pytest.raises(ModelNotAvailableError, match="^Model 'owner/missing-teacher'"):
        check_models(run, ("traces", "train"))
    with pytest.raises(ModelNotAvailableError, match="^Model 'gpt2'"):
        check_models(run, ("train",))
    config.student.model = str(student_dir)
    config.decomposer = config.solver = {"model": str(student_dir)}
    check_models(run, ("train",))


def test_the_bundled_and_built_models_need_no_check(empty_hf_cache, tmp_path):
    config = RunConfig.from_dict({"teacher": {"kind": "local", "model": "smollm2"}, "data": {"source": "gsm8k"},
                                  "student": {"model": "tiny"}, "eval": {"teacher": True}})
    check_models(Run(tmp_path / "run", config), ("traces", "build", "train", "evaluate"))


def test_a_students_base_model_loads_through_the_same_check(empty_hf_cache):
    from dd_prompting.distill.training.modeling import load_model_and_tokenizer
    from dd_prompting.distill.training.train_config import TrainConfig

    with pytest.raises(ModelNotAvailableError, match="^Model 'gpt2' is not available: .*HF_HUB_OFFLINE is set"):
        load_model_and_tokenizer(TrainConfig(model="gpt2"))


def test_evaluate_alone_checks_the_trained_students_before_any_work(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "students" / "decomposer").mkdir(parents=True)  # a run stopped before its students were saved
    code = main(["evaluate", "--run-dir", str(run_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(run_dir / "students" / "decomposer") in lines[0], err
    assert not (run_dir / "eval").exists()
