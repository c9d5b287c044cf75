"""The batches a run has pending, in a file written atomically before anything waits on them.

A run killed while a batch is pending reads the manifest on restart and re-attaches: no request is sent twice
and no answered line is lost. Each entry names the batch, the provider's base URL (never a key) and the call
keys its lines carry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["BatchManifest"]


class BatchManifest:
    """`batches.json` in a run directory: `{batch id: {"url", "keys", "state"}}`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path} is not a batch manifest ({err}); it lists the batches this run has "
                             "pending: restore it, or move it away to submit them again") from err

    def pending(self) -> dict[str, dict[str, Any]]:
        return {batch_id: entry for batch_id, entry in self.read().items() if entry.get("state") == "pending"}

    def add(self, batch_id: str, *, url: str, keys: list[str]) -> None:
        entries = self.read()
        entries[batch_id] = {"url": url, "keys": list(keys), "state": "pending"}
        self._write(entries)

    def finish(self, batch_id: str, state: str = "done") -> None:
        entries = self.read()
        if batch_id in entries:
            entries[batch_id]["state"] = state
            self._write(entries)

    def _write(self, entries: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.path)  # a reader sees the old manifest or the new one, never half of one
