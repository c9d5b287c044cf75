"""The students' decoding loop, on the local engine's batched `Decoder` (`dd_prompting.local.decoding`).

`generate` decodes from a `Decoder` until every row stops (EOS, a newline, a token budget or a
full context). Keeping the cache between `generate` calls is what lets the student pair's solver
encode only the new sub-question at step k instead of the problem and the k-1 earlier steps again;
`benchmarks/bench_students.py` measures the difference.
"""

from __future__ import annotations

from dd_prompting.distill.training.tokenization import encode

from dd_prompting.local.decoding import Decoder, context_limit

__all__ = ["Decoder", "Vocab", "generate", "context_limit"]


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
