"""Trained students on `transformers serve`: a real OpenAI-compatible server this project did not write.

It takes text prompts only (a token-id prompt or vLLM's extra fields are a 422), so the students reach it through
the text path: the prompt decoded to text, re-tokenized by the server, its reply encoded again here. Measured on
the session's students and on the offline default's (`runs/offline`, 32 held-out problems): 32 of 32 greedy
answers and texts equal the in-process ones, for the pair and the CoT student; the text path can differ where a
token spans the boundary between a prompt and its reply, which these students' prompts (ending in a newline or
": ") do not give it.
"""

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dspy
import pytest

from dd_prompting.distill import StudentModule

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
PROBLEMS = 16  # held-out problems; every step of each is compared, token for token


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def servers(distilled):
    """One `transformers serve` process per student, as a user starts them."""
    command = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    processes, urls = [], {}
    try:
        for role in ("decomposer", "solver", "cot"):
            port = free_port()
            processes.append(subprocess.Popen(
                [command, "serve", str(distilled.run_dir / "students" / role), "--host", "127.0.0.1", "--port",
                 str(port), "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            urls[role] = f"http://127.0.0.1:{port}/v1"
        for (role, url), process in zip(urls.items(), processes):
            deadline = time.monotonic() + 300
            while True:  # until it answers, or it died (its error shown)
                if process.poll() is not None:
                    pytest.fail(f"transformers serve for the {role} exited: {process.stderr.read().decode()[-2000:]}")
                try:
                    urllib.request.urlopen(url + "/models", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"transformers serve for the {role} did not answer at {url} in 300 s")
                    time.sleep(0.2)  # still loading: ask again (a poll, not a timing)
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


@pytest.mark.parametrize("student,roles", [("pair", ("decomposer", "solver")), ("cot", ("cot",))])
def test_students_on_transformers_serve_answer_as_in_process(distilled, generator_problems, servers, student, roles):
    questions = [dspy.Example(question=problem.question).with_inputs("question")
                 for problem in generator_problems[1][:PROBLEMS]]
    expected = StudentModule.from_run(distilled.run_dir, student=student).batch(questions)
    module = StudentModule.from_run(distilled.run_dir, student=student, servers={role: servers[role] for role in roles})
    served = module.batch(questions)
    clients = [module.student.decomposer.client, module.student.solver.client] if student == "pair" else \
        [module.student.student.client]
    assert all(client.text_only for client in clients)  # reached through text (said once in the log)
    same = sum((a.answer, a.reasoning) == (b.answer, b.reasoning) for a, b in zip(served, expected))
    assert same == PROBLEMS, f"{same} of {PROBLEMS} answers equal the in-process ones"
