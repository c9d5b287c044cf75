"""Drop `DecomposedSolver` into an existing DSPy program in place of `dspy.ChainOfThought`.

    python examples/drop_in.py                                   # offline: SmolLM2-135M in process
    python examples/drop_in.py --model openai/gpt-4o-mini        # any dspy.LM (API key from the environment)
    python examples/drop_in.py --local gpt2                      # any transformers causal LM, hub id or path

The program below is an ordinary DSPy module that takes its reasoning module as a parameter; the
example runs it on a few GSM8K test problems with `ChainOfThought` and with `DecomposedSolver` in
both modes, and prints accuracy, sub-questions and time. A 135M model's arithmetic is poor: offline,
this shows the wiring and the format a small model keeps, not accuracy.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy  # noqa: E402

from dspy.utils.exceptions import AdapterParseError  # noqa: E402

from dd_prompting import WORKED_EXAMPLES, DecomposedSolver, PlainTextAdapter, load_gsm8k, numeric_match  # noqa: E402


class WordProblemSolver(dspy.Module):
    """An existing DSPy program: it only needs a module that maps a question to an answer."""

    def __init__(self, reasoner: dspy.Module):
        super().__init__()
        self.reason = reasoner

    def forward(self, question: str) -> dspy.Prediction:
        return self.reason(question=question)


def chain_of_thought_with_worked_examples() -> dspy.Module:
    """CoT with the same worked examples DecomposedSolver starts with, so the comparison is fair."""
    cot = dspy.ChainOfThought("question -> answer")
    cot.predict.demos = [
        dspy.Example(question=example.problem, reasoning=" ".join(example.subanswers), answer=example.answer)
        for example in WORKED_EXAMPLES
    ]
    return cot


def build_lm(args) -> dspy.LM:
    if args.model:
        return dspy.LM(args.model)
    from dd_prompting import local_lm, smollm2_lm

    return local_lm(args.local, max_new_tokens=args.max_new_tokens) if args.local else smollm2_lm()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument("--model", help="A dspy.LM model string, e.g. openai/gpt-4o-mini.")
    backend.add_argument("--local", help="A transformers causal LM (hub id or directory) run in process.")
    parser.add_argument("--limit", type=int, default=3, help="How many GSM8K test problems (default 3).")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="Output cap for --local models.")
    args = parser.parse_args(argv)

    lm = build_lm(args)
    small_local = not args.model
    problems = load_gsm8k("test", limit=args.limit)
    strategies = {
        "ChainOfThought": chain_of_thought_with_worked_examples,
        # A str answer holding a number: ask for the math worked examples by name.
        "DecomposedSolver (joint)": lambda: DecomposedSolver("question -> answer", mode="joint", demos="math"),
        "DecomposedSolver (iterative)": lambda: DecomposedSolver("question -> answer", mode="iterative", demos="math"),
    }
    # Small local models cannot follow DSPy's chat format; the plain-text adapter is what they can follow.
    adapter = PlainTextAdapter() if small_local else None
    print(f"Model: {lm.model}   problems: {len(problems)}\n")
    rows = []
    for name, make in strategies.items():
        program = WordProblemSolver(make())
        correct, started = 0, time.perf_counter()
        with dspy.context(lm=lm, adapter=adapter):
            for example in problems:
                try:
                    pred = program(question=example.question)
                except AdapterParseError as err:  # ChainOfThought raises on output it cannot parse
                    pred = dspy.Prediction(answer=None)
                    print(f"[{name}] unparsable output: {str(err).splitlines()[0]}")
                correct += numeric_match(example, pred)
                print(f"[{name}] gold {example.answer:>6}  predicted {str(pred.answer)[:40]!r}")
                for subquestion in getattr(pred, "subquestions", None) or []:
                    print(f"      - {subquestion}")
        rows.append((name, correct, time.perf_counter() - started))
    print("\n| strategy | correct | seconds |\n|---|---|---|")
    for name, correct, seconds in rows:
        print(f"| {name} | {correct}/{len(problems)} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
