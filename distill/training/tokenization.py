"""Tokenizing rows for training and prompts for inference, and the `tiny` preset's tokenizer.

Training and inference encode text the same way: the tokenizer's leading special tokens (a BOS for
Llama-style tokenizers, nothing for GPT-2), then the text without special tokens, then EOS after the
last completion. Completion-only labels are built as trl does: tokenize each prompt and each
prompt+completion prefix, check that one is a prefix of the other, and set the prompt labels to -100.

The `tiny` tokenizer is a byte-level BPE trained on the training texts in which every whole number up
to the largest one in those texts is a single token. For a small model trained from scratch on
arithmetic this matters a lot: with numbers split into digits, or into arbitrary BPE pieces, a
0.9M-parameter student barely learned to add at all in the same time.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dd_prompting.distill.rows.format import _segments

__all__ = [
    "IGNORE_INDEX",
    "EOS_TOKEN",
    "train_number_tokenizer",
    "leading_special_ids",
    "encode",
    "tokenize_row",
    "tokenize_rows",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
EOS_TOKEN = "<|endoftext|>"
_DIGITS_RE = re.compile(r"\d+")


def train_number_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048, max_number: int = 9999):
    """Train a byte-level BPE on `texts` in which every whole number 0..N is one token.

    N is the largest whole number in `texts`, capped at `max_number`. `vocab_size` bounds the text
    part of the vocabulary; the numbers come on top (twice: with and without a leading space, as
    GPT-2's pre-tokenizer produces both). Larger numbers still encode, in number-sized pieces.

    >>> tokenizer = train_number_tokenizer(["Ann has 12 apples and 130 pears."] * 20, vocab_size=300)
    >>> [tokenizer.decode([i]) for i in tokenizer("Ann has 129 apples")["input_ids"]]
    ['Ann', ' has', ' 129', ' apples']
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    numbers = [int(match) for text in texts for match in _DIGITS_RE.findall(text) if len(match) <= 9]
    largest = min(max(numbers, default=0), max_number)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Digits are learned separately below, so the text merges never spend vocabulary on number pieces.
    tokenizer.train_from_iterator((_DIGITS_RE.sub(" ", text) for text in texts), trainer)

    spec = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges: list = spec["model"]["merges"]
    for prefix in ("\u0120", ""):  # "Ġ" is the byte-level form of a leading space
        for n in range(largest + 1):
            piece = prefix + str(n)
            if piece in vocab:
                continue
            vocab[piece] = len(vocab)
            head, tail = (prefix, piece[len(prefix) :]) if n < 10 else (piece[:-1], piece[-1])
            if head:  # a bare single digit is already in the byte alphabet
                merges.append([head, tail])
    # A whole pre-token found in the vocabulary is used as it is. Merges alone cannot keep every number
    # whole: "121" needs ("1", "2") to rank before ("2", "1") and "212" needs the opposite.
    spec["model"]["ignore_merges"] = True
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)


def leading_special_ids(tokenizer) -> list[int]:
    """The special tokens a tokenizer puts before a text (a BOS for Llama-style ones, none for GPT-2)."""
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def encode(tokenizer, text: str, *, first: bool) -> list[int]:
    """Token ids of `text`; `first` adds the leading special tokens of a sequence's start."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return leading_special_ids(tokenizer) + ids if first else ids


def tokenize_row(row: Mapping[str, Any], tokenizer, *, leading: Sequence[int] | None = None) -> dict[str, Any]:
    """`input_ids` and `labels` for one row, with -100 on every prompt token and EOS closing the row.

    Works for plain rows and packed rows (lists of segments). `boundary_ok` is False when a prompt's
    tokens are not a prefix of the tokens of the text that follows it (a token spans the boundary);
    the boundary then falls where the two tokenizations part.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no EOS token; set `tokenizer.eos_token` before training.")
    leading = leading_special_ids(tokenizer) if leading is None else list(leading)
    prompts, completions = _segments(row)
    prefixes, text = [], ""
    for prompt, completion in zip(prompts, completions):
        text += prompt
        prefixes.append(text)
        text += completion
        prefixes.append(text)
    encoded = tokenizer(prefixes, add_special_tokens=False)["input_ids"]
    full = encoded[-1]
    boundaries, boundary_ok = [], True
    for ids in encoded:
        common = 0
        for a, b in zip(ids, full):
            if a != b:
                break
            common += 1
        boundary_ok &= common == len(ids)
        boundaries.append(common)
    labels = [IGNORE_INDEX] * len(full)
    for k in range(0, len(boundaries), 2):  # (prompt end, completion end) pairs
        start, end = boundaries[k], boundaries[k + 1]
        labels[start:end] = full[start:end]
    eos = tokenizer.eos_token_id
    return {
        "input_ids": leading + full + [eos],
        "labels": [IGNORE_INDEX] * len(leading) + labels + [eos],
        "boundary_ok": boundary_ok,
    }


def tokenize_rows(rows: Iterable[Mapping[str, Any]], tokenizer, *, max_length: int | None = None) -> list[dict]:
    """Tokenize rows with `tokenize_row`; rows longer than `max_length` are truncated (and counted).

    Logs a warning with the number of truncated rows and of rows whose prompt/completion boundary
    falls inside a token, so neither passes silently.
    """
    leading = leading_special_ids(tokenizer)
    out, truncated, mismatched = [], 0, 0
    for row in rows:
        item = tokenize_row(row, tokenizer, leading=leading)
        mismatched += not item.pop("boundary_ok")
        if max_length is not None and len(item["input_ids"]) > max_length:
            truncated += 1
            item = {key: value[:max_length] for key, value in item.items()}
        out.append(item)
    if truncated:
        logger.warning("Truncated %d of %d rows to max_length=%d tokens.", truncated, len(out), max_length)
    if mismatched:
        logger.warning(
            "In %d of %d rows a token spans the prompt/completion boundary; the labels start where the "
            "tokenizations of prompt and prompt+completion part.",
            mismatched,
            len(out),
        )
    return out
