"""Anthropic's Message Batches API over its documented HTTP API (litellm cannot create these batches).

A line is `{"custom_id", "params"}`, `params` the Messages request the synchronous route would send; a batch
holds up to 100,000 requests or 256 MB. Anthropic keeps no metadata on a batch, so a run that died between
creating a batch and writing its id down cannot find it again (`find` finds nothing): its calls go in the next
round, paid twice at worst for that one round (the README says so).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dd_prompting.batches.openai_batches import BatchResults, BatchStatus, split_lines

__all__ = ["AnthropicBatches", "BatchAPIUnavailable", "ANTHROPIC_URL", "ANTHROPIC_VERSION"]

ANTHROPIC_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_call",
                 "refusal": "content_filter"}


class BatchAPIUnavailable(ConnectionError):
    """The batch API could not be reached, or was overloaded (429, 5xx, 529): worth waiting out."""


class AnthropicBatches:
    """Message batches at `base_url` (e.g. "https://api.anthropic.com"), with `api_key` (sent there only)."""

    endpoint = "/v1/messages"

    def __init__(self, base_url: str, api_key: str, *, max_requests: int = 100_000,
                 max_bytes: int = 256 * 1024 * 1024, timeout: float = 120.0):
        import httpx

        # The API lives under /v1; a base URL given with it (as litellm takes one) is the same server.
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self._client = httpx.Client(timeout=timeout, headers={
            "x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"})

    def line(self, custom_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        params = {key: value for key, value in body.items() if key != "stream"}  # a batch answers whole messages
        return {"custom_id": custom_id, "params": params}

    def split(self, lines: Iterable[Mapping[str, Any]]) -> list[list[bytes]]:
        return split_lines(lines, max_requests=self.max_requests, max_bytes=self.max_bytes, where=self.base_url)

    def submit(self, lines: Iterable[Mapping[str, Any]], *, metadata: Mapping[str, str],
               on_created: Callable[[str, list[str]], None] | None = None) -> list[str]:
        """Create one batch per group of `lines` (Anthropic keeps no `metadata`); returns their ids."""
        ids = []
        for encoded in self.split(lines):
            requests = [json.loads(line) for line in encoded]
            batch = self._call("POST", "/v1/messages/batches", json={"requests": requests})
            ids.append(batch["id"])
            if on_created is not None:
                on_created(batch["id"], [request["custom_id"] for request in requests])
        return ids

    def status(self, batch_id: str) -> BatchStatus:
        batch = self._call("GET", f"/v1/messages/batches/{batch_id}")
        counts = batch.get("request_counts") or {}
        status = {"canceling": "cancelling"}.get(batch["processing_status"], batch["processing_status"])
        return BatchStatus(id=batch["id"], status=status, total=sum(int(value or 0) for value in counts.values()),
                           completed=int(counts.get("succeeded") or 0), failed=int(counts.get("errored") or 0),
                           output_file_id=batch.get("results_url"))

    def results(self, status: BatchStatus) -> BatchResults:
        """The answered (succeeded) and failed (errored) lines; expired and canceled ones are neither."""
        results = BatchResults()
        if not status.output_file_id:
            return results
        for text in self._get(status.output_file_id).splitlines():
            if not text.strip():
                continue
            line = json.loads(text)
            result = line.get("result") or {}
            if result.get("type") == "succeeded" and isinstance(result.get("message"), dict):
                results.answered[line["custom_id"]] = result["message"]
            elif result.get("type") == "errored":
                results.failed[line["custom_id"]] = json.dumps(result.get("error"))[:500]
        return results

    def find(self, metadata: Mapping[str, str]) -> list[str]:
        return []  # Anthropic keeps no metadata on a batch to find it by

    def cancel(self, batch_id: str) -> str:
        return self._call("POST", f"/v1/messages/batches/{batch_id}/cancel")["processing_status"]

    def response(self, body: dict[str, Any]):
        """A succeeded line's message as the `Response` the synchronous route reads from it."""
        from dspy.lm15 import Message, Response, TextPart, ThinkingPart, ToolCallPart, Usage

        if body.get("type") != "message" or not isinstance(body.get("content"), list):
            raise ValueError(f"not an Anthropic message: {json.dumps(body)[:200]}")
        parts: list[Any] = []
        for block in body["content"]:
            kind = block.get("type")
            if kind == "text":
                parts.append(TextPart(text=str(block.get("text") or "")))
            elif kind == "thinking":
                parts.append(ThinkingPart(text=str(block.get("thinking") or "")))
            elif kind == "tool_use":
                parts.append(ToolCallPart(id=str(block.get("id") or ""), name=str(block.get("name") or ""),
                                          input=block.get("input") if isinstance(block.get("input"), dict) else {}))
        usage = body.get("usage") or {}
        return Response(id=body.get("id"), model=str(body.get("model") or ""),
                        message=Message(role="assistant", parts=parts or [TextPart(text="")]),
                        finish_reason=_STOP_REASONS.get(body.get("stop_reason"), "stop"),
                        usage=Usage(input_tokens=usage.get("input_tokens"), output_tokens=usage.get("output_tokens")))

    @staticmethod
    def transient(err: Exception) -> bool:
        return isinstance(err, BatchAPIUnavailable)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return json.loads(self._request(method, self.base_url + path, **kwargs))

    def _get(self, url: str) -> str:
        return self._request("GET", url)

    def _request(self, method: str, url: str, **kwargs: Any) -> str:
        import httpx

        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.TransportError as err:
            raise BatchAPIUnavailable(f"{method} {url}: {type(err).__name__}: {err}") from err
        if response.status_code == 429 or response.status_code >= 500:
            raise BatchAPIUnavailable(f"{method} {url}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise ValueError(f"{method} {url}: HTTP {response.status_code}: {response.text[:300]}")
        return response.text
