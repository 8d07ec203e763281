"""Tokenize once, cache by content, pad per batch.

Encodings are ragged (no padding); `collate` pads each batch only to its own longest text, so
a batch of tweets never pays for a 512-token window.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftune.lazy import lazy
from ftune.schema import LongTextConfig
from ftune.data.builtin import cache_dir
from ftune.data.long_text import is_long_text, pool, windows

pd = lazy("pandas")
torch = lazy("torch")

IGNORE = -100  # a token label that takes no part in the loss (torch's cross-entropy ignore_index)


@dataclass
class Encoded:
    """Token ids per example (ragged), optional segment ids, and labels: one per example (classification), or one
    per token (token classification, causal LM: ragged, -100 where no loss is taken).

    With task.long_text chunking an example is a window of a document: `groups` names its document."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    labels: np.ndarray | list[np.ndarray] | None
    groups: np.ndarray | None = None  # long_text: the document of each window
    full_lengths: np.ndarray | None = None  # long_text: each document's tokens before it was cut or split
    # Packed examples: each token's position within its own example (restarting at 0), so the model keeps them apart
    position_ids: list[np.ndarray] | None = None
    # Distillation: the teacher's logits per example (a row per text, or per token), batched as `teacher_logits`
    teacher_logits: np.ndarray | list[np.ndarray] | None = None
    # Preference tuning: the reference model's log-probability of each answer ([examples, 2]), batched as `reference`
    reference: np.ndarray | None = None
    # KTO: whether each example's answer is a good one (1) or a bad one (0), batched as `desirable`
    desirable: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices: np.ndarray) -> "Encoded":
        """The examples at `indices`, in that order."""
        pick = lambda items: None if items is None else [items[i] for i in indices]  # noqa: E731
        labels = self.labels[indices] if isinstance(self.labels, np.ndarray) else pick(self.labels)
        return Encoded(pick(self.input_ids), pick(self.token_type_ids), labels,
                       groups=self.groups[indices] if self.groups is not None else None,
                       position_ids=pick(self.position_ids),
                       teacher_logits=None if self.teacher_logits is None else pick(self.teacher_logits),
                       reference=None if self.reference is None else self.reference[indices],
                       desirable=None if self.desirable is None else self.desirable[indices])

    def loss_terms(self, indices) -> np.ndarray:
        """The labels the loss averages over for these examples: every label, or every token label but -100."""
        if isinstance(self.labels, np.ndarray):
            return self.labels[indices]
        picked = np.concatenate([self.labels[i] for i in indices])
        return picked[picked != IGNORE]

    def per_document(self, logits: np.ndarray, how: str = "mean") -> np.ndarray:
        """Logits per document: the windows' logits pooled when texts were chunked, else as they are."""
        return logits if self.groups is None else pool(logits, self.groups, how)

    @property
    def document_labels(self) -> np.ndarray | None:
        if self.groups is None or self.labels is None:
            return self.labels
        return self.labels[np.unique(self.groups, return_index=True)[1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(frame: pd.DataFrame, tokenizer, max_length: int, use_cache: bool = True,
           long_text: LongTextConfig | None = None) -> Encoded:
    """Token ids for a split, from the cache when this data, tokenizer and length were seen before."""
    texts = frame["text"].tolist()
    pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
    labels = frame["label"].to_numpy(dtype=np.int64) if "label" in frame else None
    if is_long_text(long_text):  # one fast tokenization of whole documents, then windows cut from the ids
        ids, types, groups, full_lengths = windows(texts, tokenizer, max_length, long_text)
        return Encoded(ids, types, labels[groups] if labels is not None else None, groups=groups,
                       full_lengths=full_lengths)
    # The key hashes the whole tokenizer definition (~100 ms): only worth it when the cache is used.
    path = cache_dir() / "tokens" / f"{_cache_key(texts, pairs, tokenizer, max_length)}.npz" if use_cache else None
    cached = load_ragged(path, len(texts)) if path is not None and path.is_file() else None
    if cached is not None and "ids" in cached:
        return Encoded(cached["ids"], cached.get("types"), labels)
    enc = _truncated(texts, pairs, tokenizer, max_length)
    ids = [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]
    types = [np.asarray(x, dtype=np.int8) for x in enc["token_type_ids"]] if "token_type_ids" in enc else None
    if path is not None:
        _save(path, ids, types)
    return Encoded(ids, types, labels)


CHARS_PER_TOKEN = 64  # a window's tokens span far fewer characters than this each, unless the text is mostly blanks


def _truncated(texts: list[str], pairs: list[str] | None, tokenizer, max_length: int) -> dict:
    """The tokenizer's truncated encoding, without tokenizing all of a text far longer than the window (a 20 MB
    line took 3.6 GB): such a text is cut at a blank after max_length * CHARS_PER_TOKEN characters, which keeps
    its first tokens as they were; if the cut text does not fill the window, the whole text is tokenized after all."""
    budget = max_length * CHARS_PER_TOKEN
    long = [i for i, text in enumerate(texts) if len(text) > budget] if pairs is None else []
    if not long:
        return tokenizer(texts, pairs, truncation=True, max_length=max_length)
    heads = list(texts)
    for i in long:
        head = texts[i][:budget]
        blank = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
        heads[i] = head[:blank] if blank > 0 else head
    enc = tokenizer(heads, truncation=True, max_length=max_length)
    short = [i for i in long if len(enc["input_ids"][i]) < max_length]  # mostly blanks: read the whole text
    if short:
        again = tokenizer([texts[i] for i in short], truncation=True, max_length=max_length)
        for key in enc:
            for i, row in zip(short, again[key]):
                enc[key][i] = row
    return enc


def collate(data: Encoded, indices: list[int], pad_id: int, multiple: int = 1, cap: int | None = None
            ) -> dict[str, torch.Tensor]:
    """One padded batch: input_ids, attention_mask, [token_type_ids], [position_ids], [labels], [reference],
    [desirable], [teacher_logits]. Its width is the longest text's, rounded up to a `multiple` (no further than
    `cap`): on a GPU a few fixed shapes keep its kernels' plans."""
    width = max(len(data.input_ids[i]) for i in indices)
    rounded = -(-width // multiple) * multiple
    width = max(width, min(rounded, cap or rounded))
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    types = torch.zeros((len(indices), width), dtype=torch.long) if data.token_type_ids is not None else None
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.from_numpy(data.input_ids[i].astype(np.int64))
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.from_numpy(data.token_type_ids[i].astype(np.int64))
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    if data.position_ids is not None:  # packed examples; a padding token gets position 0: an example of its own
        batch["position_ids"] = positions = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            positions[row, :len(data.position_ids[i])] = torch.from_numpy(data.position_ids[i].astype(np.int64))
    if isinstance(data.labels, np.ndarray):
        batch["labels"] = torch.from_numpy(data.labels[indices])
    elif data.labels is not None:  # a label per token; padding is ignored in the loss
        batch["labels"] = torch.full((len(indices), width), IGNORE, dtype=torch.long)
        for row, i in enumerate(indices):
            batch["labels"][row, :len(data.labels[i])] = torch.from_numpy(data.labels[i].astype(np.int64))
    if data.reference is not None:
        batch["reference"] = torch.from_numpy(data.reference[indices])
    if data.desirable is not None:
        batch["desirable"] = torch.from_numpy(data.desirable[indices])
    if data.teacher_logits is not None:  # a row per text, or a row per token (zeros on padding: never read)
        rows = [data.teacher_logits[i] for i in indices]
        batch["teacher_logits"] = soft = torch.zeros((len(indices), *((width,) if rows[0].ndim == 2 else ()),
                                                      rows[0].shape[-1]), dtype=torch.float32)
        for row, logits in enumerate(rows):
            soft[row, :len(logits)] = torch.from_numpy(logits)
    return batch


def _cache_key(texts: list[str], pairs: list[str] | None, tokenizer, max_length: int) -> str:
    h = hashlib.sha256()
    h.update(_tokenizer_identity(tokenizer).encode())
    h.update(json.dumps([max_length, tokenizer.model_max_length, pairs is not None]).encode())
    for text in texts + (pairs or []):
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _tokenizer_identity(tokenizer) -> str:
    """The tokenizer's full definition, minus the truncation/padding state that each call rewrites."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return f"{type(tokenizer).__name__}:{tokenizer.name_or_path}:{len(tokenizer)}"
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return json.dumps(spec, sort_keys=True)


def _save(path, ids: list[np.ndarray], types: list[np.ndarray] | None) -> None:
    save_ragged(path, ids=ids, **({} if types is None else {"types": types}))


def cache_path(texts: list[str], tokenizer, max_length: int) -> Path:
    """The token cache's file for an encoding of these texts by this tokenizer at this length (encode's key), for a
    task whose examples are more than one text (a chat: its messages)."""
    return cache_dir() / "tokens" / f"{_cache_key(texts, None, tokenizer, max_length)}.npz"


def save_ragged(path: Path, **columns: list[np.ndarray]) -> None:
    """Ragged arrays of equal lengths per example (ids, and types or labels), as one npz in the token cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    first = next(iter(columns.values()))
    arrays = {name: np.concatenate(rows) for name, rows in columns.items()}
    arrays["offsets"] = np.concatenate([[0], np.cumsum([len(x) for x in first])])
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # several processes may tokenize the same data at once
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_ragged(path: Path, count: int) -> dict[str, list[np.ndarray]] | None:
    """What save_ragged wrote, each column split back into one array per example (`count` of them); None when the
    entry is damaged (cut short by a kill or a full disk, or not one of ours): a miss, tokenized again and rewritten,
    never a crash (a zero-length entry used to end the run with a bare "Aborted.")."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        offsets = arrays.pop("offsets")
        ok = (offsets.ndim == 1 and len(offsets) == count + 1 and offsets[0] == 0 and bool(np.all(np.diff(offsets) >= 0))
              and all(a.ndim == 1 and a.dtype.kind == "i" and len(a) == offsets[-1] for a in arrays.values()))
    except Exception:  # noqa: BLE001 - whatever a damaged file makes numpy raise, the cache only misses
        ok = False
    if not ok:
        path.unlink(missing_ok=True)
        return None
    return {name: np.split(column, offsets[1:-1]) if count else [] for name, column in arrays.items()}
