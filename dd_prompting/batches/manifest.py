"""The batches a run has pending, in a file written atomically before anything waits on them.

A run killed while a batch is pending reads the manifest on restart and re-attaches: no request is sent twice
and no answered line is lost. Before a round is submitted its intent (the round's token and call keys) is
written; each batch is added as soon as the provider created it. A run that died between the two finds its
batches by the round's token, which every batch carries in its metadata. Entries name the model, the batch API's
base URL (never a key) and the call keys a batch's lines carry.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["BatchManifest", "MANIFEST_FILE"]

MANIFEST_FILE = "batches.json"


class BatchManifest:
    """`batches.json` in a run directory: `{"run": id, "batches": {batch id: entry}, "intents": {token: entry}}`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"run": None, "batches": {}, "intents": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("batches"), dict):
                raise ValueError("no 'batches' object")
        except ValueError as err:
            raise ValueError(f"{self.path} is not a batch manifest ({err}); it lists the batches this run has "
                             "pending: restore it, or move it away to submit them again") from err
        data.setdefault("intents", {})
        return data

    @property
    def batches(self) -> dict[str, dict[str, Any]]:
        return self.read()["batches"]

    def run_id(self) -> str:
        """This run directory's id, which its batches carry in their metadata (made on first use)."""
        data = self.read()
        if not data.get("run"):
            data["run"] = uuid.uuid4().hex[:16]
            self._write(data)
        return data["run"]

    def pending(self, model: str | None = None) -> dict[str, dict[str, Any]]:
        return {batch_id: entry for batch_id, entry in self.batches.items()
                if entry.get("state") == "pending" and model in (None, entry.get("model"))}

    def intents(self, model: str) -> dict[str, dict[str, Any]]:
        return {token: entry for token, entry in self.read()["intents"].items() if entry.get("model") == model}

    def intend(self, *, model: str, url: str, keys: list[str]) -> str:
        """Record a round about to be submitted; returns its token."""
        token = uuid.uuid4().hex[:16]
        data = self.read()
        data["intents"][token] = {"model": model, "url": url, "keys": list(keys), "since": _now()}
        self._write(data)
        return token

    def drop_intent(self, token: str) -> None:
        data = self.read()
        if data["intents"].pop(token, None) is not None:
            self._write(data)

    def add(self, batch_id: str, *, model: str, url: str, keys: list[str], round_token: str | None = None,
            key_env: str | None = None, api: str = "openai") -> None:
        """Record a created batch: `api` is its batch API ("openai", "anthropic"), `key_env` names the variable
        holding its server's key (never the key)."""
        data = self.read()
        data["batches"][batch_id] = {"model": model, "api": api, "url": url, "key_env": key_env, "round": round_token,
                                     "requests": len(keys), "keys": list(keys), "state": "pending",
                                     "submitted": _now()}
        self._write(data)

    def finish(self, batch_id: str, state: str, **counts: int) -> None:
        """Mark a batch ended (`state`: the provider's final status, or "cancelled"), with its line counts."""
        data = self.read()
        if batch_id in data["batches"]:
            data["batches"][batch_id].update(state=state, ended=_now(), **counts)
            self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.path)  # a reader sees the old manifest or the new one, never half of one


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
