"""The text a local model continues: its chat template, or plain turns for a base model.

One renderer for inference (`TransformersEngine`) and for fine-tuning on DSPy's calls
(`dd_prompting.distill.training.provider`), so a model is trained on exactly the prompts it will be sent.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["render_prompt", "request_turns", "chooses_chat_template", "DSPY_CHAT_FORMAT", "trained_on_dspy_chat"]


def render_prompt(tokenizer, system: str | None, messages: list[tuple[str, str]], *,
                  use_chat_template: bool | None = None) -> str:
    """The text a model continues after `messages`: its chat template, or plain turns for a base model.

    One function for inference (`TransformersEngine`) and for fine-tuning on DSPy's calls
    (`dd_prompting.distill.training.provider`), so a model is trained on exactly the prompts it will be sent.

    >>> class NoTemplate: chat_template = None
    >>> render_prompt(NoTemplate(), "Be brief.", [("user", "Hi?"), ("assistant", "Hello."), ("user", "Bye?")])
    'Be brief.\\n\\nHi?\\nHello.\\n\\nBye?\\n'
    """
    if use_chat_template is None:
        use_chat_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template:
        chat = ([{"role": "system", "content": system}] if system else []) + [
            {"role": role, "content": content} for role, content in messages
        ]
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    parts = [system] if system else []
    turn = []
    for role, content in messages:
        turn.append(content)
        if role == "assistant":
            parts.append("\n".join(turn))
            turn = []
    if turn:
        parts.append("\n".join(turn) + "\n")
    return "\n\n".join(parts)


def request_turns(request) -> tuple[str | None, list[tuple[str, str]]]:
    """A DSPy request's system text and (role, text) turns, as `render_prompt` takes them."""
    system = request.system if isinstance(request.system, str) or request.system is None else "".join(
        part.text for part in request.system)
    return system, [(message.role, message.text or "") for message in request.messages]


def chooses_chat_template(tokenizer, name: str, use_chat_template: bool | None) -> bool:
    """Whether prompts go through the tokenizer's chat template: as asked, else when it has one."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template and not has_template:
        raise ValueError(f"use_chat_template=True, but the tokenizer of {name!r} has no chat template.")
    return has_template if use_chat_template is None else use_chat_template


# What `student.json` says when a model was fine-tuned on DSPy's chat format (dd_prompting.distill.training.provider).
DSPY_CHAT_FORMAT = "dspy_chat"


def trained_on_dspy_chat(model_name_or_path: str | Path) -> bool:
    """True for a directory holding a model fine-tuned on DSPy's chat-format prompts."""
    metadata = Path(str(model_name_or_path)) / "student.json"
    if not metadata.is_file():
        return False
    try:
        return json.loads(metadata.read_text(encoding="utf-8")).get("prompt_format") == DSPY_CHAT_FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


