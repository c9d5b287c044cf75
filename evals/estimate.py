"""Estimate calls, tokens and cost before anything is spent.

The program itself runs, with the real adapter, on a model whose engine calls nothing: the same
`CachingEngine` every model runs on, over the run's cache (read only), with a stand-in route. A call
already in the cache is answered from it (and is free), any other gets a stand-in reply of typical
length, and its prompt (the request exactly as the adapter built it) and reply are counted. So the estimate follows the program's real
structure (one call for a direct answer, 1 + one per sub-question for iterative decomposition),
its real prompts (instructions, demos, earlier steps), and what is already paid for.
"""

from __future__ import annotations

import logging
import re
import typing
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage

from dd_prompting.models import (AsyncCachingEngine, CachingEngine, CachingLM, CallCache, CallIdentity, Pricing,
                                 chat_messages, recording)

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


class _StandInRoute:
    """Answers every call the estimate makes with a stand-in reply of typical length, and counts its tokens.

    It stands where the model's route would, behind a `CachingEngine` on the run's cache (read only):
    so a call already paid for is found by the very key the real run would look it up by, and only
    the others are counted. The reply is written in the step's own format (`_STEP` says which), so the
    adapter parses it as it would a real one.
    """

    def __init__(self, token_model: str):
        self.token_model = token_model

    def complete(self, request) -> Response:
        adapter, signature = _STEP.get()
        text = adapter.format_assistant_message_content(signature, _stand_in(signature))
        usage = Usage(input_tokens=count_tokens(self.token_model, chat_messages(request)),
                      output_tokens=count_tokens(self.token_model, text))
        return Response(id="estimate", model=request.model, message=Message.assistant([TextPart(text)]),
                        finish_reason="stop", usage=usage)


class _ReadOnlyCache:
    """The run's cache as an estimate sees it: looked up, never written."""

    def __init__(self, cache: CallCache | None):
        self.cache = cache

    def get(self, key: str):
        return self.cache.get(key) if self.cache is not None else None

    def put(self, key: str, record) -> None:
        pass


# The step being estimated (its adapter and signature), for the stand-in route to answer in its format.
_STEP: ContextVar[tuple[dspy.Adapter, type[dspy.Signature]]] = ContextVar("dd_prompting_estimated_step")


def _estimating_lm(identity: CallIdentity, pricing: Pricing, token_model: str, cache: CallCache | None) -> CachingLM:
    engine = CachingEngine(_StandInRoute(token_model), cache=_ReadOnlyCache(cache), pricing=pricing,
                           identity=identity, retries=0)
    return CachingLM(identity.model, engine=engine, async_engine=AsyncCachingEngine(engine),
                     **{name: value for name, value in dict(identity.settings).items()
                        if name in ("temperature", "max_tokens") and value is not None})


class _EstimatingAdapter(dspy.Adapter):
    """Runs each step with the real adapter, on a model whose engine answers from the cache or a stand-in."""

    def __init__(self, base: dspy.Adapter, lms: dict[Any, CachingLM]):
        super().__init__()
        self.base = base
        self.lms = lms

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        # A step run by another model (a hybrid pair's decomposer) is looked up and priced as that model.
        step_lm = self.lms.get(signature, self.lms[None])
        token = _STEP.set((self.base, signature))
        try:
            return self.base(step_lm, lm_kwargs, signature, demos, inputs)
        except Exception as err:  # a cached reply the real run would fail on; the estimate goes on
            logger.debug("estimate: %s on a cached reply; counting a stand-in instead", type(err).__name__)
            return [_stand_in(signature)]
        finally:
            _STEP.reset(token)

    async def acall(self, lm, lm_kwargs, signature, demos, inputs):
        return self(lm, lm_kwargs, signature, demos, inputs)


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
    lms: dict[Any, CachingLM] = {None: _estimating_lm(identity, pricing, token_model, cache)}
    for signature, (other, other_pricing, other_tokens) in (priced_as or {}).items():
        lms[signature] = _estimating_lm(other, other_pricing, other_tokens, cache)
    with recording() as log, dspy.context(lm=lms[None], adapter=_EstimatingAdapter(adapter, lms)):
        program(**inputs)
    new = [call for call in log.calls if not call.cached]
    costs = [call.cost for call in new]
    return Estimate(
        examples=1,
        calls=len(log.calls),
        cached_calls=len(log.calls) - len(new),
        prompt_tokens=sum(call.prompt_tokens for call in new),
        completion_tokens=sum(call.completion_tokens for call in new),
        cost=None if any(cost is None for cost in costs) else float(sum(costs)),
    )
