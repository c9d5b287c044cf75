"""Collators that turn tokenized prompt/completion rows into training batches: packed or padded.

`PackingCollator` puts several short rows into one sequence with restarting position ids, so no
padding is computed and no row attends to another; `PaddingCollator` pads each row to the longest
in the batch. `benchmarks/bench_packing.py` measures the two against each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dd_prompting.distill.training.tokenization import IGNORE_INDEX

__all__ = ["PackingCollator", "PaddingCollator"]


@dataclass
class PackingCollator:
    """Pack tokenized rows into as few sequences of at most `pack_length` tokens as fit (first-fit decreasing).

    Returns `input_ids`, `labels` and `position_ids`, and no `attention_mask`: position ids restart at
    every row, which transformers (>= 5) turns into a block-diagonal causal mask, so no row attends to
    another. Padding at the end of a sequence gets its own restarting positions and -100 labels. The
    first label of every row is -100 (it would be predicted from the previous row's last token).
    The model must run without a key/value cache in training (`train_student` sets `use_cache=False`),
    or the mask falls back to plain causal; `test_packed_rows_do_not_attend_across` checks the
    installed transformers (5.24 here) still builds the block-diagonal mask.

    >>> collator = PackingCollator(pad_token_id=0, pack_length=6)
    >>> batch = collator([
    ...     {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    ...     {"input_ids": [8, 9], "labels": [8, 9]},
    ...     {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]},
    ... ])
    >>> batch["input_ids"].tolist()
    [[1, 2, 3, 4, 8, 9], [5, 6, 7, 0, 0, 0]]
    >>> batch["position_ids"].tolist()
    [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    >>> batch["labels"].tolist()
    [[-100, -100, 3, 4, -100, 9], [-100, 6, 7, -100, -100, -100]]
    """

    pad_token_id: int
    pack_length: int

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        bins: list[list[dict[str, Any]]] = []
        free: list[int] = []
        for feature in sorted(features, key=lambda f: len(f["input_ids"]), reverse=True):
            length = len(feature["input_ids"])
            if length > self.pack_length:
                raise ValueError(
                    f"A row of {length} tokens does not fit pack_length={self.pack_length}; "
                    "truncate rows to max_length <= pack_length first."
                )
            for index, room in enumerate(free):
                if length <= room:
                    bins[index].append(feature)
                    free[index] -= length
                    break
            else:
                bins.append([feature])
                free.append(self.pack_length - length)
        width = max(self.pack_length - room for room in free)
        input_ids, labels, positions = [], [], []
        for rows, room in zip(bins, free):
            ids, lab, pos = [], [], []
            for row in rows:
                ids += row["input_ids"]
                lab += [IGNORE_INDEX] + list(row["labels"][1:])
                pos += range(len(row["input_ids"]))
            pad = width - len(ids)
            input_ids.append(ids + [self.pad_token_id] * pad)
            labels.append(lab + [IGNORE_INDEX] * pad)
            positions.append(pos + list(range(pad)))
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
        }


@dataclass
class PaddingCollator:
    """Pad every row to the longest in the batch (right padding, attention mask, -100 labels on padding).

    >>> batch = PaddingCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    ...                                         {"input_ids": [8, 9], "labels": [-100, 9]}])
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    ([[5, 6, 7], [8, 9, 0]], [[1, 1, 1], [1, 1, 0]])
    >>> batch["labels"].tolist()
    [[-100, 6, 7], [-100, 9, -100]]
    """

    pad_token_id: int

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        input_ids, labels, mask = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            input_ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }
