"""The one JSONL module: read, append, repair and write files of one JSON object per line.

Traces, problem files, training rows and eval results are all JSONL, and all follow one policy:

- A malformed line (not JSON, not an object, rejected by the caller's `parse`, not UTF-8) raises
  `MalformedLineError`, naming `path:line` and the reason, and saying how to go on. With
  `skip_malformed=True` the line is logged, counted in `skipped`, and reading goes on. A line is
  never dropped silently.
- Appending (`JsonlWriter`) flushes each line as it is written, so a killed run loses at most the
  line being written. Before the first append, `repair_torn_tail` cuts such a half-written last
  line, so new lines never land on the end of a broken one.
- A whole file is written under a temporary name and moved into place (`write_jsonl`): readers
  see the old file or the new one, never half of it.

Bytes are decoded line by line, so a file with one bad byte names the line it is on.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["MalformedLineError", "CLI_REMEDY", "on_malformed", "read_jsonl", "JsonlWriter", "repair_torn_tail",
           "write_jsonl"]

logger = logging.getLogger(__name__)

Parse = Callable[[dict[str, Any]], Any]
"""Checks or converts one parsed object; raises ValueError or TypeError to reject its line."""

TORN_HINT = " (the line is cut short: was the run killed while writing it?)"
CLI_REMEDY = ("run again with --skip-malformed (or skip_malformed = true in the config file) to skip such lines and "
              "list them in the report")
"""The way out a command gives (`dd-evals run`, `dd-distill`): both offer the one option under this name."""
_TAIL_BLOCK = 1 << 16
_BLANK = object()  # what a blank line parses to (a `parse` may return None for a real record)


class MalformedLineError(ValueError):
    """A line of a JSONL file is not a valid record: names the file, the line, the reason and the ways out."""

    what = "record"
    remedy = "read the file with skip_malformed=True to skip and count such lines"

    def __init__(self, path: str | os.PathLike, line: int, reason: str, *, remedy: str | None = None):
        self.path, self.line, self.reason = Path(path), line, reason
        if remedy is not None:
            self.remedy = remedy
        super().__init__(
            f"{self.path}:{line}: not a valid {self.what}: {reason}. Fix or delete the line, or {self.remedy}."
        )

    def with_remedy(self, remedy: str) -> MalformedLineError:
        """The same error with its way out in the caller's words: a command names its flag (`CLI_REMEDY`),
        where the library names its keyword argument."""
        return type(self)(self.path, self.line, self.reason, remedy=remedy)


def read_jsonl(
    path: str | os.PathLike,
    *,
    parse: Parse | None = None,
    skip_malformed: bool = False,
    skipped: list[tuple[int, str]] | None = None,
    growing: bool = False,
) -> Iterator[tuple[int, Any]]:
    """`(line number, object)` for every record of a JSONL file; `parse` checks or converts each object.

    Blank lines are ignored. A malformed line raises `MalformedLineError`; with `skip_malformed` it
    is logged and appended to `skipped` as `(line, reason)` instead. A missing file is an error
    now, not at the first `next()`. With `growing`, the file may be appended to while it is read (a
    report of a run in progress): a last line without its newline is still being written, and is
    left out rather than called malformed.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.jsonl"
    >>> _ = path.write_text('{"n": 1}\\n\\n[2]\\n{"n": 3}\\n')
    >>> skipped = []
    >>> list(read_jsonl(path, skip_malformed=True, skipped=skipped)), skipped
    ([(1, {'n': 1}), (4, {'n': 3})], [(3, 'expected a JSON object, got list')])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"File not found: {path}")
    return _read(path, parse, skip_malformed, skipped, growing)


def _read(path: Path, parse: Parse | None, skip_malformed: bool, skipped: list | None,
          growing: bool = False) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if growing and not raw.endswith(b"\n"):
                return  # the writer's line in progress
            record, reason = _parse_line(raw, number, parse)
            if reason is not None:
                on_malformed(path, number, reason, skip_malformed=skip_malformed, skipped=skipped)
            elif record is not _BLANK:
                yield number, record


def on_malformed(path: Path, line: int, reason: str, *, skip_malformed: bool, skipped: list | None) -> None:
    """The one policy for a malformed line: raise `MalformedLineError`, or log it and count it in `skipped`."""
    if not skip_malformed:
        raise MalformedLineError(path, line, reason)
    logger.warning("%s:%d: skipping a malformed line: %s", path, line, reason)
    if skipped is not None:
        skipped.append((line, reason))


def _parse_line(raw: bytes, number: int, parse: Parse | None) -> tuple[Any, str | None]:
    """(record, None), (_BLANK, None) for a blank line, or (None, why the line is malformed)."""
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM (Windows editors) is not data
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); save the file as UTF-8"
    if not text.strip():
        return _BLANK, None
    torn = "" if raw.endswith(b"\n") else TORN_HINT
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"invalid JSON ({err.msg} at column {err.colno}){torn}"
    except (ValueError, RecursionError) as err:  # syntax json accepts but cannot build: 5000 digits, deep nesting
        return None, f"invalid JSON ({err}){torn}"
    if not isinstance(data, dict):
        return None, f"expected a JSON object, got {type(data).__name__}"
    if parse is None:
        return data, None
    try:
        return parse(data), None
    except (TypeError, ValueError) as err:
        return None, str(err) or type(err).__name__


def repair_torn_tail(path: str | os.PathLike, *, parse: Parse | None = None) -> bool:
    """Cut a last line that a killed run left half-written (no final newline, not a valid record).

    Returns True if something was cut. A complete record that only lacks its newline is kept and
    the newline added. Only the end of the file is read, however long the file is. The cut record
    is not lost work: its key is no longer in the file, so a resumed run does it again.
    """
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return False
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return False
        start = _last_line_start(handle, size)
        handle.seek(start)
        tail = handle.read()
        record, reason = _parse_line(tail, 1 if start == 0 else 2, parse)
        if reason is None and record is not _BLANK:
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
            return False
        logger.warning("%s: cutting a half-written last line (%d bytes) left by an interrupted run", path, len(tail))
        handle.truncate(start)
        return True


def _last_line_start(handle, size: int) -> int:
    position = size
    while position > 0:
        step = min(_TAIL_BLOCK, position)
        position -= step
        handle.seek(position)
        newline = handle.read(step).rfind(b"\n")
        if newline >= 0:
            return position + newline + 1
    return 0


def _dumps(record: Mapping[str, Any], default: Callable[[Any], Any] | None) -> str:
    if not isinstance(record, Mapping):
        raise TypeError(f"A JSONL record must be a mapping (a JSON object), got {type(record).__name__}")
    return json.dumps(record, ensure_ascii=False, default=default) + "\n"


class JsonlWriter:
    """Appends records to a JSONL file, one line each, flushed as it is written; safe to share between threads.

    The file is opened on the first `write`, after `repair_torn_tail` (with `parse`) has cut a
    half-written last line, so a resumed run appends on a clean line. `default` converts values
    JSON cannot hold (as in `json.dumps`). Use as a context manager, or call `close`.
    """

    def __init__(self, path: str | os.PathLike, *, parse: Parse | None = None,
                 default: Callable[[Any], Any] | None = None):
        self.path = Path(path)
        self.written = 0
        self._parse, self._default = parse, default
        self._lock = threading.Lock()
        self._handle = None

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record as one line and flush it to the operating system."""
        line = _dumps(record, self._default)
        with self._lock:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                repair_torn_tail(self.path, parse=self._parse)
                self._handle = open(self.path, "a", encoding="utf-8")
            self._handle.write(line)
            self._handle.flush()
            self.written += 1

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]], *,
                default: Callable[[Any], Any] | None = None) -> Path:
    """Write `records` as a whole JSONL file, atomically: under a temporary name, then moved into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(_dumps(record, default))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
