"""The local engine's batching, measured side by side in one run against bare `model.generate`.

1. `dspy.Evaluate` with `DecomposedSolver` (joint, GSM8K test problems, `max_new_tokens`=64) on a local
   model at `num_threads=8` vs `num_threads=1`: the engine's speed-up from batching across callers;
2. bare `model.generate` on 8 of the same prompts (the decomposition prompts, as the engine renders
   them) at batch 8 vs 8 calls at batch 1, exactly 64 new tokens each: the speed-up batching can give;
3. their ratio (claim, on SmolLM2: at least 0.8 of the bare speed-up);
4. prefill time per request with the 3 built-in demos: a batch of 8 whose shared prefix is encoded
   once vs each prompt encoded whole.

Each configuration gets a fresh engine (no prompt prefix kept from a run before it) on the same
loaded weights.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_local_engine.py                 # SmolLM2-135M, 32 problems
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_local_engine.py --model tiny    # a 2-layer GPT-2 (no target)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def load(name: str):
    if name == "smollm2":
        from dd_prompting.local import smollm2_gguf_path
        from dd_prompting.model_loading import load_pretrained

        path = smollm2_gguf_path()
        return load_pretrained(path.parent, gguf_file=path.name)
    from dd_prompting import load_gsm8k
    from tiny_models import tiny_gpt2, train_tokenizer

    tokenizer = train_tokenizer([example.question for example in load_gsm8k("train", limit=400)], vocab_size=800)
    return tiny_gpt2(tokenizer, n_positions=2048).eval(), tokenizer


def evaluate_seconds(model, tokenizer, devset, *, threads: int, max_new_tokens: int) -> tuple[float, list]:
    import dspy

    from dd_prompting import DecomposedSolver, TransformersEngine, numeric_match

    engine = TransformersEngine(model, tokenizer, max_new_tokens=max_new_tokens)
    lm = dspy.LM("local/bench", engine=engine, async_engine=engine.async_twin, cache=False)
    program = DecomposedSolver("question -> answer: float")
    started = time.perf_counter()
    with dspy.context(lm=lm):
        result = dspy.Evaluate(devset=devset, metric=numeric_match, num_threads=threads, display_progress=False,
                               provide_traceback=False)(program)
    seconds = time.perf_counter() - started
    answers = [(str(prediction.get("answer")) if prediction else None) for _, prediction, _ in result.results]
    engine.close()
    return seconds, engine.scheduler.batch_sizes, answers


def decomposition_prompts(tokenizer, devset, count: int) -> list[str]:
    from dd_prompting import DecomposedSolver
    from dd_prompting.plain_text_adapter import render_plain_text

    program = DecomposedSolver("question -> answer: float")
    predictor = program.decompose
    return [render_plain_text(predictor.signature, predictor.demos, {"question": example.question}).text(tokenizer)
            for example in devset[:count]]


def generate_seconds(model, tokenizer, prompts: list[str], *, batch: int, new_tokens: int) -> float:
    import torch

    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            encoded = tokenizer(prompts[start:start + batch], return_tensors="pt", padding=True,
                                add_special_tokens=False)
            model.generate(**encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=pad)
    return time.perf_counter() - started


def prefill_seconds(model, tokenizer, prompts: list[str], *, shared: bool) -> float:
    """Time to the first new token of a batch of prompts, with the shared prefix encoded once or not."""
    from dd_prompting.local.prefix_cache import PrefixCache
    from dd_prompting.local.scheduler import BatchScheduler

    scheduler = BatchScheduler(model, tokenizer, max_batch_size=len(prompts),
                               max_batch_tokens=10 ** 9, prefix_cache=PrefixCache(size=0))
    ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    if not shared:  # a different first token per prompt: nothing is shared
        ids = [[index % 50 + 1, *row] for index, row in enumerate(ids)]
    started = time.perf_counter()
    with scheduler.held():
        futures = [scheduler.submit(row, max_new_tokens=1) for row in ids]
    for future in futures:
        future.result()
    seconds = time.perf_counter() - started
    scheduler.close()
    return seconds / len(prompts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    import logging

    import torch

    from dd_prompting import load_gsm8k

    logging.getLogger("dspy").setLevel(logging.CRITICAL)  # per-example errors and truncation notes
    torch.manual_seed(0)
    model, tokenizer = load(args.model)
    devset = load_gsm8k("test", limit=args.problems)
    print(f"model {args.model}, {args.problems} GSM8K problems, DecomposedSolver joint, "
          f"max_new_tokens={args.max_new_tokens}, torch threads {torch.get_num_threads()}", flush=True)

    one, _, answers_one = evaluate_seconds(model, tokenizer, devset, threads=1, max_new_tokens=args.max_new_tokens)
    print(f"Evaluate num_threads=1: {one:7.1f} s", flush=True)
    many, sizes, answers_many = evaluate_seconds(model, tokenizer, devset, threads=args.threads,
                                                 max_new_tokens=args.max_new_tokens)
    mean = sum(sizes) / len(sizes)
    print(f"Evaluate num_threads={args.threads}: {many:7.1f} s  ({len(sizes)} batches, mean size {mean:.1f})")
    same = sum(a == b for a, b in zip(answers_one, answers_many))
    print(f"same answers at both thread counts: {same}/{len(answers_one)}")
    engine_speedup = one / many

    prompts = decomposition_prompts(tokenizer, devset, args.threads)
    bare_one = generate_seconds(model, tokenizer, prompts, batch=1, new_tokens=args.max_new_tokens)
    bare_many = generate_seconds(model, tokenizer, prompts, batch=args.threads, new_tokens=args.max_new_tokens)
    bare_speedup = bare_one / bare_many
    print(f"bare generate, {len(prompts)} prompts x {args.max_new_tokens} tokens: batch 1 {bare_one:.1f} s, "
          f"batch {args.threads} {bare_many:.1f} s")
    print(f"speed-up: engine {engine_speedup:.2f}x, bare generate {bare_speedup:.2f}x, "
          f"engine / bare = {engine_speedup / bare_speedup:.2f}")

    whole = prefill_seconds(model, tokenizer, prompts, shared=False)
    shared = prefill_seconds(model, tokenizer, prompts, shared=True)
    print(f"prefill per request, {len(prompts)} prompts with 3 demos: re-encoded {1000 * whole:.0f} ms, "
          f"shared prefix {1000 * shared:.0f} ms ({whole / shared:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
