"""Estimate calls, tokens and cost of one problem before anything is spent: the structural estimate.

The program itself runs, with the real adapter, on a model whose engine calls nothing: the same
`CachingEngine` every model runs on, over the run's cache (read only), with a stand-in route. A call
already in the cache is answered from it (and is free), any other gets a stand-in reply whose length
a `ReplyProfile` sets, and its prompt (the request exactly as the adapter built it) and reply are
counted. So the estimate follows the program's real structure (one call for a direct answer, 1 + one
per sub-question for iterative decomposition), its real prompts (instructions, demos, earlier
steps), and what is already paid for.

A problem whose calls are in the cache is replayed: its real replies are measured (`Replay`), and
that is what a cell's `CostModel` (`dd_prompting.evals.budget`) learns reply lengths from.
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

from dd_prompting.models import CachingEngine, CachingLM, CallCache, CallIdentity, Pricing, chat_messages, recording

__all__ = ["Estimate", "Replay", "ReplyProfile", "PRIOR_PROFILE", "estimate_example", "count_tokens", "prior_seconds",
           "TYPICAL_OUTPUT_TOKENS", "TYPICAL_LIST_LENGTH"]

logger = logging.getLogger(__name__)

# The prior: stand-in reply lengths, in o200k tokens, by output field (per item for a list). GSM8K's Socratic test
# split (1319 problems) has 3.66 sub-questions per problem (median 3), of 9.7 tokens each, and answer steps of
# 20.4 tokens; its reference solutions run 75 tokens, and a model's chain of thought is longer.
TYPICAL_OUTPUT_TOKENS = {"reasoning": 120, "subanswer": 20, "subanswers": 20, "subquestions": 10, "answer": 3}
TYPICAL_LIST_LENGTH = 4
_DEFAULT_OUTPUT_TOKENS = 40


@dataclass(frozen=True)
class ReplyProfile:
    """How long a model's replies are: tokens per output field (per item of a list), and items per list.

    `PRIOR_PROFILE` holds the typical lengths above; a cell's `CostModel` learns its own from the
    replies in the cache (a pilot's, or an earlier run's).
    """

    field_tokens: tuple[tuple[str, float], ...] = tuple(TYPICAL_OUTPUT_TOKENS.items())
    list_length: int = TYPICAL_LIST_LENGTH

    def tokens(self, name: str) -> int:
        return max(1, round(dict(self.field_tokens).get(name, _DEFAULT_OUTPUT_TOKENS)))

    def stand_in(self, signature: type[dspy.Signature]) -> dict[str, Any]:
        """A reply to `signature`'s step with this profile's lengths, in values the adapter can format."""
        outputs: dict[str, Any] = {}
        for name, field in signature.output_fields.items():
            annotation = field.annotation
            if typing.get_origin(annotation) in (list, tuple) or annotation in (list, tuple):
                outputs[name] = [f"{_filler(self.tokens(name) - 1)} {index}?"
                                 for index in range(1, self.list_length + 1)]
            elif annotation in (int, float):
                outputs[name] = 42
            elif name == "answer":
                outputs[name] = "42"
            else:
                outputs[name] = _filler(self.tokens(name))
        return outputs


PRIOR_PROFILE = ReplyProfile()


@dataclass
class Replay:
    """One problem's real replies found in the cache: token lengths by field, list lengths, what they were billed.

    `complete` when every call the program made was answered from the cache.
    """

    field_tokens: dict[str, list[int]]
    list_lengths: list[int]
    complete: bool
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None


@dataclass
class Estimate:
    """Calls, tokens and seconds for some examples; `cost` and `seconds` cover new calls only (cost None when
    prices are unknown). Counts are floats once a `CostModel` has scaled them."""

    examples: int = 0
    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0
    seconds: float = 0.0  # time the new calls take, one after another
    replay: Replay | None = None  # the replies found in the cache, when there were any

    def add(self, other: Estimate) -> None:
        self.seconds += other.seconds
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
        step = _STEP.get()
        step.stand_ins += 1
        text = step.adapter.format_assistant_message_content(step.signature, step.profile.stand_in(step.signature))
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


@dataclass
class _Step:
    """The step being estimated: the stand-in route answers in its adapter's format, with the profile's lengths."""

    adapter: dspy.Adapter
    signature: type[dspy.Signature]
    profile: ReplyProfile
    stand_ins: int = 0


_STEP: ContextVar[_Step] = ContextVar("dd_prompting_estimated_step")


def _estimating_lm(identity: CallIdentity, pricing: Pricing, token_model: str, cache: CallCache | None) -> CachingLM:
    engine = CachingEngine(_StandInRoute(token_model), cache=_ReadOnlyCache(cache), pricing=pricing,
                           identity=identity, retries=0)
    settings = dict(identity.settings)
    return CachingLM.around(engine, identity.model, temperature=settings.get("temperature"),
                            max_tokens=settings.get("max_tokens"))


class _EstimatingAdapter(dspy.Adapter):
    """Runs each step with the real adapter, on a model whose engine answers from the cache or a stand-in."""

    def __init__(self, base: dspy.Adapter, lms: dict[Any, CachingLM], profile: ReplyProfile):
        super().__init__()
        self.base = base
        self.lms = lms
        self.profile = profile
        self.stand_ins = 0
        self.replies: list[tuple[type[dspy.Signature], list[dict[str, Any]]]] = []  # steps answered from the cache

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        # A step run by another model (a hybrid pair's decomposer) is looked up and priced as that model.
        step_lm = self.lms.get(signature, self.lms[None])
        step = _Step(self.base, signature, self.profile)
        token = _STEP.set(step)
        try:
            outputs = self.base(step_lm, lm_kwargs, signature, demos, inputs)
        except Exception as err:  # a cached reply the real run would fail on; the estimate goes on
            logger.debug("estimate: %s on a cached reply; counting a stand-in instead", type(err).__name__)
            return [self.profile.stand_in(signature)]
        finally:
            _STEP.reset(token)
            self.stand_ins += step.stand_ins
        if not step.stand_ins:
            self.replies.append((signature, outputs))
        return outputs

    async def acall(self, lm, lm_kwargs, signature, demos, inputs):
        return self(lm, lm_kwargs, signature, demos, inputs)


def _filler(tokens: int) -> str:
    # One short English word is about one token.
    return " ".join(["step"] * max(1, tokens))


def _measure(replies, token_model: str) -> tuple[dict[str, list[int]], list[int]]:
    """Token lengths of real replies by output field (each item of a list), and the lengths of their lists."""
    fields: dict[str, list[int]] = {}
    lists: list[int] = []
    for _, outputs in replies:
        for output in outputs[:1]:
            for name, value in output.items():
                if isinstance(value, (list, tuple)):
                    lists.append(len(value))
                    fields.setdefault(name, []).extend(count_tokens(token_model, str(item)) for item in value)
                elif value is not None:
                    fields.setdefault(name, []).append(count_tokens(token_model, str(value)))
    return fields, lists[:1]  # the first list a problem writes (its decomposition) sets how many steps follow


def _sum_cost(calls) -> float | None:
    costs = [call.cost for call in calls]
    return None if any(cost is None for cost in costs) else float(sum(costs))


def estimate_example(program: dspy.Module, inputs: dict[str, Any], *, adapter: dspy.Adapter, token_model: str,
                     identity: CallIdentity, cache: CallCache | None, pricing: Pricing,
                     priced_as: dict[type[dspy.Signature], tuple[CallIdentity, Pricing, str]] | None = None,
                     profile: ReplyProfile = PRIOR_PROFILE) -> Estimate:
    """Run `program` on one example without calling any model, and count what it would cost.

    `priced_as` maps a predictor's signature to the (identity, pricing, token model) of another
    model that runs that step. `profile` sets the lengths of stand-in replies. The replies found
    in the cache are measured into `Estimate.replay`.
    """
    lms: dict[Any, CachingLM] = {None: _estimating_lm(identity, pricing, token_model, cache)}
    for signature, (other, other_pricing, other_tokens) in (priced_as or {}).items():
        lms[signature] = _estimating_lm(other, other_pricing, other_tokens, cache)
    estimating = _EstimatingAdapter(adapter, lms, profile)
    with recording() as log, dspy.context(lm=lms[None], adapter=estimating):
        program(**inputs)
    new = [call for call in log.calls if not call.cached]
    cached = [call for call in log.calls if call.cached]
    replay = None
    if estimating.replies:
        fields, lists = _measure(estimating.replies, token_model)
        replay = Replay(field_tokens=fields, list_lengths=lists, complete=not new and not estimating.stand_ins,
                        calls=len(cached), prompt_tokens=sum(call.prompt_tokens for call in cached),
                        completion_tokens=sum(call.completion_tokens for call in cached), cost=_sum_cost(cached))
    completion_tokens = sum(call.completion_tokens for call in new)
    return Estimate(
        examples=1,
        calls=len(log.calls),
        cached_calls=len(cached),
        prompt_tokens=sum(call.prompt_tokens for call in new),
        completion_tokens=completion_tokens,
        cost=_sum_cost(new),
        seconds=prior_seconds(len(new), completion_tokens),
        replay=replay,
    )


# The prior for time: an API call's latency and a decoding speed; a pilot or finished rows replace them.
PRIOR_SECONDS_PER_CALL = 1.0
PRIOR_SECONDS_PER_OUTPUT_TOKEN = 0.02


def prior_seconds(calls: int, completion_tokens: float) -> float:
    """Seconds that `calls` new calls writing `completion_tokens` take one after another, by the prior."""
    return calls * PRIOR_SECONDS_PER_CALL + completion_tokens * PRIOR_SECONDS_PER_OUTPUT_TOKEN
