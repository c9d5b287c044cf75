"""DecomposedSolver end to end on a real pretrained small model, offline: SmolLM2-135M-Instruct.

Its arithmetic is poor, so this checks what a small model can do with our plain-text format: produce
sub-questions and a numeric answer, with every parse failure recorded instead of raised.

DSPy's response cache stays on (in the test run's temporary cache directory): both modes send the
same decomposition prompts, so the second mode reuses them, as it would in a user's program, and only
its solving calls run the model. The problems run from threads, as a user's `dspy.Evaluate` would, so the
local engine decodes them in batches (greedy answers are the ones one at a time gives).
"""

from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest

from dd_prompting import INVALID, DecomposedSolver, extract_answer, load_gsm8k

# Local models pick their own adapter (PlainTextAdapter) when none is configured.
pytestmark = [pytest.mark.slow, pytest.mark.no_adapter]
PROBLEMS = 10


@pytest.fixture(scope="module")
def smollm2():
    from dd_prompting import smollm2_lm

    return smollm2_lm(max_new_tokens=120)


@pytest.mark.parametrize("mode", ["joint", "iterative"])
def test_smollm2_decomposes_and_answers_most_gsm8k_problems(smollm2, mode):
    solver = DecomposedSolver("question -> answer", mode=mode, demos="math")  # a str answer holding a number

    def solve(example):
        with dspy.context(lm=smollm2):
            return solver(question=example.question)  # must not raise

    with ThreadPoolExecutor(max_workers=PROBLEMS) as pool:  # all at once: each step decodes as one batch
        predictions = list(pool.map(solve, load_gsm8k("test", limit=PROBLEMS)))
    usable = 0
    for pred in predictions:
        numeric = extract_answer(pred.answer) != INVALID
        usable += bool(pred.subquestions) and numeric
        if not numeric:
            # Whatever went wrong is on the prediction, not lost.
            assert pred.parse_failures or pred.fallback
    assert usable >= 8, f"{mode}: {usable}/{PROBLEMS} problems had sub-questions and a numeric answer"
