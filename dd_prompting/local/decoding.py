"""Batched decoding with one model, a key/value cache kept across calls, rows fed in chunks.

`Decoder` holds one model's state for a batch of rows: each row's token history, the key/value
cache and the attention mask. Rows are left-padded inside each chunk, so the padding of a
long-running batch sits between chunks; the attention mask hides it and the position ids count real
tokens only, so every row is computed as it would be alone. Two callers share it:
- the local engine's scheduler (`dd_prompting.local.scheduler`): independent requests decoded
  together, a shared prompt prefix encoded once (`expand`);
- the distilled students (`dd_prompting.distill.students.generation`): a problem's cache lives across the
  solver's steps, so step k encodes only the new sub-question.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["Decoder", "context_limit"]


def context_limit(model) -> int:
    """The number of positions a model (or its config, read without the weights) can attend over (2048 when the
    config does not say)."""
    config = getattr(model, "config", model)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048


class Decoder:
    """Greedy (or sampled) decoding of a batch of rows with one model, fed in chunks.

    With `reuse_cache`, the key/value cache lives across `feed` calls; without it, every `restart`
    drops the cache and the next `feed` re-encodes each row's whole history (the naive baseline).
    Tensors live on the model's device.
    """

    def __init__(self, model, tokenizer, *, rows: int, reuse_cache: bool = True, temperature: float = 0.0,
                 generator=None):
        import torch

        self.torch = torch
        self.model, self.tokenizer = model, tokenizer
        self.rows, self.reuse_cache = rows, reuse_cache
        self.temperature, self.generator = temperature, generator
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.limit = context_limit(model)
        self.history: list[list[int]] = [[] for _ in range(rows)]
        self.cache: Any = None
        self.mask = None
        self.lengths = torch.zeros(rows, dtype=torch.long, device=self.device)

    def restart(self) -> None:
        """Forget the cache (naive mode only): the next `feed` re-encodes every row's history."""
        if not self.reuse_cache:
            self.cache, self.mask = None, None
            self.lengths.zero_()

    def room(self, row: int) -> int:
        """Tokens row `row` may still add before the model's position table runs out."""
        return self.limit - len(self.history[row])

    def start_from(self, ids: Sequence[int], cache: Any) -> None:
        """Begin a one-row decoder from a cache that already holds `ids` (a kept prompt prefix)."""
        if self.rows != 1 or self.cache is not None:
            raise ValueError("start_from begins a fresh one-row decoder")
        torch = self.torch
        self.cache = cache
        self.history = [list(ids)]
        self.mask = torch.ones((1, len(ids)), dtype=torch.long, device=self.device)
        self.lengths = torch.tensor([len(ids)], dtype=torch.long, device=self.device)

    def expand(self, rows: int) -> None:
        """Repeat a one-row decoder's state into `rows` rows: a prefix encoded once, then shared by every row."""
        if self.rows != 1:
            raise ValueError("expand repeats a one-row decoder")
        if self.cache is not None:
            self.cache.batch_repeat_interleave(rows)
            self.mask = self.mask.repeat(rows, 1)
        self.lengths = self.lengths.repeat(rows)
        self.history = [list(self.history[0]) for _ in range(rows)]
        self.rows = rows

    def feed(self, chunks: Sequence[Sequence[int]]):
        """Run the model on each row's new tokens; returns the next-token logits of every row ([rows, vocab])."""
        torch = self.torch
        inputs = list(chunks)
        if not self.reuse_cache and self.cache is None:
            inputs = [history + list(chunk) for history, chunk in zip(self.history, chunks)]
        width = max(len(chunk) for chunk in inputs)
        ids = torch.full((self.rows, width), self.pad_id, dtype=torch.long)
        real = torch.zeros((self.rows, width), dtype=torch.long)
        for row, chunk in enumerate(inputs):
            if chunk:
                ids[row, width - len(chunk) :] = torch.tensor(chunk, dtype=torch.long)
                real[row, width - len(chunk) :] = 1
        ids, real = ids.to(self.device), real.to(self.device)
        positions = self.lengths[:, None] + (real.cumsum(1) - 1).clamp(min=0)
        mask = real if self.mask is None else torch.cat([self.mask, real], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache, self.mask = out.cache, mask
        self.lengths += real.sum(1)
        for history, chunk in zip(self.history, chunks):
            history.extend(chunk)
        return out.logits[:, -1, :]

    def next_tokens(self, logits):
        """The next token of every row: the argmax at temperature 0, else a sample from `generator`."""
        torch = self.torch
        if self.temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
