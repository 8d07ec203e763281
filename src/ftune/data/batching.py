"""Which examples go into which batch: a pure function of (lengths, seed, epoch).

Because batches are recomputed from the seed and epoch rather than drawn from a live RNG,
resuming mid-epoch just skips the batches already done.
"""

from __future__ import annotations

import numpy as np

BUCKET_BATCHES = 50  # batches per length bucket: big enough to group lengths, small enough to stay random


def train_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool,
                  max_tokens: int | None = None) -> list[list[int]]:
    """Shuffled batches for one epoch; with grouping, each batch holds texts of similar length. With `max_tokens`
    (which implies grouping) a batch takes texts while its padded size (texts x the longest) stays within the
    budget, up to `batch_size` texts: short texts come in larger batches, and every batch costs about the same."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    grouped = group_by_length or max_tokens is not None
    if grouped:
        bucket = batch_size * BUCKET_BATCHES
        order = np.concatenate([
            chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in np.split(order, range(bucket, len(order), bucket))
        ])
    if max_tokens is None:
        batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    else:
        batches = _token_batches(order, lengths, batch_size, max_tokens)
    if grouped:
        rng.shuffle(batches)  # so the longest batches don't all come first
    return batches


def _token_batches(order: np.ndarray, lengths: np.ndarray, most: int, max_tokens: int) -> list[list[int]]:
    """`order` (longest first within each bucket) cut into batches of at most `most` texts whose padded size stays
    within `max_tokens`; a text longer than the budget is a batch of its own."""
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        width = lengths[order[start]]
        while end < len(order) and end - start < most and (end - start + 1) * max(width, lengths[order[end]]) <= max_tokens:
            width = max(width, lengths[order[end]])  # a new bucket starts long again: the batch ends there
            end += 1
        batches.append(order[start:end].tolist())
        start = end
    return batches


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Batches sorted by length (least padding); the caller puts results back in input order."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
