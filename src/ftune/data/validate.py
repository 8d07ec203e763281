"""Warnings about data that trains but may mislead: duplicates, conflicting labels, train/test leakage,
imbalance and texts cut at the window. (What cannot be trained on at all is a DataError in prepare.py.)"""

from __future__ import annotations

import numpy as np

from ftune.data.prepare import Splits
from ftune.lazy import lazy
from ftune.schema import LongTextConfig
from ftune.data.long_text import is_long_text
from ftune.data.summary import SPLITS, text_lengths
from ftune.data.tokenize import Encoded

pd = lazy("pandas")

IMBALANCE_RATIO = 10.0  # largest class over smallest in train, from which we warn


def data_warnings(splits: Splits, encoded: dict[str, Encoded], max_length: int,
                  long_text: LongTextConfig | None = None) -> list[str]:
    """One line per problem found, naming the split, the count, an example and what to do."""
    found = repeated_text_warnings(splits, lambda frame: frame["label"], "label")
    counts = np.bincount(splits.train["label"].to_numpy(), minlength=len(splits.labels))
    if counts.min() == 0 or counts.max() / counts.min() >= IMBALANCE_RATIO:
        small, large = int(counts.argmin()), int(counts.argmax())
        found.append(f"train: classes are very imbalanced ('{splits.labels[large]}' {counts[large]} rows, "
                     f"'{splits.labels[small]}' {counts[small]}); consider train.class_weights=true and "
                     f"train.metric=macro_f1")
    cut = {name: int((text_lengths(encoded[name]) > max_length).sum()) if is_long_text(long_text) else
           int((encoded[name].lengths >= max_length).sum()) for name in SPLITS}
    if not (long_text and long_text.strategy == "chunk"):  # chunked texts are read whole
        kept = "their first and last tokens" if is_long_text(long_text) else "it"
        found += window_warning(cut, f"{{total}} texts fill the {max_length}-token window and are cut to {kept} "
                                     f"({{per_split}}); raise data.max_length, or set task.long_text.strategy=chunk "
                                     f"to read them whole")
    return found


def repeated_text_warnings(splits: Splits, answers, noun: str) -> list[str]:
    """Duplicate rows, one text with different answers, and held-out texts that train has too: what any task with
    one answer per text (a label, a label set, a number) should hear about. `answers(frame)` is a Series of
    hashable answers, `noun` what one is called."""
    found = []
    for name in SPLITS:
        frame = getattr(splits, name)
        keys, answer = _keys(frame), answers(frame).rename("answer")
        dupes = int(pd.concat([keys, answer], axis=1).duplicated().sum())
        if dupes:
            found.append(f"{name}: {dupes} duplicate rows (same text and {noun}) count those texts more than once; "
                         f"drop them unless that is intended")
        conflicting = answer.groupby(keys).nunique()
        conflicting = conflicting[conflicting > 1]
        if len(conflicting):
            found.append(f"{name}: {len(conflicting)} texts appear with different {noun}s, e.g. "
                         f"{_example(conflicting.index[0])}; no model can get both right, so fix or drop them")
    train_texts = set(_keys(splits.train))
    for name in ("validation", "test"):
        shared = [t for t in _keys(getattr(splits, name)) if t in train_texts]
        if shared:
            found.append(f"{name}: {len(shared)} texts also occur in train (e.g. {_example(shared[0])}); "
                         f"{name} scores overstate how the model does on new text; remove them from one side")
    return found


def window_warning(counts: dict[str, int], message: str) -> list[str]:
    """The warning about what the window cut off, when any split lost something: `message` with {total} and
    {per_split} filled in."""
    total = sum(counts.values())
    if not total:
        return []
    return [message.format(total=total, per_split=", ".join(f"{n} {c}" for n, c in counts.items() if c))]


def _keys(frame: pd.DataFrame) -> pd.Series:
    """What makes two rows the same input: the text, and the pair text when there is one."""
    if "text_pair" in frame:
        return (frame["text"] + "\x1f" + frame["text_pair"]).rename("text")
    return frame["text"]


def _example(key: str, limit: int = 60) -> str:
    text = key.replace("\x1f", " | ")
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")
