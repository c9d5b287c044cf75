"""Compile a DecomposedSolver program into a local decomposer and solver with DecompositionDistillation, offline.

    .venv/bin/python examples/distill_program_offline.py                          # the offline default
    .venv/bin/python examples/distill_program_offline.py --teacher openai/gpt-4o-mini --student gpt2

The problems are the built-in generator's short word problems (2-3 steps, small numbers), as
`dspy.Example`s. Offline, the teacher is a scripted OpenAI-compatible server on 127.0.0.1 that
answers DecomposedSolver's calls with each problem's exact decomposition (a stand-in for an API
model; `--teacher` takes any litellm model string, its key from the usual variable). The students
are tiny GPT-2s built from a config (`--student` takes a hub id or a directory). The run lives in
`--run-dir`: running the script again resumes it, with no teacher call or training step repeated.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import dspy

from dd_prompting import DecomposedSolver, numeric_match
from dd_prompting.distill.teach.generator import GeneratorConfig
from dd_prompting.distill.teach.problem_sources import generated_problems
from dd_prompting.distill import DecompositionDistillation, StudentModule
from dd_prompting.testing import OpenAICompatibleServer, chat_reply, input_field, output_fields

# Small numbers and 2-3 steps: a tiny student pair learns these in about a minute of CPU.
EASY = GeneratorConfig(min_steps=2, max_steps=3, max_value=60, max_operand=20, max_factor=3)
# Steps per student: at 600 the decomposer wrote the exact sub-questions of every held-out problem in
# tests/distill/test_students.py; the solver's arithmetic appears late and suddenly (docs/offline_learning.md).
STEPS = {"decomposer": 600, "solver": 1000}


def problem_sets(seed: int, train: int = 2000, held_out: int = 100):
    """Training and held-out generator problems (disjoint arithmetic)."""
    train_problems = generated_problems(train, seed=seed, config=EASY, id_prefix="train")
    held_out_problems = generated_problems(held_out, seed=seed + 1, config=EASY, exclude=train_problems,
                                           id_prefix="heldout")
    return train_problems, held_out_problems


def as_examples(problems) -> list[dspy.Example]:
    return [dspy.Example(question=p.question, answer=float(p.gold)).with_inputs("question") for p in problems]


def scripted_teacher(problems):
    """A responder for `OpenAICompatibleServer`: DecomposedSolver's calls answered with the exact decompositions."""
    by_question = {p.question: p for p in problems}

    def respond(request) -> str:
        problem = by_question[input_field(request, "question")]
        values = {"subquestions": list(problem.subquestions), "subanswers": list(problem.steps), "answer": problem.gold}
        return chat_reply({name: values[name] for name in output_fields(request) if name in values})

    return respond


def accuracy(program, examples) -> tuple[int, int]:
    predictions = program.batch(examples)
    return sum(bool(numeric_match(example, prediction)) for example, prediction in zip(examples, predictions)), len(examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="A litellm model string (default: the offline scripted teacher).")
    parser.add_argument("--student", default="tiny", help="The students' base model: 'tiny', a hub id or a directory.")
    parser.add_argument("--run-dir", default="runs/distill_program_offline", help="Where the run lives.")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the problems and the students.")
    args = parser.parse_args()

    train, held_out = problem_sets(args.seed)
    trainset, valset = as_examples(train), as_examples(held_out)
    server = OpenAICompatibleServer(scripted_teacher(train + held_out)) if args.teacher is None else nullcontext()
    with server:
        teacher = (dspy.LM(args.teacher) if args.teacher else
                   dspy.LM("openai/scripted", api_base=server.base_url, api_key="offline", cache=False))
        distill = DecompositionDistillation(
            teacher=teacher, student=args.student, run_dir=args.run_dir, seed=args.seed, cache_dir="none",
            train={"logging_steps": 100, "save_steps": 200},
            decomposer={"max_steps": STEPS["decomposer"]}, solver={"max_steps": STEPS["solver"]},
        )
        students = distill.compile(DecomposedSolver("question -> answer: float"), trainset=trainset, valset=valset)

    print("held-out, the compiled students: %d/%d" % accuracy(students, valset))
    print(f"report with intervals: {args.run_dir}/report.md")
    students.save(f"{args.run_dir}/program.json")
    reloaded = StudentModule(signature="question -> answer: float")  # the saved state names the students' directories
    reloaded.load(f"{args.run_dir}/program.json")
    print("held-out, reloaded from program.json: %d/%d" % accuracy(reloaded, valset))


if __name__ == "__main__":
    main()
