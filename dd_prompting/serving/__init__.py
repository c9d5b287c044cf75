"""Models served elsewhere: vLLM, SGLang or any OpenAI-compatible `/v1/completions`, called with token-id prompts.

`ServedModel` sends the exact token ids a model was trained to see and reads its reply as token ids, so a
server's prefix cache reuses every block an earlier step computed; servers that take text only are reached
through the text path, said once in the log.
"""

from dd_prompting.serving.client import (
    Completion,
    MalformedReply,
    ServedModel,
    ServerError,
    ServingStats,
    describe_serving,
)
from dd_prompting.serving.engine import AsyncServedEngine, ServedEngine

__all__ = ["ServedModel", "ServedEngine", "AsyncServedEngine", "Completion", "ServerError", "MalformedReply",
           "ServingStats", "describe_serving"]
