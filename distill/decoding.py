"""Batched greedy (or sampled) decoding for students, with a key/value cache kept across calls.

A `Decoder` holds one model's state for a batch of rows: each row's token history, the key/value
cache and the attention mask. `generate` decodes from it until every row stops (EOS, a newline,
a token budget or a full context). Keeping the cache between `generate` calls is what lets the
student pair's solver encode only the new sub-question at step k instead of the problem and the
k-1 earlier steps again; `benchmarks/bench_students.py` measures the difference.
"""

from __future__ import annotations

from collections.abc import Sequence

from dd_prompting.distill.tokenization import encode
from dd_prompting.local_lm import context_limit

__all__ = ["Decoder", "Vocab", "generate", "context_limit"]


class Decoder:
    """Greedy (or sampled) decoding of a batch of rows with one model, fed in chunks.

    Rows are left-padded inside each chunk, so the padding of a long-running batch sits between
    chunks; the attention mask hides it and the position ids count real tokens only, so every row
    is computed exactly as it would be alone. With `reuse_cache`, the key/value cache lives across
    `feed` calls; without it, every `restart` drops the cache and the next `feed` re-encodes each
    row's whole history (the naive baseline).
    """

    def __init__(self, model, tokenizer, *, rows: int, reuse_cache: bool, temperature: float, generator):
        import torch

        self.torch = torch
        self.model, self.tokenizer = model, tokenizer
        self.rows, self.reuse_cache = rows, reuse_cache
        self.temperature, self.generator = temperature, generator
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.limit = context_limit(model)
        self.history: list[list[int]] = [[] for _ in range(rows)]
        self.cache = None
        self.mask = None
        self.lengths = torch.zeros(rows, dtype=torch.long)

    def restart(self) -> None:
        """Forget the cache (naive mode only): the next `feed` re-encodes every row's history."""
        if not self.reuse_cache:
            self.cache, self.mask = None, None
            self.lengths.zero_()

    def room(self, row: int) -> int:
        """Tokens row `row` may still add before the model's position table runs out."""
        return self.limit - len(self.history[row])

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


class Vocab:
    """Which token ids end a line, and the ids of a newline, for one tokenizer."""

    def __init__(self, tokenizer):
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        self.ends_line = ["\n" in text for text in texts]
        self.newline = encode(tokenizer, "\n", first=False)
        self.eos = tokenizer.eos_token_id


def generate(decoder: Decoder, vocab: Vocab, chunks, *, active, max_new_tokens: int, stop_at_newline: bool):
    """Decode from `chunks` until each active row stops; returns (generated ids, pending ids, truncated) per row.

    A row stops at EOS (not kept), at a token holding a newline when `stop_at_newline` (kept), after
    `max_new_tokens`, or when its context is full. `pending` is what must be fed before the row's
    next chunk: the last generated token (never fed yet), plus a newline if the reply did not end one.
    """
    rows = decoder.rows
    generated: list[list[int]] = [[] for _ in range(rows)]
    pending: list[list[int]] = [[] for _ in range(rows)]
    truncated = [False] * rows
    running = list(active)
    for row in range(rows):
        if running[row] and decoder.room(row) - len(chunks[row]) < 2:
            running[row], truncated[row] = False, True
    if not any(running):
        return generated, pending, truncated
    logits = decoder.feed([chunk if run else [] for chunk, run in zip(chunks, running)])
    for step in range(max_new_tokens):
        tokens = decoder.next_tokens(logits).tolist()
        feed = [[] for _ in range(rows)]
        for row in range(rows):
            if not running[row]:
                continue
            token = tokens[row]
            if token == vocab.eos:
                running[row] = False
                pending[row] = list(vocab.newline)
                continue
            generated[row].append(token)
            if stop_at_newline and vocab.ends_line[token]:
                running[row] = False
                pending[row] = [token]
            elif step == max_new_tokens - 1 or decoder.room(row) <= len(vocab.newline) + 1:
                running[row], truncated[row] = False, True
                pending[row] = [token] + list(vocab.newline)
            else:
                feed[row] = [token]
        if not any(running):
            break
        logits = decoder.feed(feed)
    return generated, pending, truncated
