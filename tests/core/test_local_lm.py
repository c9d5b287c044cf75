"""The local transformers backend on a tiny GPT-2 built offline (tokenizer trained in the test)."""

import subprocess
import sys

import dspy
import pytest

from dd_prompting import DecomposedSolver, PlainTextAdapter, TransformersEngine, local_lm
from tiny_models import tiny_gpt2, train_tokenizer

# Local models pick their own adapter (PlainTextAdapter) when none is configured.
pytestmark = pytest.mark.no_adapter

CORPUS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nSubquestions:\n"
    "1. How many apples does Tom have?\nAnswer: 7",
    "Problem: Ann reads 5 pages a day for 3 days. How many pages?\nAnswer: 15",
] * 20


@pytest.fixture(scope="module")
def tiny():
    tokenizer = train_tokenizer(CORPUS)
    return tiny_gpt2(tokenizer), tokenizer


def test_import_does_not_load_torch():
    code = "import dd_prompting, sys; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_base_model_prompt_is_plain_text_turns(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=4)
    assert not engine.use_chat_template
    prompt = engine.render_prompt("Solve it.", [("user", "Q: 1?\nA:"), ("assistant", "1"), ("user", "Q: 2?\nA:")])
    assert prompt == "Solve it.\n\nQ: 1?\nA:\n1\n\nQ: 2?\nA:\n"


def test_generation_is_capped_and_greedy_is_deterministic(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=6)
    first = engine.generate("Question: Tom has", max_new_tokens=6)
    second = engine.generate("Question: Tom has", max_new_tokens=6)
    assert first == second
    text, prompt_tokens, new_tokens, finish = first
    assert new_tokens <= 6 and prompt_tokens > 0
    assert finish in ("stop", "length")


def test_stop_sequences_are_cut_from_the_text(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_new_tokens=30)
    text, *_ = engine.generate("Question: Tom has", max_new_tokens=30)
    assert text, "the untrained model should produce some text"
    stop = text[len(text) // 2:][:2]
    cut, _, _, finish = engine.generate("Question: Tom has", max_new_tokens=30, stop=(stop,))
    assert stop not in cut
    assert text.startswith(cut) and finish == "stop"


def test_local_lm_runs_a_dspy_program_end_to_end(tiny):
    model, tokenizer = tiny
    lm = local_lm(model, tokenizer=tokenizer, max_new_tokens=8, cache=False)
    with dspy.context(lm=lm):
        pred = DecomposedSolver("question -> answer", mode="iterative")(question="Tom has 3 apples. How many?")
    # An untrained model writes nonsense: what matters is that nothing raises and failures are recorded.
    assert isinstance(pred.parse_failures, list)
    assert len(lm.history) >= 2
    assert lm.history[0]["usage"]["completion_tokens"] <= 8


def test_plain_text_adapter_works_with_predict_on_a_local_model(tiny):
    model, tokenizer = tiny
    lm = local_lm(model, tokenizer=tokenizer, max_new_tokens=5, cache=False)
    with dspy.context(lm=lm, adapter=PlainTextAdapter()):
        pred = dspy.Predict("question -> answer")(question="Tom has 3 apples.")
    assert isinstance(pred.answer, str)
    messages = lm.history[0]["messages"]
    assert messages[-1]["content"].endswith("Answer:")


def test_loaded_model_needs_its_tokenizer(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="tokenizer"):
        local_lm(model)


def test_local_lm_loads_a_saved_directory(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    lm = local_lm(tmp_path, max_new_tokens=4, cache=False)
    assert lm.model == f"local/{tmp_path.resolve()}"
    out = lm("Question: Tom has")
    assert isinstance(out[0], str)


def test_two_directories_of_one_name_do_not_share_the_response_cache(tiny, tmp_path):
    # DSPy's cache is keyed on the LM's name: runs/a/solver and runs/b/solver are two models.
    import torch

    model, tokenizer = tiny
    for run in ("a", "b"):
        other = type(model)(model.config)
        torch.manual_seed(ord(run))
        other.load_state_dict({k: torch.randn_like(v) for k, v in model.state_dict().items()})
        other.save_pretrained(tmp_path / run / "solver")
        tokenizer.save_pretrained(tmp_path / run / "solver")
    a, b = (local_lm(tmp_path / run / "solver", max_new_tokens=6) for run in ("a", "b"))
    assert a.model != b.model
    assert a("Question: Tom has") != b("Question: Tom has")


def test_prefix_cache_reuses_shared_prompts_without_changing_greedy_output(tiny):
    model, tokenizer = tiny
    demos = "Solve it.\n\n" + "\n\n".join(CORPUS[:4]) + "\n\n"
    prompts = [demos + f"Question: Tom has {n} apples. How many?\nAnswer:" for n in (3, 4, 5, 6)]
    cached = TransformersEngine(model, tokenizer, max_new_tokens=12)
    plain = TransformersEngine(model, tokenizer, max_new_tokens=12, prefix_cache_size=0)
    for prompt in prompts:
        assert cached.generate(prompt, max_new_tokens=12) == plain.generate(prompt, max_new_tokens=12)
    # The first prompt has nothing to share with; the second encodes the shared demos once and keeps
    # them; each later one starts from the kept prefix.
    assert cached.prefixes.hits == len(prompts) - 2
    assert plain.prefixes.hits == 0


def test_a_prompt_longer_than_the_context_is_a_clear_error_and_generation_stops_at_the_end(tmp_path):
    tokenizer = train_tokenizer(CORPUS)
    short = TransformersEngine(tiny_gpt2(tokenizer, n_positions=24), tokenizer, name="short-student")
    long_prompt = " ".join(["Tom has 3 apples."] * 20)
    with pytest.raises(ValueError, match=r"short-student: the prompt is \d+ tokens, but this model attends over at most 24"):
        short.generate(long_prompt, max_new_tokens=4)
    # A prompt that fits, with more new tokens asked for than the context has left: capped, not a crash.
    prompt = "Question: Tom has 3 apples"
    room = 24 - len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    _, _, new_tokens, finish = short.generate(prompt, max_new_tokens=50)
    assert new_tokens <= room and finish in ("stop", "length")
    # Through DSPy, as a user meets it (DSPy wraps the engine's error, keeping its message).
    lm = local_lm(tiny_gpt2(tokenizer, n_positions=24), tokenizer=tokenizer, cache=False)
    with pytest.raises(Exception, match="attends over at most 24 positions. Shorten the prompt"):
        dspy.Predict("question -> answer")(question=long_prompt, lm=lm)


def test_a_local_lm_is_built_and_used_without_importing_distill_or_evals():
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "import dspy\n"
        "from tiny_models import tiny_gpt2, train_tokenizer\n"
        "from dd_prompting import DecomposedSolver, local_lm\n"
        "tokenizer = train_tokenizer(['Question: Tom has 3 apples. Answer: 3'] * 10)\n"
        "lm = local_lm(tiny_gpt2(tokenizer), tokenizer=tokenizer, max_new_tokens=3)\n"
        "with dspy.context(lm=lm):\n"
        "    DecomposedSolver('question -> answer: float', demos=None)(question='Tom has 3 apples?')\n"
        "print(sorted(m for m in sys.modules if m.startswith(('dd_prompting.distill', 'dd_prompting.evals'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]"]


def test_fine_tuning_a_local_lm_without_a_provider_says_which_to_give_it():
    from dspy.clients.utils_finetune import TrainDataFormat

    from dd_prompting.distill import TransformersProvider

    tokenizer = train_tokenizer(["Question: Tom has 3 apples. Answer: 3"] * 10)
    lm = local_lm(tiny_gpt2(tokenizer), tokenizer=tokenizer, max_new_tokens=3)
    with pytest.raises(ValueError, match=r"lm.provider = TransformersProvider\(\) \(from dd_prompting.distill\)"):
        lm.finetune([], TrainDataFormat.CHAT)
    assert local_lm(tiny_gpt2(tokenizer), tokenizer=tokenizer, provider=TransformersProvider()).provider.finetunable


def test_batching_and_device_settings_reach_the_engine_and_survive_copy_and_save(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model.save_pretrained(tmp_path / "tuned")
    tokenizer.save_pretrained(tmp_path / "tuned")
    lm = local_lm(tmp_path / "base", max_new_tokens=5, device="cpu", max_batch_size=3, max_batch_tokens=999,
                  cache=False)
    settings = {"max_new_tokens": 5, "device": "cpu", "max_batch_size": 3, "max_batch_tokens": 999}
    assert lm.engine.serving_settings() == settings
    # What DSPy fine-tuning hands back: the same LM on new weights, served the same way.
    tuned = lm.copy(model=f"local/{tmp_path / 'tuned'}")
    assert tuned.engine is not lm.engine and tuned.engine.serving_settings() == settings
    program = dspy.Predict("question -> answer")
    program.set_lm(lm)
    program.save(tmp_path / "program.json")
    loaded = dspy.Predict("question -> answer")
    loaded.load(tmp_path / "program.json", allow_unsafe_lm_state=True)
    assert loaded.lm.engine.serving_settings() == settings


def test_a_program_saved_by_0_1_0_loads_through_the_old_module_path_with_a_warning(tiny, tmp_path):
    import json

    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    program = dspy.Predict("question -> answer")
    program.set_lm(local_lm(tmp_path / "base", max_new_tokens=4, cache=False))
    program.save(tmp_path / "program.json")
    saved = (tmp_path / "program.json").read_text()
    assert "dd_prompting.local.engine:TransformersEngine" in saved
    # 0.1.0 kept the engine in dd_prompting/local_lm.py, and its saved programs name that path.
    (tmp_path / "old.json").write_text(saved.replace("dd_prompting.local.engine:", "dd_prompting.local_lm:"))
    loaded = dspy.Predict("question -> answer")
    with pytest.warns(DeprecationWarning, match=r"moved to dd_prompting\.local\.engine\.TransformersEngine"):
        loaded.load(tmp_path / "old.json", allow_unsafe_lm_state=True)
    assert isinstance(loaded.lm.engine, TransformersEngine)
    assert json.loads(saved)  # the file is what DSPy wrote, not hand-made


def test_local_lm_is_the_function_after_the_deprecated_module_is_imported():
    code = ("import importlib, dd_prompting; importlib.import_module('dd_prompting.local_lm'); "
            "from dd_prompting import local_lm; print(callable(local_lm))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True"]
