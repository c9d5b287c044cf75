"""In-process models through the harness: a transformers model via `local_lm`, and a dd-distill student pair.

Both are tiny and untrained (built in the test, nothing downloaded), so their answers are noise: these
tests check the wiring (rows, parse failures, caching), not accuracy.
"""

import pytest

from dd_prompting.evals.config import EvalConfig
from dd_prompting.evals.harness import Harness
from dd_prompting.result_store import ResultStore

# Local models pick their own adapter (PlainTextAdapter) when none is configured.
pytestmark = pytest.mark.no_adapter

CORPUS = [f"Question: Ann has {i} apples and buys {i + 2} more. How many apples? Answer: {2 * i + 2}"
          for i in range(40)]


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def config_for(tmp_path, problems_file, model, strategies):
    return EvalConfig(
        models=[model], strategies=strategies,
        datasets=[{"kind": "file", "name": "apples", "path": str(problems_file), "question": ["body", "ask"],
                   "id": "id"}],
        limit=3, output_dir=str(tmp_path / "out"), progress=False, plots=False,
    )


def test_a_local_transformers_model_runs_plain_text_and_is_cached(tmp_path, problems_file, tiny_gpt2_dir):
    model = {"name": "tiny", "kind": "local", "model": str(tiny_gpt2_dir), "max_new_tokens": 6}
    strategies = [{"kind": "direct"}, {"kind": "decomposed", "mode": "joint"}]
    config = config_for(tmp_path, problems_file, model, strategies)
    first = Harness(config).run()
    rows = ResultStore(tmp_path / "out" / "results.jsonl").read()
    assert first.failed == 0 and len(rows) == 6 and first.new_calls >= 6
    assert all(row["parse_status"] in ("ok", "no_number", "unparsed") for row in rows)
    assert all(row["cost"] == 0 and row["prompt_tokens"] > 0 for row in rows)
    (tmp_path / "out" / "results.jsonl").unlink()
    again = Harness(config).run()
    # The decomposed strategy falls back to the direct prompt, already cached by the direct strategy.
    assert again.new_calls == 0 and again.cached_calls == first.new_calls + first.cached_calls
    assert [r["prediction"] for r in ResultStore(tmp_path / "out" / "results.jsonl").read()] == \
        [r["prediction"] for r in rows]


def test_a_student_pair_from_a_run_directory(tmp_path, problems_file, student_run_dir):
    model = {"name": "student", "kind": "student", "model": "tiny-pair", "run_dir": str(student_run_dir)}
    config = config_for(tmp_path, problems_file, model, [{"kind": "cot"}])  # a student runs its own pipeline
    first = Harness(config).run()
    rows = ResultStore(tmp_path / "out" / "results.jsonl").read()
    assert first.failed == 0 and [row["strategy"] for row in rows] == ["student"] * 3
    assert all(isinstance(row["subquestions"], list) and row["subquestions"] for row in rows)
    (tmp_path / "out" / "results.jsonl").unlink()
    again = Harness(config).run()
    assert again.new_calls == 0 and again.cached_calls == 3
    assert [r["subanswers"] for r in ResultStore(tmp_path / "out" / "results.jsonl").read()] == \
        [r["subanswers"] for r in rows]


def test_a_missing_student_run_directory_is_named(tmp_path, problems_file):
    model = {"name": "student", "kind": "student", "model": "pair", "run_dir": str(tmp_path / "nowhere")}
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Harness(config_for(tmp_path, problems_file, model, [{"kind": "student"}])).run()


def test_a_local_models_problems_run_concurrently_in_batches_and_serving_settings_are_not_identity(
        tmp_path, problems_file, tiny_gpt2_dir):
    model = {"name": "tiny", "kind": "local", "model": str(tiny_gpt2_dir), "max_new_tokens": 6,
             "max_batch_size": 4, "max_batch_tokens": 4096, "device": "cpu"}
    config = config_for(tmp_path, problems_file, model, [{"kind": "direct"}])
    config.limit, config.threads = 8, 4
    harness = Harness(config)
    summary = harness.run()
    assert summary.failed == 0 and summary.rows_written == 8
    engine = harness.lm_pool.lms["tiny"].engine.route  # the TransformersEngine behind the call cache
    assert engine.serving_settings() == {"max_new_tokens": 6, "device": "cpu", "max_batch_size": 4,
                                         "max_batch_tokens": 4096}
    assert max(engine.scheduler.batch_sizes) > 1  # the 4 workers' calls were decoded together
    # Other serving settings (or none) are the same model: the finished rows count as done.
    del model["max_batch_size"], model["device"]
    again = Harness(config_for(tmp_path, problems_file, model, [{"kind": "direct"}]) )
    again.config.limit = 8
    assert again.run().examples_skipped == 8
