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
