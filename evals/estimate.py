"""Estimate calls, tokens and cost before anything is spent.

The program itself runs, with an adapter that formats each prompt exactly as the real adapter would
and counts its tokens, but calls no model: a call already in the cache is answered from it (and is
free), any other gets a stand-in reply of typical length. So the estimate follows the program's real
structure (one call for a direct answer, 1 + one per sub-question for iterative decomposition),
its real prompts (instructions, demos, earlier steps), and what is already paid for.
"""

from __future__ import annotations

import logging
import re
import typing
from dataclasses import dataclass
from typing import Any

import dspy

from dd_prompting.models import CallCache, CallIdentity, Pricing

__all__ = ["Estimate", "estimate_example", "count_tokens", "TYPICAL_OUTPUT_TOKENS"]

logger = logging.getLogger(__name__)

# Stand-in reply lengths, in tokens, by output field; GSM8K Socratic solutions average 3.7 sub-questions.
TYPICAL_OUTPUT_TOKENS = {"reasoning": 120, "subanswer": 30, "subanswers": 30, "subquestions": 15, "answer": 3}
TYPICAL_LIST_LENGTH = 4
_DEFAULT_OUTPUT_TOKENS = 40


@dataclass
class Estimate:
    """Calls and tokens for some examples; `cost` covers new calls only (None when prices are unknown)."""

    examples: int = 0
    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0

    def add(self, other: Estimate) -> None:
        self.examples += other.examples
        self.calls += other.calls
        self.cached_calls += other.cached_calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost = None if self.cost is None or other.cost is None else self.cost + other.cost


_OFFLINE_TOKENIZERS = re.compile(r"gpt|(^|/)o\d|claude|text-embedding|davinci", re.IGNORECASE)


def count_tokens(model: str, text_or_messages: Any) -> int:
    """Tokens by litellm's counter: OpenAI's and Anthropic's tokenizers for their models, else GPT-4o's.

    litellm would fetch other tokenizers (Llama's, for one) from the Hugging Face hub; an estimate must
    not touch the network, and GPT-4o's count is close enough for a budget.
    """
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    if not _OFFLINE_TOKENIZERS.search(model):
        model = "gpt-4o"
    try:
        if isinstance(text_or_messages, str):
            return int(litellm.token_counter(model=model, text=text_or_messages))
        return int(litellm.token_counter(model=model, messages=text_or_messages))
    except Exception as err:  # an unknown tokenizer must not stop an estimate; characters / 4 is the usual rule
        logger.debug("token_counter failed for %s (%s); using characters / 4", model, err)
        text = text_or_messages if isinstance(text_or_messages, str) else " ".join(
            str(m.get("content", "")) for m in text_or_messages)
        return max(1, len(text) // 4)


class _NoCallLM(dspy.BaseLM):
    """Stands in for the model during an estimate; the estimating adapter never calls it."""

    def __init__(self, model: str):
        super().__init__(model=model, cache=False, num_retries=0)

    def __call__(self, *args, **kwargs):
        raise RuntimeError("An estimate must not call a model")


class _EstimatingAdapter(dspy.Adapter):
    def __init__(self, base: dspy.Adapter, *, token_model: str, identity: CallIdentity,
                 cache: CallCache | None, pricing: Pricing, priced_as: dict | None = None):
        super().__init__()
        self.priced_as = priced_as or {}
        self.base = base
        self.token_model = token_model
        self.identity = identity
        self.cache = cache
        self.pricing = pricing
        self.estimate = Estimate(cost=0.0)

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        # A step run by another model (a hybrid pair's decomposer) is looked up and priced as that model.
        identity, pricing, token_model = self.priced_as.get(signature, (self.identity, self.pricing, self.token_model))
        kwargs = dict(lm_kwargs)
        if hasattr(self.base, "stop_sequences"):  # PlainTextAdapter adds its stops to the call
            kwargs.setdefault("stop", self.base.stop_sequences(signature))
        messages = self.base.format(signature, demos, inputs)
        self.estimate.calls += 1
        record = self.cache.get(identity.key(None, messages, kwargs)) if self.cache is not None else None
        if record is not None:
            self.estimate.cached_calls += 1
            text = record["outputs"][0] if record["outputs"] else ""
            text = text.get("text", "") if isinstance(text, dict) else str(text)
            try:
                return [self.base.parse(signature, text)]
            except Exception:  # the real run would fall back or fail here; the estimate goes on
                return [_stand_in(signature)]
        outputs = _stand_in(signature)
        prompt_tokens = count_tokens(token_model, messages)
        completion_tokens = count_tokens(token_model, "\n".join(_render(v) for v in outputs.values()))
        completion_tokens += 8 * len(outputs)  # field headers
        self.estimate.prompt_tokens += prompt_tokens
        self.estimate.completion_tokens += completion_tokens
        cost = pricing.cost(prompt_tokens, completion_tokens)
        self.estimate.cost = None if cost is None or self.estimate.cost is None else self.estimate.cost + cost
        return [outputs]

    async def acall(self, lm, lm_kwargs, signature, demos, inputs):
        return self(lm, lm_kwargs, signature, demos, inputs)


def _render(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "\n".join(str(item) for item in value)
    return str(value)


def _filler(tokens: int) -> str:
    # One short English word is about one token.
    return " ".join(["step"] * max(1, tokens))


def _stand_in(signature: type[dspy.Signature]) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for name, field in signature.output_fields.items():
        annotation = field.annotation
        tokens = TYPICAL_OUTPUT_TOKENS.get(name, _DEFAULT_OUTPUT_TOKENS)
        if typing.get_origin(annotation) in (list, tuple) or annotation in (list, tuple):
            outputs[name] = [f"{_filler(tokens)} {index}?" for index in range(1, TYPICAL_LIST_LENGTH + 1)]
        elif annotation in (int, float):
            outputs[name] = 42
        elif name == "answer":
            outputs[name] = "42"
        else:
            outputs[name] = _filler(tokens)
    return outputs


def estimate_example(program: dspy.Module, inputs: dict[str, Any], *, adapter: dspy.Adapter, token_model: str,
                     identity: CallIdentity, cache: CallCache | None, pricing: Pricing,
                     priced_as: dict[type[dspy.Signature], tuple[CallIdentity, Pricing, str]] | None = None) -> Estimate:
    """Run `program` on one example without calling any model, and count what it would cost.

    `priced_as` maps a predictor's signature to the (identity, pricing, token model) of another
    model that runs that step.
    """
    estimating = _EstimatingAdapter(adapter, token_model=token_model, identity=identity, cache=cache,
                                    pricing=pricing, priced_as=priced_as)
    with dspy.context(lm=_NoCallLM(identity.model), adapter=estimating):
        program(**inputs)
    estimating.estimate.examples = 1
    return estimating.estimate
