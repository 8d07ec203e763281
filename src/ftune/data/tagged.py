"""Tagged sentences (a tag per word) from the formats people keep them in, as a table of word and tag lists.

    CoNLL      one `word ... TAG` line per word (tag in the last column), a blank line between sentences
    word/TAG   one sentence per line: `The/DT cat/NN sat/VBD` (the tag follows the last slash)
    JSONL      {"tokens": [...], "tags": [...]} per line; also JSON, Parquet, `datasets` folders, built-ins
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftune.lazy import lazy
from ftune.schema import DataConfig
from ftune.data.prepare import column
from ftune.data.sources import Table, check_not_compressed, read_source
from ftune.errors import DataError

pd = lazy("pandas")

TABLE_SUFFIXES = (".json", ".jsonl", ".parquet")


def read_tagged(source: str) -> Table:
    """A table with list columns (JSONL and the like), or tokens/tags parsed from a CoNLL or word/TAG text file."""
    path = Path(source).expanduser()
    if not path.is_file() or path.suffix.lower() in TABLE_SUFFIXES:
        return read_source(source)
    check_not_compressed(path)
    data = path.read_bytes()
    try:
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not valid UTF-8; re-save the file as UTF-8") from None
    rows = _word_slash_tag(lines, path) if _is_word_slash_tag(lines) else _conll(lines, path)
    if not rows:
        raise DataError(f"{path}: no tagged sentences found; expected CoNLL lines (word and tag) or word/TAG tokens")
    return pd.DataFrame(rows, columns=["tokens", "tags"])


def select_tagged(frame: pd.DataFrame, cfg: DataConfig, where: str) -> pd.DataFrame:
    """The word and tag lists of every sentence, checked: lists of strings, as many tags as words, none empty."""
    words = column(frame, cfg.text_column or "tokens", "text_column", where)
    tags = column(frame, cfg.label_column or "tags", "label_column", where)
    for row, (w, t) in enumerate(zip(words, tags)):
        w, t = _as_list(w), _as_list(t)
        problem = ("is not a list of words and a list of tags" if w is None or t is None else
                   f"has {len(w)} words but {len(t)} tags" if len(w) != len(t) else
                   "has no words" if not w else "has an empty or missing word or tag" if not all(map(_is_item, w + t))
                   else None)
        if problem:
            raise DataError(f"{where} row {row + 1}: the sentence {problem}; fix or remove that row")
    out = pd.DataFrame({"tokens": [[str(x) for x in _as_list(w)] for w in words],
                        "tags": [[str(x).strip() for x in _as_list(t)] for t in tags]})
    return out.reset_index(drop=True)


def _is_item(value) -> bool:
    """A word or tag: a non-empty string, or a number (tag ids). Not null or NaN, which str() would make a tag 'None'
    or 'nan' of their own, and not a nested list."""
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, (int, float, np.number)) and not pd.isna(value)


def _as_list(value) -> list | None:
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist"):  # numpy arrays from Parquet or `datasets`
        listed = value.tolist()
        return listed if isinstance(listed, list) else None
    return None


def _is_word_slash_tag(lines: list[str]) -> bool:
    """word/TAG files have several slash-joined tokens per line; CoNLL has one word per line."""
    sample = [line.split() for line in lines if line.strip()][:50]
    slashed = [fields for fields in sample if all("/" in f[1:] for f in fields)]  # `./.` is a tagged period
    return bool(sample) and len(slashed) >= 0.9 * len(sample)


def _word_slash_tag(lines: list[str], path: Path) -> list[tuple[list[str], list[str]]]:
    rows = []
    for number, line in enumerate(lines, 1):
        pairs = [token.rsplit("/", 1) for token in line.split()]
        bad = next((token for token, pair in zip(line.split(), pairs) if len(pair) != 2 or not all(pair)), None)
        if bad is not None:
            raise DataError(f"{path} line {number}: '{bad}' is not word/TAG; write each token as word/TAG")
        if pairs:
            rows.append(([w for w, _ in pairs], [t for _, t in pairs]))
    return rows


def _conll(lines: list[str], path: Path) -> list[tuple[list[str], list[str]]]:
    rows, words, tags = [], [], []
    for number, line in enumerate(lines + [""], 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                rows.append((words, tags))
            words, tags = [], []
            continue
        if len(fields) < 2:
            raise DataError(f"{path} line {number}: '{line.strip()}' has no tag; CoNLL lines are a word and its tag "
                            f"separated by whitespace, with a blank line between sentences")
        words.append(fields[0])
        tags.append(fields[-1])
    return rows
