"""results.jsonl: one row per (model, strategy, example), appended and flushed as each example ends.

A run killed mid-write leaves at most one partial last line; opening the file again cuts it off, so
the next append starts on a clean line. When a row appears twice (an example retried after an API
error), the later one wins.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["ResultStore", "row_key", "latest_rows"]

logger = logging.getLogger(__name__)


def row_key(row: dict[str, Any]) -> tuple[str, str]:
    return row["cell"], row["example_id"]


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row written for each (cell, example), in first-seen order."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        latest[row_key(row)] = row
    return list(latest.values())


class ResultStore:
    """Append-only JSONL of result rows, safe to reopen after a crash."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._handle = None
        self._repair_tail()

    def _repair_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            data = handle.read()
            cut = data.rfind(b"\n") + 1
            logger.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run",
                           self.path, len(data) - cut)
            handle.truncate(cut)

    def read(self) -> list[dict[str, Any]]:
        """Every row in the file, in order; malformed lines are skipped with a warning naming them."""
        if not self.path.exists():
            return []
        rows = []
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    logger.warning("%s:%d: skipping a malformed row (%s)", self.path, number, err.msg)
        return rows

    def completed(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Rows that need no rerun: finished without an API error."""
        return {row_key(row): row for row in latest_rows(self.read()) if not row.get("error")}

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and flush it to the OS, so a killed process loses nothing already appended."""
        line = json.dumps(row, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if self._handle is None:
                self._handle = self.path.open("a", encoding="utf-8")
            self._handle.write(line)
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
