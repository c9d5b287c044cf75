#!/usr/bin/env bash
# Install dd-prompting the way users do, not editable: build a wheel from the committed tree (what
# `pip install git+...` builds), install it into a fresh virtual environment (the CPU torch wheel first,
# then the pinned dependencies), and check it from outside the source tree (scripts/check_installed.py).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/venv"
pip() { "$work/venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install "torch==2.13.0"
# The wheel is built from HEAD through git, so a file that is not committed can't make it pass.
pip wheel --no-deps -w "$work/dist" "git+file://$repo@$(git rev-parse HEAD)"
pip install -c constraints.txt "$work"/dist/dd_prompting-*.whl
cd "$work" && "$work/venv/bin/python" "$repo/scripts/check_installed.py"
