"""A pair of students compiled once per session by `DecompositionDistillation`, shared by the student tests.

The teacher is the scripted server of examples/distill_program_offline.py, which answers
DecomposedSolver's calls with the generator's exact decompositions; the problems are the example's
(2-3 steps, small numbers). `DD_LEARNING_SEED=1` (2, 3, 4) reruns with other problems and another
student init; the measured results per seed are in test_students.py.
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import dspy
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from distill_program_offline import as_examples, problem_sets, scripted_teacher  # noqa: E402

from distilled_students import SEED, distillation  # noqa: E402


@pytest.fixture(scope="session")
def generator_problems():
    """(training, held-out) generator problems with their exact decompositions."""
    return problem_sets(SEED)


@pytest.fixture(scope="session")
def generator_teacher(generator_problems):
    """The scripted teacher server, and a `dspy.LM` that calls it."""
    from dd_prompting.testing import OpenAICompatibleServer

    train, held_out = generator_problems
    with OpenAICompatibleServer(scripted_teacher(train + held_out)) as server:
        lm = dspy.LM("openai/scripted", api_base=server.base_url, api_key="offline", cache=False)
        yield SimpleNamespace(server=server, lm=lm)


@pytest.fixture(scope="session")
def distilled(tmp_path_factory, generator_problems, generator_teacher):
    """The compiled students: the program, its run directory, and the teacher calls compiling took."""
    from dd_prompting import DecomposedSolver

    train, held_out = generator_problems
    root = tmp_path_factory.mktemp("distilled")
    program = distillation(generator_teacher.lm, root / "run", root / "cache").compile(
        DecomposedSolver("question -> answer: float"), trainset=as_examples(train), valset=as_examples(held_out))
    return SimpleNamespace(program=program, run_dir=root / "run", cache_dir=root / "cache",
                           teacher_calls=len(generator_teacher.server.requests))
