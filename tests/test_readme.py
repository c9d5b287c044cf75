"""The README's offline examples run as written: each Python block marked `<!-- runs offline ... -->`.

Statements run one at a time in one namespace. After each statement that calls a local model, the test
waits until that model's worker has gone idle (its wait for work ended with nothing to do) before the
next one: a user's pause between calls, which once left the engine hung (issue 29).
"""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- runs offline"
BLOCKS = [match.group(1) for match in re.finditer(
    re.escape(MARK) + r"[^\n]*-->\n```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)]

pytestmark = [pytest.mark.slow, pytest.mark.no_adapter]


def test_the_readme_marks_its_offline_examples():
    assert len(BLOCKS) == README.read_text(encoding="utf-8").count(MARK) >= 1


def _schedulers(namespace: dict) -> list:
    from dd_prompting import TransformersEngine

    return [value.engine.scheduler for value in namespace.values()
            if isinstance(getattr(value, "engine", None), TransformersEngine)]


def _wait_until_idle(scheduler, since: int, *, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while scheduler.idle_wakeups <= since:
        assert time.monotonic() < deadline, "the local engine's worker never went idle"
        time.sleep(0.01)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs_with_pauses_between_calls(block):
    namespace: dict = {}
    pauses = 0
    for statement in ast.parse(block).body:
        before = {id(s): (s.idle_wakeups, len(s.batch_sizes)) for s in _schedulers(namespace)}
        exec(compile(ast.Module([statement], type_ignores=[]), "README.md", "exec"), namespace)  # noqa: S102
        for scheduler in _schedulers(namespace):
            wakeups, batches = before.get(id(scheduler), (0, 0))
            if len(scheduler.batch_sizes) > batches:  # the statement ran the model (not answered from a cache)
                _wait_until_idle(scheduler, wakeups)
                pauses += 1
    assert pauses >= 2  # a pause after a call, and another call after it
    for scheduler in _schedulers(namespace):
        scheduler.close()
