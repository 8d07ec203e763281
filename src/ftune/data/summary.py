"""What the data looked like: split sizes, class balance and token lengths, for the report."""

from __future__ import annotations

import numpy as np

from ftune.data.prepare import Splits
from ftune.data.tokenize import Encoded

SPLITS = ("train", "validation", "test")


def data_summary(splits: Splits, encoded: dict[str, Encoded], max_length: int, bins: int = 30) -> dict:
    """Sizes, per-split class counts and token-length statistics (lengths after truncation)."""
    lengths = {name: encoded[name].lengths for name in SPLITS}
    width = -(-max_length // bins)  # whole tokens per bin
    edges = np.arange(0, max_length + width, width)
    summary = {name: len(getattr(splits, name)) for name in SPLITS}
    summary["classes"] = {name: _class_counts(getattr(splits, name)["label"].to_numpy(), splits.labels)
                          for name in SPLITS}
    summary["tokens"] = {
        "max_length": max_length,
        "splits": {name: _length_stats(lengths[name], max_length) for name in SPLITS},
        "histogram": {"edges": edges.tolist(),
                      **{name: np.histogram(lengths[name], bins=edges)[0].tolist() for name in SPLITS}},
    }
    return summary


def _class_counts(labels: np.ndarray, names: list[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(names))
    return {name: int(counts[i]) for i, name in enumerate(names)}


def _length_stats(lengths: np.ndarray, max_length: int) -> dict:
    if len(lengths) == 0:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0, "at_window": 0}
    return {"mean": float(lengths.mean()), "median": float(np.median(lengths)), "p95": float(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
            "at_window": int((lengths >= max_length).sum())}  # filled the window: cut to max_length, or exactly that long
