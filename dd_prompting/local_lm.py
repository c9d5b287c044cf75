"""Deprecated module path: local models live in `dd_prompting.local` since 0.2.0.

    from dd_prompting import local_lm, smollm2_lm, TransformersEngine   # as always; no warning
    from dd_prompting.local import render_prompt, MODEL_LOCK            # the new homes

Programs saved by dd-prompting 0.1.0 name their engine `dd_prompting.local_lm:TransformersEngine`
(DSPy saves an engine as `module:qualname`); they load through this module for one more release, with
a DeprecationWarning naming the new path. It goes in 0.3.0.
"""

from __future__ import annotations

import importlib
import warnings

_MOVED = {
    "TransformersEngine": "dd_prompting.local.engine",
    "AsyncTransformersEngine": "dd_prompting.local.engine",
    "default_device": "dd_prompting.local.engine",
    "LocalLM": "dd_prompting.local.lm",
    "local_lm": "dd_prompting.local.lm",
    "smollm2_lm": "dd_prompting.local.lm",
    "smollm2_gguf_path": "dd_prompting.local.lm",
    "SMOLLM2_GGUF": "dd_prompting.local.lm",
    "render_prompt": "dd_prompting.local.prompts",
    "trained_on_dspy_chat": "dd_prompting.local.prompts",
    "DSPY_CHAT_FORMAT": "dd_prompting.local.prompts",
    "PrefixCache": "dd_prompting.local.prefix_cache",
    "context_limit": "dd_prompting.local.decoding",
    "MODEL_LOCK": "dd_prompting.model_loading",
}

__all__ = sorted(_MOVED)


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module 'dd_prompting.local_lm' has no attribute {name!r}")
    warnings.warn(f"dd_prompting.local_lm.{name} moved to {_MOVED[name]}.{name} (this path goes in 0.3.0)",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
