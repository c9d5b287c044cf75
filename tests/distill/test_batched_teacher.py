"""`dd-distill traces` with a teacher called through the Batch API (`--teacher.batch true`, issue 27)."""

import json
from collections import Counter

import pytest

from dd_prompting import load_gsm8k
from dd_prompting.distill.run.cli import main
from dd_prompting.testing import OpenAICompatibleServer, last_user_text

# What a batched teacher's traces share with a synchronous teacher's: the usage counts of calls and cache hits
# differ (a batched run's last pass reads every reply from the cache), and the cost is the batch price.
SAME = ("id", "sample", "question", "gold", "subquestions", "subanswers", "answer", "correct", "error")


def _question(text):
    return text.rpartition("[[ ## question ## ]]\n")[2].split("\n\n")[0].strip()


@pytest.fixture
def teacher_server():
    gold = {example.question.strip(): example.answer for example in load_gsm8k("train", limit=20)}

    def respond(request):
        answer = gold[_question(last_user_text(request))]
        if "`subanswers`" not in request["messages"][0]["content"]:
            return '[[ ## subquestions ## ]]\n["What do we know?", "What is the answer?"]\n\n[[ ## completed ## ]]'
        steps = json.dumps(["We read the problem.", f"The answer is 0 + {answer} = {answer}."])
        return f"[[ ## subanswers ## ]]\n{steps}\n\n[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"

    with OpenAICompatibleServer(respond) as server:
        yield server


def _flags(server, tmp_path, name, *extra):
    return ["traces", "--run-dir", str(tmp_path / name), "--teacher.kind", "api", "--teacher.model",
            "openai/gpt-4o-mini", "--teacher.api_base", server.base_url, "--teacher.cache_dir",
            str(tmp_path / name / "cache"), "--teacher.retries", "1", "--teacher.threads", "2", "--teacher.samples",
            "2", "--teacher.temperature", "0.7", "--data.source", "gsm8k", "--data.train_problems", "6",
            "--data.eval_problems", "2", "--data.eval_offset", "6", "--quiet", *extra]


def _traces(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sorted(rows, key=lambda row: (row["id"], row["sample"]))


def test_a_batched_teacher_writes_the_traces_of_a_synchronous_one_at_half_the_cost(teacher_server, tmp_path):
    assert main(_flags(teacher_server, tmp_path, "sync")) == 0
    synchronous_calls = teacher_server.call_count
    assert main(_flags(teacher_server, tmp_path, "batch", "--teacher.batch",
                       "--teacher.batch_poll_seconds", "0.01")) == 0
    assert teacher_server.call_count == synchronous_calls  # no synchronous call
    sent = Counter(line["custom_id"] for line in teacher_server.batches.lines)
    assert len(sent) == synchronous_calls == 6 * 2 * 2 and set(sent.values()) == {1}  # problems x samples x steps
    assert len(teacher_server.batches.batches) == 2  # joint: decompose, then solve
    sync, batch = _traces(tmp_path / "sync" / "traces.jsonl"), _traces(tmp_path / "batch" / "traces.jsonl")
    assert [{k: row.get(k) for k in SAME} for row in batch] == [{k: row.get(k) for k in SAME} for row in sync]
    assert [row["cost"] for row in batch] == pytest.approx([row["cost"] / 2 for row in sync])  # litellm batch prices
    # batch is not one of the traces stage's settings: the finished stage counts as done either way.
    assert main(_flags(teacher_server, tmp_path, "batch", "--no-teacher.batch")) == 0
    assert teacher_server.call_count == synchronous_calls and len(teacher_server.batches.batches) == 2
    manifest = json.loads((tmp_path / "batch" / "batches.json").read_text())
    assert [entry["state"] for entry in manifest["batches"].values()] == ["completed", "completed"]


def test_a_batched_teacher_without_a_call_cache_is_refused_before_any_call(teacher_server, tmp_path, capsys):
    flags = _flags(teacher_server, tmp_path, "nocache", "--teacher.batch")
    flags[flags.index("--teacher.cache_dir") + 1] = "none"
    assert main(flags) != 0
    assert "batch = true needs the call cache" in capsys.readouterr().err
    assert teacher_server.call_count == 0 and teacher_server.batches.lines == []


def test_an_interrupted_batched_teacher_names_dd_distill_cancel_batches_which_cancels_and_a_rerun_resends(
        teacher_server, tmp_path, monkeypatch, capsys, caplog):
    import logging

    import dd_prompting.batches.rounds as rounds_module

    teacher_server.batches.hold = True  # the provider is still working on the batch
    monkeypatch.setattr(rounds_module.time, "sleep", lambda seconds: (_ for _ in ()).throw(KeyboardInterrupt))
    flags = _flags(teacher_server, tmp_path, "held", "--teacher.batch", "--teacher.batch_poll_seconds", "0.01")
    with caplog.at_level(logging.WARNING, logger="dd_prompting.batches.rounds"):
        assert main(flags) == 130  # Ctrl-C while waiting
    run_dir = tmp_path / "held"
    assert f"dd-distill cancel-batches --run-dir {run_dir}" in caplog.text
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["cancel-batches", "--run-dir", str(run_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == ["batch_1: cancelled", "1 pending batch(es) cancelled"]
    assert teacher_server.batches.batches["batch_1"]["status"] == "cancelled"
    teacher_server.batches.hold = False
    assert main(flags) == 0  # the cancelled calls go again, in a new batch
    assert len(_traces(run_dir / "traces.jsonl")) == 6 * 2
    assert main(["cancel-batches", "--run-dir", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip().endswith("batches.json: no pending batch")
