"""What a model's tokens cost: the config's own prices per million tokens, else litellm's price map."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dd_prompting.models.config import ModelConfig

__all__ = ["Pricing", "lookup_pricing", "lookup_model_pricing", "batch_pricing"]

# What batch APIs charge where no batch price is listed: OpenAI's, Anthropic's and most others' half price.
BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class Pricing:
    """USD per token, with where the price came from. None means unknown (not free)."""

    input_per_token: float | None
    output_per_token: float | None
    source: str

    @property
    def known(self) -> bool:
        return self.input_per_token is not None and self.output_per_token is not None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if not self.known:
            return None
        return prompt_tokens * self.input_per_token + completion_tokens * self.output_per_token


def lookup_pricing(config: ModelConfig) -> Pricing:
    """The price of a model: the config's own, else litellm's bundled price map; local models are free."""
    if config.input_cost_per_million is not None:
        return Pricing(config.input_cost_per_million / 1e6, config.output_cost_per_million / 1e6, "config")
    if config.kind != "api":
        return Pricing(0.0, 0.0, "local (free)")
    return lookup_model_pricing(config.model)


def batch_pricing(config: ModelConfig) -> Pricing:
    """What a model's tokens cost through its provider's batch API: litellm's batch prices where it lists them,
    else half the synchronous price (the source says which)."""
    if config.input_cost_per_million is None and config.kind == "api":
        info = _price_entry(config.model, "input_cost_per_token_batches", "output_cost_per_token_batches")
        if info is not None:
            name, entry = info
            return Pricing(float(entry["input_cost_per_token_batches"]), float(entry["output_cost_per_token_batches"]),
                           f"litellm batch prices: {name}")
    pricing = lookup_pricing(config)
    if not pricing.known:
        return pricing
    return Pricing(pricing.input_per_token * BATCH_DISCOUNT, pricing.output_per_token * BATCH_DISCOUNT,
                   f"{pricing.source}, at half price (no batch price listed)")


def lookup_model_pricing(model: str) -> Pricing:
    """A model string's price in litellm's bundled price map (also tried without its provider prefix)."""
    info = _price_entry(model, "input_cost_per_token", "output_cost_per_token")
    if info is None:
        return Pricing(None, None, "unknown")
    name, entry = info
    return Pricing(float(entry["input_cost_per_token"]), float(entry["output_cost_per_token"]),
                   f"litellm price map: {name}")


def _price_entry(model: str, *fields: str) -> tuple[str, dict] | None:
    """The name and entry of `model` in litellm's bundled price map that has `fields` (also tried without its
    provider prefix)."""
    # litellm's import fetches its price map from the network unless told to use the bundled copy.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    names = [model, model.split("/", 1)[-1], model.rsplit("/", 1)[-1]]
    for name in dict.fromkeys(names):
        info = litellm.model_cost.get(name)
        if info and all(info.get(name_) is not None for name_ in fields):
            return name, info
    return None
