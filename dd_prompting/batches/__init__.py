"""Provider batch APIs: many model calls answered within hours at half the price.

`OpenAIBatches` speaks OpenAI's Files and Batch APIs (and the compatible ones: Azure, a litellm proxy in front of
vLLM), `BatchManifest` records the batches a run has pending so a restarted run re-attaches to them, and
`BodyCapture` gives the exact body a model's synchronous route would send, for a batch line. The rounds
that turn a run's uncached calls into batches (issue 27) are built on these.
"""

from dd_prompting.batches.capture import BodyCapture, CapturedCall
from dd_prompting.batches.manifest import BatchManifest
from dd_prompting.batches.openai_batches import BatchResults, BatchStatus, OpenAIBatches

__all__ = ["OpenAIBatches", "BatchStatus", "BatchResults", "BatchManifest", "BodyCapture", "CapturedCall"]
