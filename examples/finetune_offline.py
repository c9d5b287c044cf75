"""Distil a DSPy program into a local student with dspy.BootstrapFinetune, offline, in about a minute.

    .venv/bin/python examples/finetune_offline.py                       # the offline default
    .venv/bin/python examples/finetune_offline.py --teacher openai/gpt-4o-mini --student gpt2

The task is small on purpose (name the color a question mentions), so that a GPT-2 built from a
config, with a tokenizer trained on the task's prompts, learns it on a CPU. Offline, the teacher is
a scripted OpenAI-compatible server on 127.0.0.1 that answers correctly (a stand-in for an API
model); `--teacher` takes any litellm model string instead (its key from the usual variable), and
`--student` a hub id or a directory. The student's calls go to `TransformersProvider`, which
fine-tunes it with the transformers Trainer and saves it under `--output-dir`; the compiled
program is saved too and loaded back.
"""

from __future__ import annotations

import argparse
import re
from contextlib import nullcontext
from pathlib import Path

import dspy
from dspy.utils.exceptions import AdapterParseError

from dd_prompting import local_lm
from dd_prompting.distill.training.provider import TransformersProvider, chat_rows
from dd_prompting.testing import OpenAICompatibleServer, last_user_text

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
TEMPLATES = ["Which color is named here: {}?", "Tell me the color in this sentence: the {} car.",
             "What color does this mention? A {} hat.", "Name the color: {} paint.",
             "The door was painted {}. Which color?", "She wore a {} scarf. What color was it?"]
# Every template and color is trained on; held out are combinations never seen.
PAIRS = [(i, j) for i in range(len(TEMPLATES)) for j in range(len(COLORS))]
TRAIN = [(TEMPLATES[i].format(COLORS[j]), COLORS[j]) for i, j in PAIRS if (i + j) % 6]
HELD_OUT = [(TEMPLATES[i].format(COLORS[j]), COLORS[j]) for i, j in PAIRS if (i + j) % 6 == 0]


class NameColor(dspy.Signature):
    """Name the color mentioned in the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def scripted_teacher(request) -> str:
    question = re.search(r"\[\[ ## question ## \]\]\n(.*?)\n", last_user_text(request)).group(1)
    return f"[[ ## answer ## ]]\n{next(c for c in COLORS if c in question)}\n\n[[ ## completed ## ]]"


def exact(example, pred, trace=None) -> bool:
    return (pred.answer or "").strip() == example.answer


def accuracy(program, pairs) -> tuple[int, int]:
    solved = 0
    for question, color in pairs:
        try:
            solved += (program(question=question).answer or "").strip() == color
        except AdapterParseError:  # a reply without DSPy's output fields: wrong
            pass
    return solved, len(pairs)


def tiny_student(directory: Path, *, seed: int = 0) -> Path:
    """A 2-layer GPT-2 built from a config, with a BPE trained on the task's prompts, saved to `directory`."""
    from dd_prompting.distill.training.modeling import build_tiny_model
    from dd_prompting.distill.training.tokenization import train_number_tokenizer
    from dd_prompting.distill.training.train_config import TrainConfig

    adapter = dspy.ChatAdapter()
    calls = [adapter.format_finetune_data(NameColor, [], {"question": q}, {"answer": a}) for q, a in TRAIN + HELD_OUT]
    tokenizer = train_number_tokenizer([r["prompt"] + r["completion"] for r in chat_rows(calls)], vocab_size=400)
    # gelu_new: the activation this example's figures (README) and test bars (tests/distill/test_provider.py)
    # were measured with; with the preset's fused GELU, seed 0 named a color in 5/8 held-out replies, not 7/8.
    config = TrainConfig(tiny_layers=2, tiny_hidden=128, tiny_heads=4, max_length=512, seed=seed,
                         tiny_activation="gelu_new")
    model = build_tiny_model(tokenizer, config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="A litellm model string (default: the offline scripted teacher).")
    parser.add_argument("--student", default=None, help="A hub id or directory (default: a tiny GPT-2 built here).")
    parser.add_argument("--output-dir", default="runs/finetune_offline", help="Where the fine-tuned student goes.")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0, help="Seeds the student's init and its training.")
    args = parser.parse_args()
    output_dir = Path(args.output_dir)

    base = output_dir / f"tiny-base-seed{args.seed}"  # built once: a rerun finds its fine-tuned student, trains nothing
    student_path = args.student or str(base if (base / "config.json").is_file() else tiny_student(base, seed=args.seed))
    student = local_lm(student_path, max_new_tokens=24)
    student.provider = TransformersProvider(output_dir=output_dir)
    program = dspy.Predict(NameColor)
    program.set_lm(student)
    print("held-out before compile: %d/%d" % accuracy(program, HELD_OUT))

    server = OpenAICompatibleServer(scripted_teacher) if args.teacher is None else nullcontext()
    with server:
        teacher = dspy.Predict(NameColor)
        teacher.set_lm(dspy.LM(args.teacher) if args.teacher else
                       dspy.LM("openai/scripted", api_base=server.base_url, api_key="offline", cache=False))
        trainset = [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in TRAIN]
        train_kwargs = {"max_steps": args.max_steps, "batch_size": 8, "learning_rate": 3e-3, "save_steps": 10_000,
                        "seed": args.seed}
        compiled = dspy.BootstrapFinetune(metric=exact, train_kwargs=train_kwargs).compile(
            program, trainset=trainset, teacher=teacher)

    print("held-out after compile:  %d/%d" % accuracy(compiled, HELD_OUT))
    print("fine-tuned student:", compiled.lm.model.removeprefix("local/"))
    compiled.save(output_dir / "program.json")
    reloaded = dspy.Predict(NameColor)
    reloaded.load(output_dir / "program.json", allow_unsafe_lm_state=True)  # the engine class comes from the file
    print("reloaded program:        %d/%d" % accuracy(reloaded, HELD_OUT))


if __name__ == "__main__":
    main()
