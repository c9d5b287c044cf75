"""`dd_prompting.model_loading`: the GGUF copy cache (built once, renamed into place, never used half-written)
and the one-sentence error for a model that can't be had."""

import os
import time

import huggingface_hub
import pytest
from huggingface_hub import constants

from dd_prompting import model_loading
from dd_prompting.config import ConfigError
from dd_prompting.model_loading import (
    CACHE_DIR_ENV,
    ModelNotAvailableError,
    cache_dir,
    check_model_available,
    file_sha256,
    gguf_cache_dir,
    load_pretrained,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """dd_prompting's cache in a temporary directory."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "dd-cache"))
    return tmp_path / "dd-cache"


@pytest.fixture
def fake_gguf(tmp_path):
    path = tmp_path / "models" / "m.gguf"
    path.parent.mkdir()
    path.write_bytes(os.urandom(4096))
    return path


def _build(calls, content=b"weights"):
    def build(target):
        calls.append(target)
        (target / "model.safetensors").write_bytes(content)
        (target / "config.json").write_text("{}")
    return build


# --- where the cache lives -------------------------------------------------------------------------


def test_the_env_var_moves_the_cache_else_xdg_else_home(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gguf_cache_dir() == tmp_path / "home" / ".cache" / "dd_prompting" / "gguf"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "dd_prompting"
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "elsewhere"))
    assert gguf_cache_dir() == tmp_path / "elsewhere" / "gguf"


# --- the copy cache --------------------------------------------------------------------------------


def test_a_copy_is_built_once_under_the_files_hash_and_then_reused(cache, fake_gguf):
    calls = []
    first = model_loading._cached_copy(fake_gguf, _build(calls))
    again = model_loading._cached_copy(fake_gguf, _build(calls))
    assert first == again == cache / "gguf" / file_sha256(fake_gguf)
    assert len(calls) == 1 and (first / "model.safetensors").read_bytes() == b"weights"
    assert [p.name for p in (cache / "gguf").iterdir()] == [first.name]  # no temporary directory left behind


def test_a_changed_gguf_file_gets_a_new_copy(cache, fake_gguf):
    calls = []
    first = model_loading._cached_copy(fake_gguf, _build(calls))
    fake_gguf.write_bytes(os.urandom(4096))
    assert model_loading._cached_copy(fake_gguf, _build(calls)) != first and len(calls) == 2


def test_a_leftover_partial_temp_dir_is_not_used_and_an_old_one_is_removed(cache, fake_gguf):
    digest = file_sha256(fake_gguf)
    root = cache / "gguf"
    for name in (f".tmp-{digest}-111-aaaaaaaa", f".tmp-{digest}-222-bbbbbbbb"):
        (root / name).mkdir(parents=True)
        (root / name / "model.safetensors").write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(root / f".tmp-{digest}-111-aaaaaaaa", (old, old))
    calls = []
    copy = model_loading._cached_copy(fake_gguf, _build(calls))
    assert len(calls) == 1 and (copy / "model.safetensors").read_bytes() == b"weights"
    assert not (root / f".tmp-{digest}-111-aaaaaaaa").exists()  # killed an hour ago: removed
    assert (root / f".tmp-{digest}-222-bbbbbbbb").exists()  # may be another process's build in progress: kept


@pytest.mark.parametrize("damage", ["no marker", "truncated weights", "garbled marker"])
def test_a_half_written_or_corrupt_copy_is_rebuilt_not_used(cache, fake_gguf, damage):
    calls = []
    copy = model_loading._cached_copy(fake_gguf, _build(calls))
    if damage == "no marker":
        (copy / model_loading._MARKER).unlink()
    elif damage == "truncated weights":
        (copy / "model.safetensors").write_bytes(b"wei")
    else:
        (copy / model_loading._MARKER).write_text('{"files": ')
    again = model_loading._cached_copy(fake_gguf, _build(calls, content=b"rebuilt"))
    assert again == copy and len(calls) == 2
    assert (again / "model.safetensors").read_bytes() == b"rebuilt"
    assert [p.name for p in (cache / "gguf").iterdir()] == [copy.name]


def test_the_process_that_loses_the_race_uses_the_winners_copy(cache, fake_gguf):
    calls = []

    def slow_build(target):
        # While this process builds, another one finishes first and renames its copy into place.
        model_loading._cached_copy(fake_gguf, _build(calls, content=b"winner"))
        _build(calls, content=b"loser")(target)

    copy = model_loading._cached_copy(fake_gguf, slow_build)
    assert len(calls) == 2 and (copy / "model.safetensors").read_bytes() == b"winner"
    assert [p.name for p in (cache / "gguf").iterdir()] == [copy.name]  # the loser's temporary directory is gone


def test_a_failed_build_leaves_nothing_behind(cache, fake_gguf):
    def failing_build(target):
        (target / "model.safetensors").write_bytes(b"hal")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        model_loading._cached_copy(fake_gguf, failing_build)
    assert list((cache / "gguf").iterdir()) == []


def test_an_unwritable_cache_is_a_clear_error_naming_the_env_var(tmp_path, monkeypatch, fake_gguf):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker))
    with pytest.raises(ConfigError, match=CACHE_DIR_ENV):
        model_loading._cached_copy(fake_gguf, _build([]))


# --- a missing model -------------------------------------------------------------------------------


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    return hub


def _looks_cached(hub, repo_id, filename="config.json"):
    """The layout huggingface_hub gives a downloaded file: refs/main -> snapshots/<commit>/<file>."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / filename).write_text("{}")


def test_a_local_directory_is_available_and_its_gguf_file_must_be_in_it(tmp_path):
    check_model_available(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"")
    check_model_available(tmp_path, gguf_file="m.gguf")
    with pytest.raises(ModelNotAvailableError, match=r"has no GGUF file 'other.gguf' \(the directory holds m.gguf\)"):
        check_model_available(tmp_path, gguf_file="other.gguf")


def test_a_hub_id_in_the_hugging_face_cache_is_available_offline(empty_hf_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _looks_cached(empty_hf_cache, "owner/cached-model")
    check_model_available("owner/cached-model")
    _looks_cached(empty_hf_cache, "owner/gguf-model", "m.gguf")
    check_model_available("owner/gguf-model", gguf_file="m.gguf")


def test_a_missing_hub_id_offline_is_one_sentence_with_the_id_the_reason_and_the_fix(empty_hf_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailableError) as info:
        check_model_available("gpt2")
    message = str(info.value)
    assert message.startswith("Model 'gpt2' is not available: it is not a local directory and not in the Hugging "
                              f"Face cache ({empty_hf_cache})")
    assert "HF_HUB_OFFLINE is set" in message and "`hf download gpt2`" in message and "local directory" in message
    assert message.count(". ") == 0 and message.endswith(".") and "\n" not in message
    assert isinstance(info.value, ConfigError)


def test_a_missing_hub_id_when_the_hub_cant_be_reached_says_so(empty_hf_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = []

    def unreachable(repo_id, **kwargs):
        asked.append(repo_id)
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(ModelNotAvailableError, match=r"the hub can't be reached \(OSError: \[Errno -2\] Name or "):
        check_model_available("owner/missing")
    assert asked == ["owner/missing"]


def test_a_path_that_does_not_exist_is_not_taken_for_a_hub_id(empty_hf_cache):
    with pytest.raises(ModelNotAvailableError, match="no such local directory, and it is not a Hugging Face hub id"):
        check_model_available("runs/x/students/solver")


def test_load_pretrained_checks_first_and_fails_in_one_sentence(empty_hf_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailableError, match="^Model 'gpt2' is not available"):
        load_pretrained("gpt2")
    with pytest.raises(ModelNotAvailableError, match="^Model 'owner/tok' is not available"):
        load_pretrained(empty_hf_cache, tokenizer_name_or_path="owner/tok")


def test_load_pretrained_round_trips_a_local_directory(tmp_path):
    import torch

    from tiny_models import tiny_gpt2, train_tokenizer

    tokenizer = train_tokenizer(["one two three four five six seven eight nine ten"] * 20, vocab_size=300)
    model = tiny_gpt2(tokenizer, n_positions=64).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_pretrained(tmp_path)
    ids = loaded_tokenizer("one two three", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.dtype == torch.float32


# --- SmolLM2 from the package ----------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_is_dequantised_once_and_reloaded_from_its_copy_with_identical_logits(cache, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dd_prompting.local import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    original = {cls: cls.from_pretrained for cls in (AutoModelForCausalLM, AutoTokenizer)}
    loads, dequantised = [], []

    def recording(cls):
        def from_pretrained(source, *args, **kwargs):
            loads.append((cls.__name__, str(source), kwargs.get("gguf_file")))
            result = original[cls](source, *args, **kwargs)
            if cls is AutoModelForCausalLM and kwargs.get("gguf_file"):
                dequantised.append(result)
            return result
        return from_pretrained

    for cls in original:
        monkeypatch.setattr(cls, "from_pretrained", recording(cls))
    first, tokenizer = load_pretrained(gguf.parent, gguf_file=gguf.name)
    copy = cache / "gguf" / file_sha256(gguf)
    assert (copy / "model.safetensors").stat().st_size > 500e6  # float32: about 0.54 GB
    assert sum(1 for _, _, gguf_file in loads if gguf_file) == 2  # the model and the tokenizer, once

    loads.clear()
    started = time.perf_counter()
    again, again_tokenizer = load_pretrained(gguf.parent, gguf_file=gguf.name)
    seconds = time.perf_counter() - started
    assert loads == [("AutoModelForCausalLM", str(copy), None), ("AutoTokenizer", str(copy), None)]  # never the GGUF
    assert seconds < 2, f"reloading SmolLM2 from its copy took {seconds:.2f} s"

    messages = [{"role": "user", "content": "What is 12 plus 30?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert again_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == prompt
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert again_tokenizer(prompt, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        reference = dequantised[0](ids).logits  # the model as dequantised from the GGUF file
        assert torch.equal(first(ids).logits, reference) and torch.equal(again(ids).logits, reference)
        outputs = [model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
                   for model in (dequantised[0], again)]
    assert torch.equal(outputs[0], outputs[1])


def test_the_tokenizer_alone_loads_from_the_same_place(tmp_path):
    from dd_prompting.model_loading import load_pretrained_tokenizer
    from tiny_models import train_tokenizer

    tokenizer = train_tokenizer(["one two three four five six seven eight nine ten"] * 20, vocab_size=300)
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_pretrained_tokenizer(tmp_path / "model-not-needed", tokenizer_name_or_path=tmp_path / "tok")
    assert loaded("one two").input_ids == tokenizer("one two").input_ids
    with pytest.raises(ModelNotAvailableError, match="no such local directory"):
        load_pretrained_tokenizer(tmp_path / "missing" / "dir" / "x")


def test_local_lm_on_a_missing_model_says_so_in_one_sentence(empty_hf_cache, monkeypatch):
    from dd_prompting import local_lm

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailableError) as info:
        local_lm("someone/not-downloaded-model")
    message = str(info.value)
    assert "'someone/not-downloaded-model'" in message and "`hf download someone/not-downloaded-model`" in message
    assert "\n" not in message
