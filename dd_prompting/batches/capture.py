"""The exact request body a model's synchronous route would send, captured instead of sent.

A batch line must carry the body the synchronous call sends (the model name as the provider knows it,
`max_tokens` or `max_completion_tokens`, every setting), so that its reply is the reply the synchronous call
would get. Rather than rebuild that body (DSPy's own client and LiteLLM each write it their way), the call goes
through the same route, opened on the same `ModelConfig` but pointed at `BodyCapture`, a server on 127.0.0.1 in
this process that keeps the body and answers with an error. The capture route gets a placeholder key: the real
key reaches its provider only.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dd_prompting.models.config import ModelConfig

__all__ = ["BodyCapture", "CapturedCall"]


@dataclasses.dataclass(frozen=True)
class CapturedCall:
    """What the route posted: the path under its base URL (e.g. "/chat/completions"), the JSON body, and the
    key it came with (Authorization or x-api-key: a placeholder, the capture route never has the key)."""

    path: str
    body: dict[str, Any]
    authorization: str | None = None


class BodyCapture:
    """Opens a model's route against loopback capture servers; `capture(request)` returns the `CapturedCall`.

    A capture costs a loopback round trip, no model is called. `parallel` captures run at once, each on its own
    server and route (a pass's worker threads capture side by side). Use as a context manager, or `close()` it.
    """

    def __init__(self, config: ModelConfig, *, timeout: float = 30.0, parallel: int = 1):
        if config.kind != "api":
            raise ValueError(f"{config.section}: only API models are called in batches, not kind={config.kind!r}")
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._slots = [_Slot(config, timeout) for _ in range(max(1, parallel))]
        for slot in self._slots:
            self._free.put(slot)

    def capture(self, request) -> CapturedCall:
        slot = self._free.get()
        try:
            return slot.capture(request)
        finally:
            self._free.put(slot)

    def close(self) -> None:
        for slot in self._slots:
            slot.close()

    def __enter__(self) -> BodyCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Slot:
    """One capture server and the route pointed at it, used by one capture at a time."""

    def __init__(self, config: ModelConfig, timeout: float):
        from dd_prompting.models.routes import LMRoute, _api_lm

        self._captured: list[CapturedCall] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self._captured))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        host, port = self._httpd.server_address[:2]
        capture = dataclasses.replace(config, api_base=f"http://{host}:{port}/v1", api_key_env=None, retries=0)
        self._route = LMRoute(_api_lm(capture, timeout))

    def capture(self, request) -> CapturedCall:
        self._captured.clear()
        try:
            self._route.complete(request)
        except Exception:  # the capture server's refusal: expected
            pass
        if not self._captured:
            raise RuntimeError("the route sent nothing to the capture server: it does not speak OpenAI's API")
        return self._captured[-1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(captured: list[CapturedCall]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            path = self.path.split("?")[0]
            captured.append(CapturedCall(path=path[path.index("/v1") + 3:] if "/v1" in path else path, body=body,
                                         authorization=self.headers.get("Authorization")
                                         or self.headers.get("x-api-key")))
            reply = b'{"error": {"message": "captured, not sent", "type": "invalid_request_error", "code": 400}}'
            self.send_response(400)  # not retried by any client
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    return Handler
