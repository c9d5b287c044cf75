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

The adapter speaks DSPy's request/response LM contract: it builds a `dspy.lm15.Request` itself
(`build_request`), calls `lm(request)` and parses `response.text`, so it depends on no message
dictionaries (DSPy 3.5 removes `lm(messages=...)`). `render_plain_text` is the one renderer of a
signature, demos and inputs into what a plain model sees; the token estimate and the fine-tuning
rows of `TransformersProvider` use it too, so their prompts are the ones sent at inference.
"""

from __future__ import annotations

import json
import re
import typing
from typing import Any

from dataclasses import dataclass

import dspy
from dspy.adapters.utils import parse_value
from dspy.lm15 import Config, Message, Request
from dspy.signatures.signature import Signature
from dspy.utils.exceptions import AdapterParseError

from dd_prompting.answers import INVALID, extract_answer
from dd_prompting.models.sampling import sample_scope

__all__ = ["PlainTextAdapter", "PlainTextPrompt", "render_plain_text", "prefers_plain_text"]

_LIST_MARKER = re.compile(r"^\s*(?:\d+\s*[.):]|[-*•]|Q\d+\s*[:.)]|Step\s*\d+\s*[:.)])\s*", re.IGNORECASE)
# OpenAI-compatible APIs accept at most four stop sequences.
_MAX_STOPS = 4
# The generation settings a plain-text call passes on, by their OpenAI names (the names in `lm.kwargs`).
_SETTINGS = ("temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty")


@dataclass(frozen=True)
class PlainTextPrompt:
    """A plain-text prompt: the instructions, then (role, text) turns, the last one the user's."""

    system: str
    turns: tuple[tuple[str, str], ...]

    def text(self, tokenizer: Any = None, *, use_chat_template: bool | None = None) -> str:
        """The text a local model continues: its chat template, or the turns joined for a base model."""
        from dd_prompting.local.prompts import render_prompt

        return render_prompt(tokenizer, self.system, list(self.turns), use_chat_template=use_chat_template)

    def messages(self) -> list[dict[str, str]]:
        """As OpenAI-style chat dictionaries."""
        return [{"role": "system", "content": self.system}] + [
            {"role": role, "content": content} for role, content in self.turns
        ]


def render_plain_text(signature: type[Signature], demos: list[dict[str, Any]], inputs: dict[str, Any]) -> PlainTextPrompt:
    """The prompt a plain model sees for `signature`: its instructions, each complete demo as a user turn
    (inputs, then the first output's header) and an assistant turn (the outputs), then the inputs."""
    adapter = PlainTextAdapter()
    turns: list[tuple[str, str]] = []
    for demo in demos:
        if all(_get(demo, name) is not None for name in signature.fields):
            turns.append(("user", adapter.format_inputs(signature, demo)))
            turns.append(("assistant", adapter.format_outputs(signature, demo)))
    turns.append(("user", adapter.format_inputs(signature, inputs)))
    return PlainTextPrompt(signature.instructions, tuple(turns))


def prefers_plain_text(lm: Any) -> bool:
    """True for LMs that should be prompted in plain text: our in-process transformers models."""
    if lm is None:
        return False
    if getattr(lm, "prefers_plain_text", False):
        return True
    return bool(getattr(getattr(lm, "engine", None), "prefers_plain_text", False))


class PlainTextAdapter(dspy.Adapter):
    """Plain few-shot text with stop sequences and lenient parsing, for small models.

    Use it for any `dspy.LM`: `dspy.configure(adapter=PlainTextAdapter())` or
    `dspy.context(adapter=PlainTextAdapter())`. `DecomposedSolver` picks it by itself for local models.
    """

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        request, samples = self.build_request(lm, lm_kwargs, signature, demos, inputs)
        with self._samples(samples):
            return [self._values(signature, lm(request, **kwargs)) for kwargs in samples.calls]

    async def acall(self, lm, lm_kwargs, signature, demos, inputs):
        request, samples = self.build_request(lm, lm_kwargs, signature, demos, inputs)
        with self._samples(samples):
            return [self._values(signature, await lm.acall(request, **kwargs)) for kwargs in samples.calls]

    def build_request(self, lm, lm_kwargs: dict[str, Any], signature: type[Signature], demos: list[dict[str, Any]],
                      inputs: dict[str, Any]) -> tuple[Request, _Samples]:
        """The request for one call, and its samples.

        Settings are the LM's own (`lm.kwargs`) overridden by the call's (`lm_kwargs`), as an LM merges
        them: `max_tokens`, `temperature`, `top_p`, `seed`, ...; `stop` defaults to `stop_sequences`.
        `n` asks for that many samples: the request is sent `n` times, each but the first with its own
        `rollout_id`, so no response cache hands every sample the first one.
        """
        settings = {**(getattr(lm, "kwargs", None) or {}), **lm_kwargs}
        prompt = render_plain_text(signature, demos, inputs)
        config = Config(
            max_tokens=settings.get("max_tokens") or settings.get("max_completion_tokens"),
            stop=tuple(lm_kwargs.get("stop") or self.stop_sequences(signature, demos)),
            **{name: settings[name] for name in _SETTINGS if settings.get(name) is not None},
        )
        request = Request(
            model=lm.model,
            system=prompt.system,
            messages=tuple(Message.user(text) if role == "user" else Message.assistant(text)
                           for role, text in prompt.turns),
            config=config,
        )
        n = settings.get("n") or settings.get("num_generations") or 1
        return request, _Samples(n=int(n), rollout_id=settings.get("rollout_id"),
                                 temperature=settings.get("temperature"))

    @staticmethod
    def _samples(samples: _Samples):
        # One call's samples share one scope, so a caching engine numbers them 0, 1, ... as it would for n.
        return sample_scope(rollout_id=samples.rollout_id, n=samples.n)

    def _values(self, signature: type[Signature], response) -> dict[str, Any]:
        text = response.text
        if not text:
            raise AdapterParseError(adapter_name=type(self).__name__, signature=signature, lm_response=str(text),
                                    message="The LM returned an empty response.")
        return self.parse(signature, text)

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
        # Only DSPy 3.4's fine-tuning data (`format_finetune_data`) reads this; calls use `build_request`.
        return render_plain_text(signature, demos, inputs).messages()

    def format_assistant_message_content(self, signature: type[Signature], outputs: dict[str, Any],
                                         missing_field_message: str | None = None) -> str:
        return self.format_outputs(signature, outputs)

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


@dataclass(frozen=True)
class _Samples:
    n: int = 1
    rollout_id: Any = None
    temperature: float | None = None

    @property
    def calls(self) -> list[dict[str, Any]]:
        """Each sample's call arguments: a distinct `rollout_id` for all but the first (none at temperature 0)."""
        if self.n <= 1:
            return [{}]
        base = self.rollout_id if isinstance(self.rollout_id, int) else 0
        return [{}] + [{} if self.temperature == 0 else {"rollout_id": base + index} for index in range(1, self.n)]


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
