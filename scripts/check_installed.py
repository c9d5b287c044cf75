"""Check an installed dd-prompting from outside the source tree: every module imports, the commands answer
`--help`, and a DecomposedSolver runs on DSPy's DummyLM.

    python scripts/check_installed.py        # run by scripts/check_install.sh in a fresh venv, from /tmp

It fails if the interpreter would import the package from a source checkout rather than from site-packages.
"""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("dd_prompting", "dd_prompting.distill", "dd_prompting.evals")


def main() -> int:
    import dd_prompting

    where = Path(dd_prompting.__file__).resolve()
    if "site-packages" not in where.parts:
        print(f"dd_prompting was imported from {where}, not from an installed copy", file=sys.stderr)
        return 1
    modules = set()
    for name in PACKAGES:
        package = importlib.import_module(name)
        modules.add(name)
        modules.update(info.name for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."))
    for name in sorted(modules):
        if name.rpartition(".")[2] != "__main__":  # that one runs the command
            importlib.import_module(name)  # an ImportError names what the wheel lacks
    data = Path(dd_prompting.__file__).parent / "data" / "gsm8k"
    missing = [name for name in ("train.jsonl", "test.jsonl", "test_socratic.jsonl", "LICENSE")
               if not (data / name).is_file()]
    if missing:
        print(f"package data missing from {data}: {missing}", file=sys.stderr)
        return 1
    for command in ("dd-distill", "dd-evals"):
        path = shutil.which(command) or str(Path(sys.executable).parent / command)
        subprocess.run([path, "--help"], check=True, capture_output=True, text=True, timeout=120)

    import dspy
    from dspy.utils import DummyLM

    from dd_prompting import DecomposedSolver

    lm = DummyLM([{"subquestions": '["How many apples in all?"]'},
                  {"subanswers": '["3 + 4 = 7"]', "answer": "7"}])
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        prediction = DecomposedSolver("question -> answer: float")(question="Tom has 3 apples and buys 4. How many?")
    if prediction.answer != 7.0 or prediction.subquestions != ["How many apples in all?"]:
        print(f"DecomposedSolver on DummyLM gave {prediction}", file=sys.stderr)
        return 1
    print(f"installed dd-prompting {dd_prompting.__version__}: {len(modules)} modules import, both commands answer "
          f"--help, DecomposedSolver answered {prediction.answer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
