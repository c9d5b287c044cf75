"""Where result rows live: `results.jsonl` (one row per (cell, example), appended and flushed as each example
ends) and `run.json` (what the rows' cells are), written alike by `dd-evals` and by `dd-distill`'s held-out
evaluation, so `dd-evals report DIR` reads either.

A run killed mid-write leaves at most one partial last line; opening the file again cuts it off, so
the next append starts on a clean line. When a row appears twice (an example retried after an API
error), the later one wins; a finished row written again (two runs on one directory, before the
one-writer lock) is counted once, and `duplicates` says how many such rows were dropped. Reading and
appending are `dd_prompting.data.jsonl`'s, with its one malformed-line policy.

A run's process opens the store to write (under the directory's `RunLock`); readers (reports, dry
runs) open it with `read_only=True`: nothing is repaired or created, and a last line still being
written is not read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dd_prompting.data.jsonl import JsonlWriter, read_jsonl, repair_torn_tail
from dd_prompting.models.secrets import redact

__all__ = ["ResultStore", "row_key", "latest_rows", "count_duplicates", "write_run_file", "RESULTS_FILE", "RUN_FILE"]

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"


def write_run_file(directory: str | Path, record: dict[str, Any], *, secrets: Iterable[str] = ()) -> Path:
    """Write `run.json` (what the rows' cells are, and how they were made) whole, with every secret redacted.

    Its `cells` maps each row's `cell` to at least its dataset, model, strategy and prompts: what the report reads.
    """
    path = Path(directory) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = redact(json.dumps(record, indent=2, ensure_ascii=False, default=str), secrets)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)  # a report reading meanwhile sees the old file or the new one
    return path


def row_key(row: dict[str, Any]) -> tuple[str, str]:
    return row["cell"], row["example_id"]


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row written for each (cell, example), in first-seen order."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        latest[row_key(row)] = row
    return list(latest.values())


def count_duplicates(rows: list[dict[str, Any]]) -> int:
    """Rows that repeat a (cell, example) already finished earlier in the file: written twice, not retried."""
    finished: set[tuple[str, str]] = set()
    duplicates = 0
    for row in rows:
        key = row_key(row)
        duplicates += key in finished
        if not row.get("error"):
            finished.add(key)
    return duplicates


class ResultStore:
    """Append-only JSONL of result rows, safe to reopen after a crash (through `dd_prompting.data.jsonl`).

    Opening the store cuts a half-written last line, so reading a killed run's file works and the
    next append starts on a clean line. A malformed line anywhere else is an error naming it, or
    with `skip_malformed` is logged and counted in `skipped`: its example then simply runs again.
    """

    def __init__(self, path: str | Path, *, skip_malformed: bool = False, read_only: bool = False):
        self.path = Path(path)
        self.skip_malformed = skip_malformed
        self.read_only = read_only
        self.skipped: list[tuple[int, str]] = []
        self.duplicates = 0  # finished rows written again, dropped by the last `latest()` or `completed()`
        self._writer = None
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            repair_torn_tail(self.path)
            self._writer = JsonlWriter(self.path, default=str)

    def read(self) -> list[dict[str, Any]]:
        """Every row in the file, in order; none if there is no file yet."""
        if not self.path.exists():
            return []
        self.skipped = []
        return [row for _, row in read_jsonl(self.path, skip_malformed=self.skip_malformed, skipped=self.skipped,
                                             growing=self.read_only)]

    def latest(self) -> list[dict[str, Any]]:
        """The last row of each (cell, example); `duplicates` counts the finished rows that were written twice."""
        rows = self.read()
        self.duplicates = count_duplicates(rows)
        if self.duplicates:  # every reader (resume, estimate, report) says so
            logger.warning("%s: %d rows repeat an example already finished (two runs wrote this directory at once, "
                           "before it was locked); each example counts once.", self.path, self.duplicates)
        return latest_rows(rows)

    def completed(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Rows that need no rerun: finished without an API error."""
        return {row_key(row): row for row in self.latest() if not row.get("error")}

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and flush it to the OS, so a killed process loses nothing already appended."""
        if self._writer is None:
            raise RuntimeError(f"{self.path} was opened read-only")
        self._writer.write(row)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
