"""The local inference engine's parts: batched decoding with a key/value cache kept across steps
(`decoding.Decoder`, shared by DSPy's local LMs and the distilled students) and the scheduler that
decodes concurrent requests together (`scheduler.BatchScheduler`)."""

from dd_prompting.local.decoding import Decoder
from dd_prompting.local.scheduler import BatchScheduler, Generation

__all__ = ["Decoder", "BatchScheduler", "Generation"]
