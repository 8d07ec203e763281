"""The task a config leaves unnamed, guessed from a sample of its training data, with the reason in words.

Read in this order, the first that fits wins:

    a built-in dataset          its own task (the catalog knows it)
    word/TAG or CoNLL lines     token-classification (a text file, as ftune.data.tagged reads it)
    chats                       causal-lm: a messages column, or prompt and response columns (no label column set)
    a tag list per word         token-classification: tokens and tags columns holding lists of equal length
    label sets                  multi-label: label cells that are lists, or strings of labels joined by '|'
    numbers                     regression when some have fractions or more than MAX_CLASSES differ; a few whole
                                numbers (1 to 5 stars) stay classes, and the reason names regression as the other
    anything else               classification

Only the first SAMPLE_ROWS rows are read, so a large file costs a fraction of a second. A file that cannot be read is
left to the task's own loader, whose errors name the line and the fix: this module raises what read_source raises.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ftune.data.builtin import CATALOG
from ftune.data.prepare import MISSING_LABELS, SPLIT_ALIASES
from ftune.data.sources import check_not_compressed, read_source, regular_file, _first_line_is_object
from ftune.data.tagged import TABLE_SUFFIXES, _is_word_slash_tag
from ftune.lazy import lazy
from ftune.schema import DataConfig

pd = lazy("pandas")  # only when a file is read: a config error or a built-in dataset needs none

SAMPLE_ROWS = 2000
MAX_CLASSES = 20  # more distinct whole numbers than this is a quantity to predict, not classes
MIN_SETS = 0.01  # share of sampled rows holding several labels from which the column is read as label sets
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # as ftune.data.prepare tells numeric labels


@dataclass(frozen=True)
class Inferred:
    """The task read off the data, why (one clause, for `task: NAME (inferred: REASON)`), and whether saying so adds
    anything: a column of class names, or a built-in's own classification, is what ftune did before it inferred."""

    task: str
    reason: str
    plain: bool = False


def infer_task(data: DataConfig, task_options: dict[str, Any] | None = None) -> Inferred:
    """The task `data` (the config's data section) holds; `task_options` are task.* keys the config set without a
    name (task.label_separator, task.messages_column, ...), read where they say how the data is laid out."""
    options = task_options or {}
    source = data.train
    path = Path(source).expanduser()
    saved = (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
    if source in CATALOG and not (path.is_file() or saved):  # read_source's rule: a local file shadows a built-in
        entry = CATALOG[source]
        return Inferred(entry.task, f"built-in dataset '{source}' is a {entry.task} dataset",
                        plain=entry.task == "classification")
    if path.is_file() and path.suffix.lower() not in TABLE_SUFFIXES:
        tagged = _tagged_lines(path)
        if tagged:
            return Inferred("token-classification", f"{source} has {tagged} lines, a tag per word")
    return _from_table(_sample(source), data, options)


def _tagged_lines(path: Path) -> str | None:
    """'word/TAG' or 'CoNLL' when the first lines of a text file are laid out so, as ftune.data.tagged reads them."""
    check_not_compressed(regular_file(path))
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        lines = [line.rstrip("\r\n") for line in islice(f, SAMPLE_ROWS)]
    words = [line.split() for line in lines if line.strip()]
    if not words:
        return None
    if sum(map(len, words)) >= 2 * len(words) and _is_word_slash_tag(lines):  # several tokens a line: not a URL list
        return "word/TAG"
    # CoNLL: a word and its tag (and maybe more columns) on every line, the same number of fields throughout, and a
    # blank line between sentences. A table of free text has neither the fixed count nor the blank lines.
    counts = pd.Series([len(w) for w in words if w[0] != "-DOCSTART-"]).value_counts()
    fixed = len(counts) > 0 and counts.index[0] >= 2 and counts.iloc[0] >= 0.9 * counts.sum()
    return "CoNLL" if fixed and any(not line.strip() for line in lines) else None


def _sample(source: str) -> pd.DataFrame:
    """The first SAMPLE_ROWS rows of the training data (its train split, where it brings splits)."""
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".csv", ".tsv", ".txt", ".jsonl", ".json", ".parquet"):
        check_not_compressed(regular_file(path))
        try:
            if suffix in (".csv", ".tsv", ".txt"):
                return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", nrows=SAMPLE_ROWS, dtype=str,
                                   encoding="utf-8-sig", keep_default_na=False)
            if suffix == ".jsonl" or (suffix == ".json" and _first_line_is_object(path)):
                with path.open(encoding="utf-8-sig") as f:
                    rows = [json.loads(line) for line in islice((line for line in f if line.strip()), SAMPLE_ROWS)]
                if all(isinstance(row, dict) for row in rows):
                    return pd.DataFrame(rows)
            elif suffix == ".parquet":
                import pyarrow.parquet as pq

                batch = next(pq.ParquetFile(path).iter_batches(batch_size=SAMPLE_ROWS), None)
                if batch is not None:
                    return batch.to_pandas()
        except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError):
            pass  # read_source below says what is wrong with the file, as the task's loader would
    table = read_source(source)  # a JSON document, a saved dataset, a hub id; or the error about a broken file
    if isinstance(table, dict):
        named = {SPLIT_ALIASES.get(name.lower(), name): frame for name, frame in table.items()}
        table = named.get("train", next(iter(table.values())))
    return table.head(SAMPLE_ROWS)


def _from_table(frame: pd.DataFrame, data: DataConfig, options: dict[str, Any]) -> Inferred:
    columns = set(map(str, frame.columns))
    if data.label_column is None:  # a label column the user named means labels, whatever else the table holds
        messages = options.get("messages_column", "messages")
        prompt, response = options.get("prompt_column", "prompt"), options.get("response_column", "response")
        chosen, rejected = options.get("chosen_column", "chosen"), options.get("rejected_column", "rejected")
        completion, marks = options.get("completion_column", "completion"), options.get("label_column", "label")
        if {prompt, completion, marks} <= columns:
            return Inferred("kto", f"columns '{prompt}', '{completion}' and '{marks}' hold answers marked good or bad")
        if {chosen, rejected} <= columns:
            return Inferred("preference", f"columns '{chosen}' and '{rejected}' hold answers preferred and not")
        if messages in columns and _mostly(frame[messages].map(_is_chat).tolist()):
            return Inferred("causal-lm", f"column '{messages}' holds chats (role and content messages)")
        if {prompt, response} <= columns and "label" not in columns:
            return Inferred("causal-lm", f"columns '{prompt}' and '{response}' hold instructions and their answers")
    words, tags = data.text_column or "tokens", data.label_column or "tags"
    if {words, tags} <= columns and _mostly([w is not None and t is not None and len(w) == len(t) for w, t in
                                             zip(frame[words].map(_as_list), frame[tags].map(_as_list))]):
        return Inferred("token-classification", f"columns '{words}' and '{tags}' hold a tag per word")
    name = data.label_column or "label"
    if name not in columns:  # the task's loader names the missing column and the ones there are
        return Inferred("classification", f"no label column '{name}' to read", plain=True)
    cells = [cell for cell in frame[name] if not _missing(cell)]
    if not cells:
        return Inferred("classification", f"label column '{name}' holds no labels", plain=True)
    return _from_labels(cells, name, options.get("label_separator", "|"))


def _from_labels(cells: list, name: str, separator: str) -> Inferred:
    sets = _label_sets(cells, separator)
    if sets is not None:
        return Inferred("multi-label", f"label column '{name}' holds label sets like {_short(sets)}")
    numbers = [_number(cell) for cell in cells]
    if all(n is not None for n in numbers):
        values = np.array(numbers)
        distinct = len(np.unique(values))
        span = f"{_num(values.min())} to {_num(values.max())}"
        if not np.all(values == np.round(values)):
            return Inferred("regression", f"label column '{name}' holds numbers with fractions ({span})")
        if distinct > MAX_CLASSES:
            return Inferred("regression", f"label column '{name}' holds {distinct} different whole numbers ({span}): "
                                          f"more than {MAX_CLASSES}, so a quantity rather than classes")
        if distinct > 2:  # 1..5 stars: classes by default, but the user should hear of the other reading
            return Inferred("classification", f"label column '{name}' holds {distinct} whole numbers ({span}), taken "
                                              f"as classes, not as a scale (that is task regression)")
    names = list(dict.fromkeys(str(cell).strip() for cell in cells))
    shown = ", ".join(_short(label) for label in names[:3]) + (", ..." if len(names) > 3 else "")
    return Inferred("classification", f"label column '{name}' holds {len(names)} classes ({shown})", plain=True)


def _label_sets(cells: list, separator: str) -> Any:
    """An example label set when the cells are label sets, else None: any cell that is a list (a list is a set, even
    of one label), or at least MIN_SETS of them strings of labels joined by `separator` (one such cell in a thousand
    is more likely a class name with a '|' in it)."""
    listed = [_as_list(cell) or cell for cell in cells if _as_list(cell) is not None or _looks_listed(cell)]
    joined = [cell for cell in cells if isinstance(cell, str) and not _looks_listed(cell)
              and len([piece for piece in cell.split(separator) if piece.strip()]) >= 2]
    if not listed and len(joined) < max(1, MIN_SETS * len(cells)):
        return None
    several = [cell for cell in listed if not isinstance(cell, list) or len(cell) >= 2] + joined
    return (several or listed)[0]


def _missing(cell: Any) -> bool:
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return True
    return isinstance(cell, str) and (not cell.strip() or cell.strip() in MISSING_LABELS)


def _as_list(cell: Any) -> list | None:
    """A list cell as a list (JSON lists, Parquet's numpy arrays), else None."""
    if isinstance(cell, (list, tuple)):
        return list(cell)
    if isinstance(cell, np.ndarray):
        return cell.tolist()
    return None


def _looks_listed(cell: Any) -> bool:
    """A CSV cell written as a list ('["a", "b"]'), which the multi-label task reads as one."""
    return isinstance(cell, str) and cell.strip().startswith("[") and cell.strip().endswith("]")


def _is_chat(cell: Any) -> bool:
    messages = _as_list(cell)
    return bool(messages) and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)


def _mostly(flags: list[bool]) -> bool:
    """Nine rows in ten or more: a stray row does not decide a task, nor hide one (the loader names it)."""
    return len(flags) > 0 and sum(flags) >= 0.9 * len(flags)


def _number(cell: Any) -> float | None:
    """The finite number a label cell holds, else None (booleans are classes, not numbers)."""
    if isinstance(cell, (bool, np.bool_)):
        return None
    if isinstance(cell, (int, float, np.integer, np.floating)):
        return float(cell) if math.isfinite(cell) else None
    if isinstance(cell, str) and NUMBER.fullmatch(cell.strip()):
        return float(cell)
    return None


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _short(value: Any, limit: int = 30) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
