"""Which examples go into which batch: a pure function of (lengths, seed, epoch).

Because batches are recomputed from the seed and epoch rather than drawn from a live RNG,
resuming mid-epoch just skips the batches already done.
"""

from __future__ import annotations

import numpy as np

BUCKET_BATCHES = 50  # batches per length bucket: big enough to group lengths, small enough to stay random


def train_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """Shuffled batches for one epoch; with grouping, each batch holds texts of similar length."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        bucket = batch_size * BUCKET_BATCHES
        order = np.concatenate([
            chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in np.split(order, range(bucket, len(order), bucket))
        ])
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)  # so the longest batches don't all come first
    return batches


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Batches sorted by length (least padding); the caller puts results back in input order."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
