"""OpenAI's Batch API through the `openai` client: upload JSONL, create, poll, read the output and error files.

A line is `{"custom_id", "method": "POST", "url": endpoint, "body"}`; the body is what the synchronous route
would send, so a line's reply is the reply the synchronous call gets. `submit` splits lines at the provider's
limits (50,000 requests or 200 MB a file) and returns one batch id per file; `metadata` goes with every batch so
a run that died before writing an id down finds its batches again (`find`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OpenAIBatches", "BatchStatus", "BatchResults", "split_lines"]

FINAL = ("completed", "failed", "expired", "cancelled", "ended")  # "ended": Anthropic's one final status


@dataclass
class BatchStatus:
    """Where a batch is: `status` (validating, in_progress, finalizing, completed, failed, expired, cancelling,
    cancelled), its request counts, and its output and error files once it has them."""

    id: str
    status: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in FINAL


@dataclass
class BatchResults:
    """A finished batch's lines: `answered` maps custom_id to the response body (a chat completion), `failed` to
    the error the provider gave; a line in neither (expired, cancelled) was not answered and goes again."""

    answered: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


class OpenAIBatches:
    """Batches on an OpenAI-compatible server at `base_url` (e.g. "https://api.openai.com/v1"), with `api_key`.

    The key is sent to that server only. `max_requests` and `max_bytes` are the provider's limits per file.
    """

    def __init__(self, base_url: str, api_key: str, *, endpoint: str = "/v1/chat/completions",
                 completion_window: str = "24h", max_requests: int = 50_000, max_bytes: int = 200 * 1024 * 1024,
                 timeout: float = 120.0, retries: int = 3):
        import openai

        self.base_url = base_url.rstrip("/")
        self.endpoint = endpoint
        self.completion_window = completion_window
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout, max_retries=retries)

    def line(self, custom_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": dict(body)}

    def split(self, lines: Iterable[Mapping[str, Any]]) -> list[list[bytes]]:
        """The lines as encoded JSONL, in files within the limits."""
        return split_lines(lines, max_requests=self.max_requests, max_bytes=self.max_bytes, where=self.base_url)

    def submit(self, lines: Iterable[Mapping[str, Any]], *, metadata: Mapping[str, str],
               on_created: Callable[[str, list[str]], None] | None = None) -> list[str]:
        """Upload and create one batch per file of `lines`; returns their ids. `on_created(batch_id, custom_ids)`
        runs as each batch is created, before the next file goes: write the id down there."""
        ids = []
        for number, encoded in enumerate(self.split(lines)):
            upload = self._client.files.create(file=("batch.jsonl", io.BytesIO(b"".join(encoded))), purpose="batch")
            batch = self._client.batches.create(input_file_id=upload.id, endpoint=self.endpoint,
                                                completion_window=self.completion_window,
                                                metadata={**metadata, "part": str(number)})
            ids.append(batch.id)
            if on_created is not None:
                on_created(batch.id, [json.loads(line)["custom_id"] for line in encoded])
        return ids

    def status(self, batch_id: str) -> BatchStatus:
        batch = self._client.batches.retrieve(batch_id)
        counts = batch.request_counts
        errors = [f"{error.code}: {error.message}" + (f" (line {error.line})" if error.line else "")
                  for error in (batch.errors.data if batch.errors and batch.errors.data else [])]
        return BatchStatus(id=batch.id, status=batch.status, total=counts.total if counts else 0,
                           completed=counts.completed if counts else 0, failed=counts.failed if counts else 0,
                           output_file_id=batch.output_file_id, error_file_id=batch.error_file_id, errors=errors)

    def results(self, status: BatchStatus) -> BatchResults:
        """The answered and failed lines of a finished batch."""
        results = BatchResults()
        for file_id in (status.output_file_id, status.error_file_id):
            if not file_id:
                continue
            for text in self._client.files.content(file_id).text.splitlines():
                if not text.strip():
                    continue
                line = json.loads(text)
                response = line.get("response") or {}
                if response.get("status_code") == 200 and isinstance(response.get("body"), dict):
                    results.answered[line["custom_id"]] = response["body"]
                else:
                    error = line.get("error") or (response.get("body") or {}).get("error") or response
                    results.failed[line["custom_id"]] = json.dumps(error)[:500]
        return results

    def find(self, metadata: Mapping[str, str]) -> list[str]:
        """The ids of batches whose metadata holds `metadata` (a run that died before writing its ids down)."""
        return [batch.id for batch in self._client.batches.list(limit=100)
                if batch.metadata and all(batch.metadata.get(k) == v for k, v in metadata.items())]

    def cancel(self, batch_id: str) -> str:
        return self._client.batches.cancel(batch_id).status

    def response(self, body: dict[str, Any]):
        """A line's reply (a chat completion body) as the `Response` the synchronous route reads from it."""
        from dspy.lm15 import response_from_openai_chat

        return response_from_openai_chat(body)

    @staticmethod
    def transient(err: Exception) -> bool:
        """Whether `err` from polling is the network or an overloaded server, worth waiting out."""
        import openai

        return isinstance(err, (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                                openai.RateLimitError))


def split_lines(lines: Iterable[Mapping[str, Any]], *, max_requests: int, max_bytes: int,
                where: str) -> list[list[bytes]]:
    """`lines` as encoded JSON lines, in groups within a provider's limits (requests and bytes per batch); a
    custom_id given twice is an error here, not a failed batch there."""
    files: list[list[bytes]] = [[]]
    size, seen = 0, set()
    for line in lines:
        if line["custom_id"] in seen:
            raise ValueError(f"custom_id {line['custom_id']!r} twice in one round: each call is sent once")
        seen.add(line["custom_id"])
        encoded = (json.dumps(line, ensure_ascii=False) + "\n").encode()
        if len(encoded) > max_bytes:
            raise ValueError(f"the request {line['custom_id']!r} is {len(encoded):,} bytes, more than a batch "
                             f"file may hold ({max_bytes:,} at {where})")
        if files[-1] and (len(files[-1]) >= max_requests or size + len(encoded) > max_bytes):
            files.append([])
            size = 0
        files[-1].append(encoded)
        size += len(encoded)
    return [file for file in files if file]
