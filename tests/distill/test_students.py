"""The student pipeline: it learns, batching and the key/value cache change nothing, DSPy can run it,
its final answer is the last step's result, and loading it imports no training code."""

import json
import subprocess
import sys
import textwrap

import dspy
import pytest

from dd_prompting.answers import INVALID, answers_match, numeric_match
from dd_prompting.distill.rows.build import build_rows
from dd_prompting.distill.rows.format import row_text
from dd_prompting.distill.teach.generator import generate_problems
from dd_prompting.distill.students.pipelines import (
    CoTResult,
    CoTStudent,
    DecomposerStudent,
    StudentPipeline,
    StudentResult,
)
from dd_prompting.distill.students.modules import DecomposerModule, StudentModule
from dd_prompting.distill.training.train_config import TrainConfig
from distill_program_offline import EASY  # examples/ is on sys.path (conftest.py)

# The students are compiled once per session by DecompositionDistillation (tests/distill/conftest.py):
# 2,000 generator problems of 2-3 steps with small numbers, the `tiny` preset, fixed steps (600
# decomposer, 1,000 solver, 40 CoT). Measured with these settings when the students were trained
# straight from the generator's rows, DD_LEARNING_SEED 0, 1, 2: the decomposer wrote the exact
# sub-questions of 100/100 held-out problems each (at 400 steps seed 2 had 68/100, at 200 seed 0
# had 1/100), and the pair solved 82, 80 and 62/100 (the solver at 650 steps: 38/100 for seed 0);
# compiled through the teleprompter with the fused GELU (tiny_activation), seeds 0, 1, 2 solved 80, 78
# and 67/100 (examples/distill_program_offline.py, one thread). The decomposer's and the solver's skills
# appear late and suddenly (docs/offline_learning.md), so the bar sits under the lowest measured value.
PASS_BAR = 0.5
# The bar must hold for every seed, not one lucky run: DD_LEARNING_SEED=1 (2, 3, 4) reruns the
# session's students with other problems and another student init.


@pytest.fixture(scope="module")
def problems(generator_problems):
    return generator_problems


@pytest.fixture(scope="module")
def students(distilled):
    return distilled.run_dir / "students"


@pytest.fixture(scope="module")
def pipeline(students):
    return StudentPipeline.from_pretrained(students / "decomposer", students / "solver")


@pytest.fixture(scope="module")
def cot(students):
    return CoTStudent.from_pretrained(students / "cot", max_new_tokens=60)


@pytest.mark.slow
def test_student_pair_learns_far_above_chance(pipeline, problems):
    _, held_out = problems
    results = pipeline.solve([p.question for p in held_out], batch_size=50)
    accuracy = sum(answers_match(r.answer, p.gold) for r, p in zip(results, held_out)) / len(held_out)
    decomposed = sum(r.subquestions == list(p.subquestions) for r, p in zip(results, held_out)) / len(held_out)
    assert decomposed > 0.9, decomposed
    assert accuracy >= PASS_BAR, accuracy


def _fields(result):
    return json.dumps(result.__dict__, sort_keys=True)


def test_batched_and_unbatched_pipelines_agree(pipeline, problems):
    questions = [p.question for p in problems[1][:10]]
    one_by_one = pipeline.solve(questions, batch_size=1)
    batched = pipeline.solve(questions, batch_size=4)
    assert all(isinstance(r, StudentResult) for r in batched)
    assert [_fields(r) for r in batched] == [_fields(r) for r in one_by_one]


def test_the_cached_and_the_re_encoding_paths_agree(pipeline, problems):
    questions = [p.question for p in problems[1][10:20]]
    cached = pipeline.solve(questions, batch_size=5)
    re_encoded = pipeline.solve(questions, batch_size=5, reuse_cache=False)
    assert [_fields(r) for r in cached] == [_fields(r) for r in re_encoded]
    assert all(len(r.subanswers) == len(r.subquestions) for r in cached)


def test_batched_and_unbatched_cot_agree(cot, problems):
    questions = [p.question for p in problems[1][:8]]
    batched = cot.solve(questions, batch_size=3)
    assert all(isinstance(r, CoTResult) for r in batched)
    assert [_fields(r) for r in batched] == [_fields(r) for r in cot.solve(questions, batch_size=1)]


def test_sampling_is_seeded(pipeline, problems):
    questions = [p.question for p in problems[1][:4]]
    first = pipeline.solve(questions, temperature=1.0, seed=7)
    again = pipeline.solve(questions, temperature=1.0, seed=7)
    assert [_fields(r) for r in first] == [_fields(r) for r in again]


def test_student_module_runs_under_dspy_evaluate(pipeline, cot, problems):
    examples = [dspy.Example(question=p.question, answer=p.gold).with_inputs("question") for p in problems[1][:4]]
    module = StudentModule(student=pipeline)
    prediction = module(question=examples[0].question)
    [expected] = pipeline.solve([examples[0].question])
    assert prediction.answer == expected.answer
    assert prediction.subquestions == expected.subquestions and prediction.subanswers == expected.subanswers
    assert prediction.fallback is None
    result = dspy.Evaluate(devset=examples, metric=numeric_match, num_threads=2, display_progress=False)(module)
    solved = [answers_match(r.answer, e.answer) for r, e in zip(pipeline.solve([e.question for e in examples]), examples)]
    assert result.score == pytest.approx(100 * sum(solved) / len(solved))

    cot_prediction = StudentModule(student=cot)(question=examples[0].question)
    assert cot_prediction.subquestions == [] and isinstance(cot_prediction.reasoning, str)


def test_a_decomposer_that_writes_nothing_falls_back_to_the_question(pipeline, monkeypatch):
    monkeypatch.setattr(pipeline, "decompose", lambda questions, **kwargs: ["" for _ in questions])
    question = "Ann has 3 apples. She buys 5 more. How many apples does Ann have?"
    [result] = pipeline.solve([question])
    assert result.subquestions == ["How many apples does Ann have?"]
    assert result.fallback and "no sub-questions" in result.fallback
    assert len(result.subanswers) == 1


def test_a_decomposer_student_writes_the_sub_questions_of_a_decomposed_solver(students, problems):
    import asyncio

    from dspy.utils import DummyLM

    from dd_prompting import DecomposedSolver

    _, held_out = problems
    question = held_out[0].question
    program = DecomposedSolver("problem -> answer: float", demos=None)  # any one input field's name
    program.decompose = DecomposerModule(DecomposerStudent.from_pretrained(students / "decomposer"))
    with dspy.context(lm=DummyLM([{"subanswers": ["..."], "answer": "1"}] * 2)):
        pred = program(problem=question)
        again = asyncio.run(program.acall(problem=question))
    # The trained decomposer writes this problem's own sub-questions, the same through forward and acall.
    assert pred.subquestions == again.subquestions == list(held_out[0].subquestions)
    assert [name for name, _ in program.named_predictors()] == ["solve", "direct"]
    with pytest.raises(ValueError, match="reads one problem"):
        program.decompose(problem=question, hint="none")


def test_students_are_loaded_for_their_own_role(students):
    with pytest.raises(ValueError, match="'solver' student, not a 'decomposer'"):
        StudentPipeline.from_pretrained(students / "solver", students / "decomposer")
    with pytest.raises(ValueError, match="not a 'cot'"):
        CoTStudent.from_pretrained(students / "solver")


def test_student_module_rejects_other_objects():
    with pytest.raises(TypeError, match="StudentPipeline or a CoTStudent"):
        StudentModule(student="runs/x")


# --- an untrained pair: loading and reading answers, no training needed ----------------------------


@pytest.fixture(scope="module")
def untrained_pair(tmp_path_factory):
    """A decomposer and a solver saved straight from `build_tiny_model` (noise, but real saved students)."""
    from dd_prompting.distill.students.artifacts import save_student
    from dd_prompting.distill.training.modeling import build_tiny_model
    from dd_prompting.distill.training.tokenization import train_number_tokenizer

    rows = build_rows(generate_problems(20, seed=0, config=EASY))
    tokenizer = train_number_tokenizer([row_text(row) for role in rows.values() for row in role], vocab_size=300)
    config = TrainConfig(tiny_layers=1, tiny_hidden=32, tiny_heads=2, max_length=256)
    root = tmp_path_factory.mktemp("untrained")
    for role in ("decomposer", "solver"):
        save_student(build_tiny_model(tokenizer, config), tokenizer, root / role, role=role, base_model="tiny")
    return root


@pytest.fixture(scope="module")
def untrained_pipeline(untrained_pair):
    return StudentPipeline.from_pretrained(untrained_pair / "decomposer", untrained_pair / "solver")


@pytest.mark.parametrize(
    "last_step, answer",
    [
        ("She uses 1/2 + 1/4 = 3/4 cup.", "0.75"),  # read_step_answer read the "3" of "3/4"
        ("Sam reads 60 + 24 = 84 pages in 3 days.", "84"),
        ("It costs $1,200 = $1,200.", "1200"),
        ("She has 12 apples.", "12"),
        ("Nothing here.", INVALID),
    ],
)
def test_the_pair_reads_its_final_answer_with_read_step_result(untrained_pipeline, monkeypatch, last_step, answer):
    pipeline = untrained_pipeline
    monkeypatch.setattr(pipeline, "decompose", lambda questions, **kwargs: ["- How much flour?\n- How much in all?"])
    monkeypatch.setattr(
        pipeline, "answer", lambda questions, plans, **kwargs: ([["She uses 1 cup.", last_step]], [False])
    )
    [result] = pipeline.solve(["Ann uses 1/2 cup of flour and 1/4 cup more. How much flour does she use?"])
    assert result.subquestions == ["How much flour?", "How much in all?"]
    assert result.answer == answer


def test_loading_and_running_a_student_imports_no_training_code(untrained_pair, tmp_path):
    # A fresh interpreter: this test process has imported the Trainer already.
    code = textwrap.dedent(
        f"""
        import json, sys
        from dd_prompting.distill.students.pipelines import StudentPipeline

        pipeline = StudentPipeline.from_pretrained(
            {str(untrained_pair / "decomposer")!r}, {str(untrained_pair / "solver")!r},
            max_decomposition_tokens=8, max_answer_tokens=8,
        )
        [result] = pipeline.solve(["Ann has 3 apples and buys 5 more. How many apples does she have?"])
        names = ["torch", "transformers", "transformers.trainer", "dd_prompting.distill.training.trainer",
                 "dd_prompting.distill.training.collators"]
        print(json.dumps({{name: name in sys.modules for name in names}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["torch"] and loaded["transformers"]  # a model really was loaded and run
    assert not loaded["transformers.trainer"]
    assert not loaded["dd_prompting.distill.training.trainer"]
    assert not loaded["dd_prompting.distill.training.collators"]


@pytest.mark.parametrize(
    "last_step, answer",
    [("8 is not more than 9, so no.", "no"), ("Yes: 12 is more than 10.", "yes"), ("It is 12.", INVALID)],
)
def test_a_yes_no_pair_reads_the_option_its_last_step_names(untrained_pair, monkeypatch, last_step, answer):
    from dd_prompting import AnswerType

    pipeline = StudentPipeline.from_pretrained(untrained_pair / "decomposer", untrained_pair / "solver",
                                               answer_type=AnswerType("yes_no"))
    monkeypatch.setattr(pipeline, "decompose", lambda questions, **kwargs: ["- How many?\n- Is it more than 9?"])
    monkeypatch.setattr(pipeline, "answer", lambda questions, plans, **kwargs: ([["It is 8.", last_step]], [False]))
    [result] = pipeline.solve(["Ann has 3 apples and buys 5 more. Is that more than 9?"])
    assert result.answer == answer
    module = StudentModule(student=pipeline, signature="question -> answer: bool")
    assert module(question="Ann has 3 apples and buys 5 more. Is that more than 9?").answer == {
        "yes": True, "no": False, INVALID: None}[answer]
    with pytest.raises(ValueError, match="read yes_no answers"):
        StudentModule(student=pipeline, signature="question -> answer: float")
