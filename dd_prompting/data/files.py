"""Rows of a data file a user brings: `.jsonl`, `.json` (a list of objects) or `.csv`, each with its line number.

Every row comes with the line it starts on, so whoever checks its fields can name `path:line`.
JSONL goes through `dd_prompting.data.jsonl` (its one malformed-line policy). CSV is read as
`utf-8-sig`: Excel's "CSV UTF-8" starts the file with a byte-order mark, which would otherwise
become part of the first column's name (`'\\ufeffBody'`). Bytes that are not UTF-8 are an error
naming the file and the line they are on.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dd_prompting.data.jsonl import on_malformed, read_jsonl

__all__ = ["FORMATS", "read_rows"]

FORMATS = ("jsonl", "json", "csv")


def read_rows(
    path: str | os.PathLike,
    fmt: str | None = None,
    *,
    skip_malformed: bool = False,
    skipped: list[tuple[int, str]] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line number, row)` for every record of a .jsonl, .json (a list of objects) or .csv file.

    `fmt` overrides the file's suffix. A malformed row (bad JSON, not an object, a CSV row with
    the wrong number of fields) raises `MalformedLineError` naming `path:line`; with
    `skip_malformed` it is logged and appended to `skipped` instead. A .json file that is not a
    list, and bytes that are not UTF-8, are errors naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Dataset file not found: {path}")
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise ValueError(f"{path}: unknown dataset format {fmt!r}; use a .json, .jsonl or .csv file")
    if fmt == "jsonl":
        return read_jsonl(path, skip_malformed=skip_malformed, skipped=skipped)
    text = _decode(path)
    rows = _json_rows(path, text) if fmt == "json" else _csv_rows(path, text)
    return _apply_policy(path, rows, skip_malformed, skipped)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}); save the file as UTF-8"
        ) from err


def _apply_policy(path: Path, rows, skip_malformed: bool, skipped: list | None):
    # `rows` yields (line, row), or (line, reason) for a malformed row, which gets the one JSONL policy.
    for line, row_or_reason in rows:
        if isinstance(row_or_reason, str):
            on_malformed(path, line, row_or_reason, skip_malformed=skip_malformed, skipped=skipped)
        else:
            yield line, row_or_reason


def _json_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    # Decoded item by item (not json.loads of the whole file) to know the line each object starts on.
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if position >= len(text) or text[position] != "[":
        raise ValueError(f"{path}:1: a .json dataset must be a list of objects ([{{...}}, ...])")
    position = _skip_space(text, position + 1)
    if position < len(text) and text[position] == "]":
        return
    while True:
        line = text.count("\n", 0, position) + 1
        try:
            row, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from err
        yield line, row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"
        position = _skip_space(text, position)
        if position < len(text) and text[position] == ",":
            position = _skip_space(text, position + 1)
            continue
        if position < len(text) and text[position] == "]":
            return
        line = text.count("\n", 0, position) + 1
        raise ValueError(f"{path}:{line}: expected ',' or ']' between list items")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:
        return
    width = len(reader.fieldnames)
    for row in reader:
        if None in row or any(value is None for value in row.values()):
            got = width + len(row.get(None) or []) - sum(value is None for value in row.values())
            yield reader.line_num, f"the row has {got} fields, the header has {width}"
        else:
            yield reader.line_num, row
