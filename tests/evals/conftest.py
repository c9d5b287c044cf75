import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
sys.path.insert(0, str(Path(__file__).parent))  # the scripted model helper

QUESTIONS = [(f"q{i}", f"Ann has {10 + i} apples and buys {i + 1} more. How many apples does she have?", 11 + 2 * i)
             for i in range(10)]


@pytest.fixture
def problems_file(tmp_path: Path) -> Path:
    """Ten problems in a JSONL file, split into `body` and `ask` fields like SVAMP."""
    path = tmp_path / "problems.jsonl"
    with path.open("w") as handle:
        for example_id, question, answer in QUESTIONS:
            body, ask = question.split(". ", 1)
            handle.write(json.dumps({"id": example_id, "body": body + ".", "ask": ask, "answer": answer}) + "\n")
    return path


@pytest.fixture
def gold() -> dict[str, str]:
    return {question: str(answer) for _, question, answer in QUESTIONS}


STUDENT_CORPUS = [f"Question: Ann has {i} apples and buys {i + 2} more. How many apples? Answer: {2 * i + 2}"
                  for i in range(40)]


@pytest.fixture(scope="session")
def student_run_dir(tmp_path_factory):
    pytest.importorskip("dd_prompting.distill.students")
    from dd_prompting.distill.training.tokenization import train_number_tokenizer
    from dd_prompting.distill.students.artifacts import save_student
    from dd_prompting.distill.training.modeling import build_tiny_model
    from dd_prompting.distill.training.train_config import TrainConfig

    tokenizer = train_number_tokenizer(STUDENT_CORPUS, vocab_size=300)
    run_dir = tmp_path_factory.mktemp("distill-run")
    config = TrainConfig(tiny_layers=1, tiny_hidden=32, tiny_heads=2)
    for role in ("decomposer", "solver"):
        save_student(build_tiny_model(tokenizer, config), tokenizer, run_dir / "students" / role, role=role,
                     base_model="tiny")
    return run_dir
