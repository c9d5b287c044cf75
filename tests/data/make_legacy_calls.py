"""Write `legacy_calls_0.1.0.jsonl`: the call cache dd-prompting 0.1.0 writes for `legacy_programs.run_programs`.

Run once, at commit 419273a (the last release with `CachedLM`), from the repository root:

    .venv/bin/python tests/data/make_legacy_calls.py

Each line is one cache entry, {"key": ..., "record": ...}, as `CallCache` stored it; the last line
holds the answers the programs gave. Kept as text so a reviewer can read what is in it.
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

import dspy  # noqa: E402

from dd_prompting.models import CachedLM, CallCache, ModelConfig, Pricing, identity_for  # noqa: E402
from dd_prompting.testing import OpenAICompatibleServer  # noqa: E402
from legacy_programs import LEGACY_API_BASE, LEGACY_MODEL, respond, run_programs  # noqa: E402

with tempfile.TemporaryDirectory() as directory, OpenAICompatibleServer(respond) as server:
    cache = CallCache(directory)
    inner = dspy.LM(LEGACY_MODEL, api_base=server.base_url, api_key="x", cache=False, num_retries=0)
    identity = identity_for(ModelConfig(model=LEGACY_MODEL, api_base=LEGACY_API_BASE))
    lm = CachedLM(inner, cache=cache, pricing=Pricing(1e-6, 2e-6, "test"), identity=identity, retries=0)
    answers = run_programs(lm)
    out = Path(__file__).with_name("legacy_calls_0.1.0.jsonl")
    with out.open("w") as handle:
        for key in sorted(cache._cache.iterkeys()):
            handle.write(json.dumps({"key": key, "record": cache.get(key)}, sort_keys=True) + "\n")
        handle.write(json.dumps({"answers": answers}) + "\n")
    print(f"{len(cache)} calls, {server.call_count} requests -> {out}")
