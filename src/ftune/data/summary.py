"""What the data looked like: split sizes, class balance and token lengths, for the report."""

from __future__ import annotations

import numpy as np

from ftune.schema import LongTextConfig
from ftune.data.long_text import is_long_text
from ftune.data.prepare import Splits
from ftune.data.tokenize import Encoded

SPLITS = ("train", "validation", "test")


def data_summary(splits: Splits, encoded: dict[str, Encoded], max_length: int, long_text: LongTextConfig | None = None,
                 bins: int = 30) -> dict:
    """Sizes, per-split class counts and token-length statistics: lengths after truncation, or of whole documents
    with task.long_text (then also how many exceeded the window and how many windows they made)."""
    lengths = {name: text_lengths(encoded[name]) for name in SPLITS}
    summary = {name: len(getattr(splits, name)) for name in SPLITS}
    summary["classes"] = {name: _class_counts(getattr(splits, name)["label"].to_numpy(), splits.labels)
                          for name in SPLITS}
    summary["tokens"] = token_lengths(lengths, max_length, bins)
    if is_long_text(long_text):
        summary["long_text"] = {**long_text.model_dump(),
                                "over_window": {name: int((lengths[name] > max_length).sum()) for name in SPLITS},
                                "windows": {name: len(encoded[name]) for name in SPLITS}}
    return summary


def text_lengths(encoded: Encoded) -> np.ndarray:
    """Tokens per text as the tokenizer saw it: whole documents under task.long_text, else after truncation."""
    return encoded.full_lengths if encoded.full_lengths is not None else encoded.lengths


def token_lengths(lengths: dict[str, np.ndarray], max_length: int, bins: int = 30) -> dict:
    """Length statistics per split and a shared histogram (longer texts are counted in the last bin)."""
    width = -(-max_length // bins)  # whole tokens per bin
    edges = np.arange(0, max_length + width, width)
    return {"max_length": max_length,
            "splits": {name: _length_stats(lengths[name], max_length) for name in SPLITS},
            "histogram": {"edges": edges.tolist(),
                          **{name: np.histogram(np.minimum(lengths[name], max_length), bins=edges)[0].tolist()
                             for name in SPLITS}}}


def _class_counts(labels: np.ndarray, names: list[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(names))
    return {name: int(counts[i]) for i, name in enumerate(names)}


def _length_stats(lengths: np.ndarray, max_length: int) -> dict:
    if len(lengths) == 0:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0, "at_window": 0}
    return {"mean": float(lengths.mean()), "median": float(np.median(lengths)), "p95": float(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
            "at_window": int((lengths >= max_length).sum())}  # filled the window: cut to max_length, or exactly that long
