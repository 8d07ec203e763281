"""Texts longer than the model's window: cut to one window (head, or head + tail), or split into
overlapping windows whose logits are pooled into one per document, in training and in prediction.

Only the first tokenization sees whole documents; every window is then built from those ids, with
the tokenizer's own special tokens around it, so no text is tokenized twice.
"""

from __future__ import annotations

import numpy as np

from ftune.schema import LongTextConfig
from ftune.errors import ConfigError

HEAD_SHARE = 0.25  # head+tail: a quarter of the window from the start, the rest from the end (Sun et al. 2019)


def is_long_text(cfg: LongTextConfig | None) -> bool:
    """Whether `cfg` asks for more than the tokenizer's own truncation (the head of each text)."""
    return cfg is not None and (cfg.strategy != "truncate" or cfg.keep != "head")


def windows(texts: list[str], tokenizer, max_length: int, cfg: LongTextConfig):
    """(token ids per window, [segment ids per window], the document of each window, each document's full length)."""
    prefix, suffix = special_tokens(tokenizer)
    room = max_length - len(prefix) - len(suffix)
    if cfg.strategy == "chunk" and cfg.stride >= room:
        raise ConfigError(f"task.long_text.stride={cfg.stride} must be below the {room} text tokens a "
                          f"{max_length}-token window holds; lower the stride or raise data.max_length")
    ids, groups = [], []
    full_lengths = []
    for doc, tokens in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
        full_lengths.append(len(tokens) + len(prefix) + len(suffix))
        for piece in _pieces(tokens, room, cfg):
            ids.append(np.asarray(prefix + piece + suffix, dtype=np.int32))
            groups.append(doc)
    types = [np.zeros(len(x), dtype=np.int8) for x in ids] if "token_type_ids" in tokenizer.model_input_names else None
    return ids, types, np.asarray(groups, dtype=np.int64), np.asarray(full_lengths, dtype=np.int64)


def _pieces(tokens: list[int], room: int, cfg: LongTextConfig) -> list[list[int]]:
    if len(tokens) <= room:
        return [tokens]
    if cfg.strategy == "truncate":
        if cfg.keep == "head":
            return [tokens[:room]]
        head = int(room * HEAD_SHARE)
        return [tokens[:head] + tokens[len(tokens) - (room - head):]]
    step = room - cfg.stride
    starts = list(range(0, len(tokens) - room, step)) + [len(tokens) - room]  # the last window ends with the text
    return [tokens[s:s + room] for s in starts]


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text ([CLS] and [SEP] for BERT)."""
    full = tokenizer("a")["input_ids"]
    core = tokenizer("a", add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(core) + 1):
        if full[i:i + len(core)] == core:
            return full[:i], full[i + len(core):]
    raise ConfigError(f"cannot find where {type(tokenizer).__name__} puts the text among its special tokens; "
                      f"use task.long_text.strategy=truncate with keep=head")


def pool(logits: np.ndarray, groups: np.ndarray, how: str) -> np.ndarray:
    """One row of logits per document: the mean or the element-wise max of its windows' rows."""
    n = int(groups.max()) + 1 if len(groups) else 0
    if how == "max":
        out = np.full((n, logits.shape[-1]), -np.inf, dtype=np.float32)
        np.maximum.at(out, groups, logits)
        return out
    out = np.zeros((n, logits.shape[-1]), dtype=np.float32)
    np.add.at(out, groups, logits)
    return out / np.bincount(groups, minlength=n)[:, None]
