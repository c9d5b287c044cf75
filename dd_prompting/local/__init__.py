"""Local models in this process: a transformers causal LM as a DSPy engine and LM.

- `lm.py`: `local_lm(...)` / `smollm2_lm(...)`, the `dspy.LM` users build (`LocalLM`);
- `engine.py`: `TransformersEngine`, the DSPy engine (`complete(request) -> Response`) it runs on;
- `scheduler.py`: `BatchScheduler`, which decodes concurrent requests together;
- `decoding.py`: `Decoder`, batched decoding with a key/value cache kept across steps (shared with the
  distilled students), and `prefix_cache.py`, prompt prefixes kept across batches;
- `prompts.py`: the text a model continues (chat template or plain turns), for inference and fine-tuning.
"""

from dd_prompting.local.decoding import Decoder, context_limit
from dd_prompting.local.engine import AsyncTransformersEngine, TransformersEngine
from dd_prompting.local.lm import LocalLM, local_lm, smollm2_gguf_path, smollm2_lm
from dd_prompting.local.prefix_cache import PrefixCache
from dd_prompting.local.prompts import DSPY_CHAT_FORMAT, render_prompt, trained_on_dspy_chat
from dd_prompting.local.scheduler import BatchScheduler, Generation

__all__ = [
    "local_lm",
    "smollm2_lm",
    "smollm2_gguf_path",
    "LocalLM",
    "TransformersEngine",
    "AsyncTransformersEngine",
    "BatchScheduler",
    "Generation",
    "Decoder",
    "PrefixCache",
    "context_limit",
    "render_prompt",
    "trained_on_dspy_chat",
    "DSPY_CHAT_FORMAT",
]
