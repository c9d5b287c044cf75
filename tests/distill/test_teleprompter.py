"""`DecompositionDistillation`: a DecomposedSolver program compiled into local students, offline.

The teacher is the scripted server of examples/distill_program_offline.py (DecomposedSolver's calls
answered with the generator's exact decompositions); the session's compiled students are made in
conftest.py.
"""

import json
import threading

import dspy
import pytest
from distill_program_offline import as_examples, scripted_teacher
from distilled_students import SEED, distillation

from dd_prompting import DecomposedSolver, numeric_match
from dd_prompting.distill.students.modules import DecomposerModule, StudentModule
from dd_prompting.testing import OpenAICompatibleServer, output_fields

PASS_BAR = 0.5  # as in test_students.py: under the lowest accuracy measured over seeds 0-2


def accuracy(program, examples) -> float:
    predictions = program.batch(examples)
    return sum(bool(numeric_match(e, p)) for e, p in zip(examples, predictions)) / len(examples)


@pytest.mark.slow
def test_the_compiled_pair_beats_the_untrained_students(distilled, generator_problems, generator_teacher, tmp_path):
    train, held_out = generator_problems
    valset = as_examples(held_out)
    compiled = accuracy(distilled.program, valset)

    # The same pipeline stopped after one training step per student: the students before compile.
    untrained = distillation(generator_teacher.lm, tmp_path / "untrained", distilled.cache_dir, train_cot=False,
                             decomposer={"max_steps": 1}, solver={"max_steps": 1}).compile(
        DecomposedSolver("question -> answer: float"), trainset=as_examples(train[:200]))
    before = accuracy(untrained, valset)
    assert compiled >= PASS_BAR and compiled > before + 0.3, (before, compiled)

    # The report of the same held-out problems says the same, with its interval.
    evaluation = json.loads((distilled.run_dir / "eval" / "evaluation.json").read_text())
    assert evaluation["pair"]["correct"] == round(compiled * len(valset)) and evaluation["problems"] == len(valset)
    assert "student pair" in (distilled.run_dir / "report.md").read_text()


def test_compile_trains_the_students_side_by_side_with_a_share_of_the_threads_each(distilled):
    import torch

    threads = {role: json.loads((distilled.run_dir / "students" / role / "student.json").read_text())["train_stats"][
        "torch_threads"] for role in ("decomposer", "solver", "cot")}
    # The solver (1,000 steps) beside the decomposer (600) then the CoT student (40): each side has 200 steps or more.
    total = torch.get_num_threads()
    if total >= 2:
        assert threads == {"solver": total - total // 2, "decomposer": total // 2, "cot": total // 2}, threads
    else:
        assert threads == {"solver": 1, "decomposer": 1, "cot": 1}, threads


def test_the_compiled_program_is_a_dspy_program(distilled, generator_problems, tmp_path):
    _, held_out = generator_problems
    examples = as_examples(held_out[:6])
    program = distilled.program
    assert isinstance(program, StudentModule)
    one = program(question=examples[0].question)
    assert isinstance(one.answer, float) and one.subquestions and one.reasoning.startswith(one.subquestions[0])
    # batch decodes the problems together and gives what one call at a time gives.
    assert [p.answer for p in program.batch(examples)] == [program(question=e.question).answer for e in examples]
    score = dspy.Evaluate(devset=examples, metric=numeric_match, num_threads=2, display_progress=False)(program).score
    assert score == pytest.approx(100 * accuracy(program, examples))

    program.save(tmp_path / "program.json")
    assert "students" in json.loads((tmp_path / "program.json").read_text())
    reloaded = StudentModule(signature="question -> answer: float")
    reloaded.load(tmp_path / "program.json")
    assert [p.toDict() for p in reloaded.batch(examples)] == [p.toDict() for p in program.batch(examples)]


def test_an_empty_program_says_how_to_load_its_students():
    with pytest.raises(RuntimeError, match="no students yet"):
        StudentModule(signature="question -> answer")(question="What is 2 + 2?")


def test_hybrid_keeps_the_teacher_as_the_solver_and_reuses_the_run(distilled, generator_problems, generator_teacher,
                                                                   monkeypatch):
    from dd_prompting.distill.training import trainer as train

    _, held_out = generator_problems
    calls_before = len(generator_teacher.server.requests)
    # The run already has traces and a decomposer with these settings: nothing is asked or trained again.
    monkeypatch.setattr(train, "Trainer", None)
    hybrid = distillation(generator_teacher.lm, distilled.run_dir, distilled.cache_dir, hybrid=True).compile(
        DecomposedSolver("question -> answer: float"), trainset=as_examples(generator_problems[0]))
    assert len(generator_teacher.server.requests) == calls_before
    assert isinstance(hybrid.decompose, DecomposerModule)

    problem = held_out[0]
    prediction = hybrid(question=problem.question)
    asked = [output_fields(request) for request in generator_teacher.server.requests[calls_before:]]
    assert asked == [["subanswers", "answer"]]  # the sub-questions came from the student, the rest from the teacher
    assert prediction.subquestions == list(problem.subquestions)
    assert prediction.answer == float(problem.gold)


def test_dd_distill_evaluates_a_compiled_run_but_leaves_its_traces_to_compile(distilled, capsys):
    from dd_prompting.distill.run.cli import main

    assert main(["evaluate", "--run-dir", str(distilled.run_dir), "--quiet"]) == 0
    assert "student pair" in capsys.readouterr().out
    assert main(["traces", "--run-dir", str(distilled.run_dir), "--quiet"]) == 2
    assert "DecompositionDistillation.compile" in capsys.readouterr().err


def test_compile_refuses_another_trainset_in_the_same_run_dir(distilled, generator_problems, generator_teacher):
    from dd_prompting.config import ConfigError

    train, _ = generator_problems
    with pytest.raises(ConfigError, match="another trainset"):
        distillation(generator_teacher.lm, distilled.run_dir, distilled.cache_dir).compile(
            DecomposedSolver("question -> answer: float"), trainset=as_examples(train[:10]))


def test_an_answer_not_of_the_fields_type_is_refused_naming_the_example(tmp_path):
    from dd_prompting.distill.run.teleprompter import DecompositionDistillation

    trainset = [dspy.Example(question="Is the sky blue?", answer="yes").with_inputs("question")]
    with pytest.raises(ValueError, match=r"trainset\[0\]\.answer = 'yes' is not a number"):
        DecompositionDistillation(teacher=dspy.LM("openai/x"), run_dir=tmp_path).compile(
            DecomposedSolver("question -> answer"), trainset=trainset)


# --- a killed compile -------------------------------------------------------------------------------


def _join_teacher_threads():
    # What a killed process would not do: let the calls in flight return (and be cached) before resuming.
    for thread in threading.enumerate():
        if thread.name.startswith("teacher"):
            thread.join(timeout=60)


def test_a_killed_compile_resumes_without_repeating_a_teacher_call(generator_problems, tmp_path, monkeypatch):
    from dd_prompting.distill.run import cli
    from dd_prompting.distill.teach import traces
    from dd_prompting.distill.training import trainer as train

    problems = generator_problems[0][:40]
    trainset = as_examples(problems)
    small = dict(train_cot=False, train={"tiny_layers": 1, "tiny_hidden": 32, "tiny_heads": 2, "save_steps": 2},
                 decomposer={"max_steps": 4}, solver={"max_steps": 4})
    with OpenAICompatibleServer(scripted_teacher(problems)) as server:
        lm = dspy.LM("openai/scripted", api_base=server.base_url, api_key="offline", cache=False)

        def compile_once():
            return distillation(lm, tmp_path / "run", tmp_path / "cache", **small).compile(
                DecomposedSolver("question -> answer: float"), trainset=trainset)

        # Killed while the teacher works: after 10 traces were written.
        written = traces.TraceWriter.write
        counter = {"n": 0}

        def write_then_die(self, trace):
            if counter["n"] == 10:
                raise KeyboardInterrupt
            counter["n"] += 1
            written(self, trace)

        monkeypatch.setattr(traces.TraceWriter, "write", write_then_die)
        with pytest.raises(KeyboardInterrupt):
            compile_once()
        _join_teacher_threads()
        monkeypatch.undo()
        assert len((tmp_path / "run" / "traces.jsonl").read_text().splitlines()) == 10

        # Killed again while the first student trains.
        def train_then_die(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(train, "train_student", train_then_die)
        with pytest.raises(KeyboardInterrupt):
            compile_once()
        monkeypatch.undo()
        asked = len(server.requests)

        # dd-distill finishes the run the teleprompter started, with no teacher call.
        assert cli.main(["run", "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
        assert len(server.requests) == asked
        # ...and compile finds it done: the same students, no call, no training.
        monkeypatch.setattr(train, "Trainer", None)
        program = compile_once()
        assert isinstance(program, StudentModule) and len(server.requests) == asked

    # Every call was made once: 2 per problem (decompose, solve), none repeated across the three runs.
    bodies = [json.dumps(request["messages"], sort_keys=True) for request in server.requests]
    assert len(bodies) == 2 * len(problems) and len(set(bodies)) == len(bodies)
    lines = [json.loads(line) for line in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted({line["id"] for line in lines})
    assert len(lines) == len(problems) and all(line["correct"] for line in lines)
    assert SEED == json.loads((tmp_path / "run" / "config.json").read_text())["student"]["seed"]


# --- yes/no answers ---------------------------------------------------------------------------------


def yes_no_problems(problems):
    """The generator's problems with a yes/no question on their result, and one more step answering it."""
    from dd_prompting.data.problems import Problem

    made = []
    for index, problem in enumerate(problems):
        threshold = int(float(problem.gold)) + (1 if index % 2 else -1)
        more = float(problem.gold) > threshold
        gold = "yes" if more else "no"
        made.append(Problem(
            id=problem.id, question=f"{problem.question} Is it more than {threshold}?", gold=gold,
            subquestions=(*problem.subquestions, f"Is {problem.gold} more than {threshold}?"),
            steps=(*problem.steps, f"{problem.gold} is {'more' if more else 'not more'} than {threshold}, so {gold}."),
        ))
    return made


def test_a_yes_no_program_compiles_into_students_that_answer_yes_or_no(generator_problems, tmp_path):
    from dd_prompting.answers import INVALID

    train, held_out = (yes_no_problems(part) for part in (generator_problems[0][:300], generator_problems[1][:20]))
    examples = [[dspy.Example(question=p.question, answer=p.gold == "yes").with_inputs("question") for p in part]
                for part in (train, held_out)]
    small = dict(train_cot=True, train={"tiny_layers": 1, "tiny_hidden": 32, "tiny_heads": 2, "save_steps": 1000},
                 decomposer={"max_steps": 20}, solver={"max_steps": 20}, cot={"max_steps": 20})
    with OpenAICompatibleServer(scripted_teacher(train + held_out)) as server:
        lm = dspy.LM("openai/scripted", api_base=server.base_url, api_key="offline", cache=False)
        program = distillation(lm, tmp_path / "run", tmp_path / "cache", **small).compile(
            DecomposedSolver("question -> answer: bool"), trainset=examples[0], valset=examples[1])

    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["answer_type"] == "yes_no"
    traces = [json.loads(line) for line in (run / "traces.jsonl").read_text().splitlines()]
    assert {t["answer"] for t in traces} == {"yes", "no"} and all(t["correct"] for t in traces)
    assert (run / "problems.jsonl").read_text().count("#### yes") == sum(p.gold == "yes" for p in train)
    # The students answer True, False or None (no option named), never a number.
    predictions = program.batch(examples[1])
    assert {type(p.answer) for p in predictions} <= {bool, type(None)}
    evaluation = json.loads((run / "eval" / "evaluation.json").read_text())
    assert evaluation["problems"] == len(held_out) and {"pair", "cot", "teacher"} <= set(evaluation)
    rows = [json.loads(line) for line in (run / "eval" / "results.jsonl").read_text().splitlines()]
    assert {row["gold"] for row in rows} == {"yes", "no"}
    assert all(row["parse_status"] in ("ok", "no_option") for row in rows)
    assert all((row["prediction"] == INVALID) == (row["parse_status"] == "no_option") for row in rows)


def test_resume_finishes_a_killed_dd_distill_run_and_returns_its_students(tmp_path, monkeypatch):
    from dd_prompting.distill.training import trainer as train
    from dd_prompting.distill.run.cli import main
    from dd_prompting.distill.run.teleprompter import DecompositionDistillation

    tiny = ["--student.tiny_layers", "1", "--student.tiny_hidden", "32", "--student.tiny_heads", "2",
            "--decomposer.max_steps", "3", "--solver.max_steps", "3", "--cot.max_steps", "3"]
    run_dir = tmp_path / "run"
    monkeypatch.setattr(train, "train_student", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["run", "--run-dir", str(run_dir), "--data.train_problems", "30", "--data.eval_problems", "8",
                 "--quiet", *tiny]) == 130  # killed in the train stage
    monkeypatch.undo()

    program = DecompositionDistillation.resume(run_dir)
    assert isinstance(program, StudentModule)
    evaluation = json.loads((run_dir / "eval" / "evaluation.json").read_text())
    problems = [json.loads(line) for line in (run_dir / "heldout.jsonl").read_text().splitlines()]
    examples = [dspy.Example(question=p["question"], answer=p["answer"].rpartition("####")[2].strip())
                .with_inputs("question") for p in problems]
    solved = sum(bool(numeric_match(e, p)) for e, p in zip(examples, program.batch(examples)))
    assert solved == evaluation["pair"]["correct"] and len(examples) == evaluation["problems"] == 8
    assert json.loads((run_dir / "stages.json").read_text()).keys() == {"traces", "build", "train", "evaluate"}
