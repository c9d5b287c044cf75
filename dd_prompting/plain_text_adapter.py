"""`PlainTextAdapter`: a prompt format that small language models can follow.

DSPy's ChatAdapter asks for `[[ ## field ## ]]` headers and JSON lists; a 135M model garbles the
headers and answers lists with code (measured: 0 of 10 decompositions parsed). A plain few-shot
layout is followed reliably by the same model:

    Problem: Maya picks 12 apples ...
    Subquestions:
    1. How many apples does Maya pick in the afternoon?
    2. ...

Each demo is a user turn (the inputs, then the header of the first output field) and an assistant
turn (the outputs). Generation stops before the model starts a new example, and parsing is lenient:
numbered, bulleted or one-per-line lists, numbers with units or currency, missing header on the
first field.
"""

from __future__ import annotations

import json
import re
import typing
from typing import Any

import dspy
from dspy.adapters.utils import parse_value
from dspy.signatures.signature import Signature
from dspy.utils.exceptions import AdapterParseError

from dd_prompting.answers import INVALID, extract_answer

__all__ = ["PlainTextAdapter", "prefers_plain_text"]

_LIST_MARKER = re.compile(r"^\s*(?:\d+\s*[.):]|[-*•]|Q\d+\s*[:.)]|Step\s*\d+\s*[:.)])\s*", re.IGNORECASE)
# OpenAI-compatible APIs accept at most four stop sequences.
_MAX_STOPS = 4


def prefers_plain_text(lm: Any) -> bool:
    """True for LMs that should be prompted in plain text: our in-process transformers models."""
    if lm is None:
        return False
    if getattr(lm, "prefers_plain_text", False):
        return True
    engine = getattr(lm, "_engine_spec", None)
    return bool(getattr(engine, "prefers_plain_text", False))


class PlainTextAdapter(dspy.Adapter):
    """Plain few-shot text with stop sequences and lenient parsing, for small models.

    Use it for any `dspy.LM`: `dspy.configure(adapter=PlainTextAdapter())` or
    `dspy.context(adapter=PlainTextAdapter())`. `DecomposedSolver` picks it by itself for local models.
    """

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        lm_kwargs = {"stop": self.stop_sequences(signature, demos), **lm_kwargs}
        return super().__call__(lm, lm_kwargs, signature, demos, inputs)

    async def acall(self, lm, lm_kwargs, signature, demos, inputs):
        lm_kwargs = {"stop": self.stop_sequences(signature, demos), **lm_kwargs}
        return await super().acall(lm, lm_kwargs, signature, demos, inputs)

    def stop_sequences(self, signature: type[Signature], demos: list[dict[str, Any]] = ()) -> list[str]:
        """Where the model has started a new example: a line that opens with an input field's header.

        When the only output is text and every demo answers it in one line, the line's end is the
        answer's end too: small models otherwise ramble on for the whole token budget.
        """
        stops = [f"\n{_header(name)}:" for name in signature.input_fields]
        (name, field), *others = signature.output_fields.items()
        one_line = [_get(demo, name) for demo in demos if _get(demo, name) is not None]
        if not others and field.annotation is str and one_line and all("\n" not in str(v) for v in one_line):
            stops = ["\n", *stops]
        return stops[:_MAX_STOPS]

    def format(self, signature: type[Signature], demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict]:
        messages = [{"role": "system", "content": signature.instructions}]
        for demo in demos:
            if all(_get(demo, name) is not None for name in signature.fields):
                messages.append({"role": "user", "content": self.format_inputs(signature, demo)})
                messages.append({"role": "assistant", "content": self.format_outputs(signature, demo)})
        messages.append({"role": "user", "content": self.format_inputs(signature, inputs)})
        return messages

    def format_inputs(self, signature: type[Signature], values: Any) -> str:
        lines = [_render(name, _get(values, name)) for name in signature.input_fields]
        first_output = next(iter(signature.output_fields))
        lines.append(f"{_header(first_output)}:")
        return "\n".join(lines)

    def format_outputs(self, signature: type[Signature], values: Any) -> str:
        names = list(signature.output_fields)
        first = _render_value(_get(values, names[0]))
        rest = [_render(name, _get(values, name)) for name in names[1:]]
        return "\n".join([first, *rest])

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        text = _cut_at_new_example(completion, signature)
        names = list(signature.output_fields)
        spans = _split_by_headers(text, names)
        parsed: dict[str, Any] = {}
        for name in names:
            if name not in spans:
                raise AdapterParseError(
                    adapter_name=type(self).__name__,
                    signature=signature,
                    lm_response=completion,
                    message=f"The output has no '{_header(name)}:' line for the field `{name}`.",
                    parsed_result=parsed,
                )
            annotation = signature.output_fields[name].annotation
            try:
                parsed[name] = _parse_typed(spans[name], annotation)
            except ValueError as err:
                raise AdapterParseError(
                    adapter_name=type(self).__name__,
                    signature=signature,
                    lm_response=completion,
                    message=f"Field `{name}`: {err}",
                    parsed_result=parsed,
                ) from err
        return parsed


def _header(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _get(values: Any, name: str) -> Any:
    try:
        return values[name] if name in values else None
    except TypeError:
        return getattr(values, name, None)


def _render(name: str, value: Any) -> str:
    rendered = _render_value(value)
    separator = "\n" if "\n" in rendered or isinstance(value, (list, tuple)) else " "
    return f"{_header(name)}:{separator}{rendered}"


def _render_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "\n".join(f"{index}. {_render_value(item)}" for index, item in enumerate(value, start=1))
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if hasattr(value, "model_dump"):
        return json.dumps(value.model_dump(), ensure_ascii=False)
    return str(value).strip()


def _cut_at_new_example(text: str, signature: type[Signature]) -> str:
    """Drop anything after the model starts another example, for backends that ignore stop sequences."""
    cut = len(text)
    for name in signature.input_fields:
        match = re.search(rf"^\s*{re.escape(_header(name))}\s*:", text, flags=re.MULTILINE | re.IGNORECASE)
        if match and match.start() > 0:
            cut = min(cut, match.start())
    return text[:cut]


def _split_by_headers(text: str, names: list[str]) -> dict[str, str]:
    """Each output field's text. The first field may come without its header (the prompt ended with it)."""
    found = []
    for name in names:
        match = re.search(rf"^[ \t*#]*{re.escape(_header(name))}[ \t*]*:", text, flags=re.MULTILINE | re.IGNORECASE)
        if match:
            found.append((match.start(), match.end(), name))
    found.sort()
    spans: dict[str, str] = {}
    first_start = found[0][0] if found else len(text)
    if names[0] not in {name for _, _, name in found}:
        spans[names[0]] = text[:first_start]
    for index, (_, end, name) in enumerate(found):
        stop = found[index + 1][0] if index + 1 < len(found) else len(text)
        spans[name] = text[end:stop]
    return spans


def _parse_typed(text: str, annotation: Any) -> Any:
    text = text.strip()
    origin = typing.get_origin(annotation)
    if annotation is str or annotation is None:
        return _first_paragraph(text)
    if origin in (list, tuple) or annotation in (list, tuple):
        return _parse_list(text)
    if annotation in (int, float):
        number = extract_answer(text)
        if number == INVALID:
            raise ValueError(f"expected a number, got {text[:80]!r}")
        value = float(number)
        return int(value) if annotation is int and value.is_integer() else value
    if annotation is bool:
        word = text.split()[0].strip(".,!").lower() if text else ""
        if word in ("yes", "true"):
            return True
        if word in ("no", "false"):
            return False
        raise ValueError(f"expected yes/no, got {text[:80]!r}")
    return parse_value(_first_paragraph(text), annotation)


def _first_paragraph(text: str) -> str:
    return re.split(r"\n\s*\n", text, maxsplit=1)[0].strip()


def _parse_list(text: str) -> list[str]:
    if text.startswith("[") and text.endswith("]"):
        try:
            items = json.loads(text)
            if isinstance(items, list):
                return [str(item).strip() for item in items if str(item).strip()]
        except json.JSONDecodeError:
            pass
    items = []
    for line in _first_block(text).splitlines():
        item = _LIST_MARKER.sub("", line, count=1).strip()
        if item:
            items.append(item)
    return items


def _first_block(text: str) -> str:
    # A list ends at the first blank line after it has begun.
    return re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0] if text.strip() else ""
