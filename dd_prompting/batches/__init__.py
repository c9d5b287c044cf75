"""Provider batch APIs: many model calls answered within hours at half the price.

`BatchRounds` runs a job in rounds over the call cache: a pass collects the calls the cache cannot answer
(`Round`), they go out as one batch, and the replies come back into the cache for the next pass. `OpenAIBatches`
speaks OpenAI's Files and Batch APIs (and the compatible ones: Azure, a litellm proxy in front of vLLM),
`AnthropicBatches` Anthropic's Message Batches,
`BatchManifest` records the batches a run has pending so a restarted run re-attaches to them, and `BodyCapture`
gives the exact body a model's synchronous route would send, for a batch line.
"""

from dd_prompting.batches.anthropic_batches import AnthropicBatches
from dd_prompting.batches.capture import BodyCapture, CapturedCall
from dd_prompting.batches.manifest import MANIFEST_FILE, BatchManifest
from dd_prompting.batches.openai_batches import BatchResults, BatchStatus, OpenAIBatches
from dd_prompting.batches.providers import batch_api_for, cancel_batches_in, cancel_pending, check_batchable
from dd_prompting.batches.round import BatchLineFailed, CallPending, Round, is_pending
from dd_prompting.batches.rounds import DEFAULT_POLL_SECONDS, BatchRounds, RoundsSummary

__all__ = ["BatchRounds", "RoundsSummary", "Round", "CallPending", "BatchLineFailed", "is_pending", "OpenAIBatches",
           "AnthropicBatches", "BatchStatus", "BatchResults", "BatchManifest", "MANIFEST_FILE", "BodyCapture",
           "CapturedCall", "batch_api_for", "check_batchable", "cancel_pending", "cancel_batches_in",
           "DEFAULT_POLL_SECONDS"]
