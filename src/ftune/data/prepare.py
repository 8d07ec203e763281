"""From sources to clean train/validation/test splits with integer labels and saved names."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import numpy as np

from ftune.lazy import lazy
from ftune.schema import DataConfig
from ftune.data.sources import Table, read_source, read_text_lines
from ftune.errors import DataError

pd = lazy("pandas")
model_selection = lazy("sklearn.model_selection")

SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
# How other tools write a missing value into a CSV cell; as a label it would become a class of its own.
# (NA and N/A are left alone: they are also real labels, "not applicable".)
SLICE_PREFIX = "slice:"  # a data.slice_columns column as the splits carry it
MISSING_LABELS = {"nan", "NaN", "NAN", "-nan", "None", "null", "NULL", "<NA>", "#N/A"}


@dataclass
class Splits:
    """Three DataFrames with columns text, [text_pair], label (an int index into `labels`)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    unseen_labels: list[str] = field(default_factory=list)  # tags only in validation/test: ids len(labels) and up

    def fingerprint(self) -> str:
        """sha256 of every split's texts and labels: what the manifest records as the data hash."""
        h = hashlib.sha256()
        for name in ("train", "validation", "test"):
            frame = getattr(self, name)
            frame = frame.drop(columns=[c for c in frame.columns if str(c).startswith(SLICE_PREFIX)])  # not data
            frame = frame.map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)  # tags, chats
            h.update(name.encode())
            h.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
        return h.hexdigest()


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Read, check and split the configured data; deterministic for a given seed."""
    given = given_splits(cfg, read_source, select_columns)
    labels = label_names(given["train"]["label"])
    for name, frame in given.items():
        given[name] = encode_labels(frame, labels, where=source_name(cfg, name), split=name)
    splits = complete_splits(given, cfg, seed, labels)
    found = np.unique(splits.train["label"])
    if len(found) < 2:  # caught here, not by the TF-IDF baseline after the whole run has trained
        held = "" if len(labels) < 2 else (
            f" (the data has {', '.join(labels[:10])}, but too few rows of the others to leave any in the training "
            f"split after the validation/test hold-out and data.max_train_samples)")
        raise DataError(f"{cfg.train}: every row of the training split has label '{labels[found[0]]}'{held}; "
                        f"classification needs at least 2 classes in the training split: add rows of the other "
                        f"class(es), or check data.label_column")
    _check_labels_repeat(splits, cfg)
    return splits


def _check_labels_repeat(splits: Splits, cfg: DataConfig) -> None:
    """Refuse a label column whose values (nearly) never repeat, an id or a free text: every held-out label is then
    unseen in training, and the run would train to 0% with no more than an imbalance warning."""
    rows = len(splits.train) + len(splits.validation) + len(splits.test)
    seen = set(splits.train["label"].tolist())
    unseen = int((~splits.validation["label"].isin(seen)).sum())
    if not ((len(splits.labels) >= 20 and len(splits.labels) >= 0.9 * rows)
            or (len(splits.validation) >= 5 and unseen == len(splits.validation))):
        return
    name = cfg.label_column or "label"
    numeric = all(re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", n) for n in splits.labels)
    task = "; if it is a number to predict, use task: regression" if numeric else ""
    raise DataError(f"{cfg.train}: label column '{name}' has {len(splits.labels)} distinct values in {rows} rows, and "
                    f"{unseen} of the {len(splits.validation)} validation rows have a label no training row has, so "
                    f"the model could not learn them: it looks like an id or a free text, not a class; set "
                    f"data.label_column (--label-column) to the column holding the classes{task}")


def complete_splits(given: dict[str, pd.DataFrame], cfg: DataConfig, seed: int, labels: list[str]) -> Splits:
    """Hold out the test and validation splits the data did not bring, then subsample as configured."""
    seed = seed if cfg.split_seed is None else cfg.split_seed  # --seeds varies train.seed on one fixed split
    train = given["train"]
    if "test" not in given:
        train, given["test"] = hold_out(train, cfg.test_size, seed, "test")
    if "validation" not in given:
        train, given["validation"] = hold_out(train, cfg.validation_size, seed, "validation")
    train = subsample(train, cfg.max_train_samples, seed)
    validation = subsample(given["validation"], cfg.max_eval_samples, seed)
    test = subsample(given["test"], cfg.max_eval_samples, seed)
    return Splits(train, validation, test, labels)


def load_eval_frame(source: str, cfg: DataConfig, labels: list[str]) -> pd.DataFrame:
    """A single labeled table for `ftune eval`, with labels mapped to the run's label names."""
    return encode_labels(select_columns(eval_table(source), cfg, source), labels, where=source)


def eval_table(source: str) -> pd.DataFrame:
    """The table of a labeled source to score (`ftune eval`, export parity): its test split where it has several."""
    return pick_split(read_source(source), "test")


def pick_split(table: Table, name: str) -> pd.DataFrame:
    """A source's split `name` where it has named splits (else its first), or its only table."""
    return table.get(name, next(iter(table.values()))) if isinstance(table, dict) else table


def read_texts(source: str, column: str | None) -> list[str]:
    """The texts of an unlabeled file (data.unlabeled): see text_table."""
    return text_table(source, column)[1]


def text_table(source: str, column: str | None) -> tuple[pd.DataFrame, list[str]]:
    """A file of texts without labels, as read (every column kept) and its texts: a .txt file a line each, or a
    table's text column (its first table, where the source holds several)."""
    if source.endswith(".txt"):
        texts = read_text_lines(source)
        return pd.DataFrame({"text": texts}), texts
    table = read_source(source)
    table = next(iter(table.values())) if isinstance(table, dict) else table
    return table, select_columns(table, DataConfig(text_column=column), source, need_label=False)["text"].tolist()


def select_columns(frame: pd.DataFrame, cfg: DataConfig, where: str, need_label: bool = True) -> pd.DataFrame:
    """Rename the user's columns to text / text_pair / label and check every text is present."""
    out = pd.DataFrame({"text": column(frame, cfg.text_column or "text", "text_column", where)})
    if cfg.text_pair_column:
        out["text_pair"] = column(frame, cfg.text_pair_column, "text_pair_column", where)
    if need_label:
        out["label"] = column(frame, cfg.label_column or "label", "label_column", where)
    for col in out.columns:
        nested = out[col].map(lambda v: isinstance(v, (list, tuple, dict, set, bytes, np.ndarray)))
        if nested.any():  # str() would turn it into its repr, and train on that
            row = int(nested.to_numpy().nonzero()[0][0])
            value = out[col].iloc[row]
            kind = {"dict": "a mapping", "bytes": "binary data"}.get(type(value).__name__, "a list")
            need = ("one label per row" if col == "label" else "a string: join the words into one text")
            raise DataError(f"{where} row {row + 1}: column '{_user_name(cfg, col)}' holds {kind} "
                            f"({preview(value)}), not {need}; for a tag per word use task: token-classification")
        cells = out[col].astype(str).str.strip()
        marked = cells.isin(MISSING_LABELS) & (col == "label")
        missing = out[col].isna() | (cells == "") | marked
        if missing.any():
            row = int(missing.to_numpy().nonzero()[0][0])
            what = "label" if col == "label" else "text"
            what = f"label '{cells.iloc[row]}' (a missing value)" if marked.iloc[row] else f"empty {what}"
            raise DataError(f"{where} row {row + 1}: {what} in column '{_user_name(cfg, col)}'; "
                            f"fill it or remove the row ({int(missing.sum())} such rows)")
    for col in ("text", "text_pair"):
        if col in out:
            out[col] = out[col].astype(str)
    return out.reset_index(drop=True)


def label_names(values: pd.Series) -> list[str]:
    """Sorted label names; integer labels sort numerically so 2 comes before 10."""
    names = {_label_str(v) for v in values}
    numeric = all(re.fullmatch(r"-?[0-9]+", n) for n in names)  # not isdigit(): it accepts '²', which int() refuses
    return sorted(names, key=int) if numeric else sorted(names)


def encode_labels(frame: pd.DataFrame, labels: list[str], where: str, split: str | None = None) -> pd.DataFrame:
    index = {name: i for i, name in enumerate(labels)}
    as_str = frame["label"].map(_label_str)
    unknown = ~as_str.isin(index)
    if unknown.any():
        row = int(unknown.to_numpy().nonzero()[0][0])
        has = f"the {split} split has label" if split else "label"
        count = int(unknown.sum())
        rows = f"{count} such {split} rows" if split else f"{count} such rows"
        raise DataError(f"{where} row {row + 1}: {has} '{as_str.iloc[row]}', which does not occur in the training "
                        f"data (labels: {', '.join(labels[:10])}), so the model cannot predict it; fix the label, add "
                        f"training examples for it, or remove the {rows}")
    return frame.assign(label=as_str.map(index).astype("int64"))


def given_splits(cfg: DataConfig, read: Callable[[str], Table],
                 select: Callable[[pd.DataFrame, DataConfig, str], pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The splits the data brings (its own, a split column, or the train/validation/test sources), each read with
    `read` and reduced by `select` to the task's columns."""
    table = read(cfg.train)
    splits = named_splits(table, cfg)
    for name, source in (("validation", cfg.validation), ("test", cfg.test)):
        if source:
            splits[name] = pick_split(read(source), name)
    out = {name: select(frame, cfg, source_name(cfg, name)) for name, frame in splits.items()}
    for name, frame in splits.items():
        out[name] = with_slice_columns(out[name], frame, cfg, source_name(cfg, name))
    if len(out["train"]) < 2:
        raise DataError(f"{cfg.train}: the training split has {len(out['train'])} rows; fine-tuning needs more")
    return out


def with_slice_columns(selected: pd.DataFrame, table: pd.DataFrame, cfg: DataConfig, where: str) -> pd.DataFrame:
    """The task's columns plus each data.slice_columns column as `slice:NAME` (strings), which the splits carry
    to the test scores by slice (ftune.slices) and the data hash leaves out."""
    for name in cfg.slice_columns:
        if name not in table.columns:
            raise DataError(f"{where}: data.slice_columns names '{name}', which is not a column (columns: "
                            f"{', '.join(map(str, table.columns[:12]))}); name a column that holds each row's group")
        values = table[name].reset_index(drop=True)
        if values.isna().any():
            row = int(values.isna().to_numpy().nonzero()[0][0])
            raise DataError(f"{where} row {row + 1}: no value in slice column '{name}'; fill it (e.g. 'unknown') "
                            f"or drop the column from data.slice_columns")
        if len(values) != len(selected):  # a task that reads several rows as one example: nothing to align
            raise DataError(f"{where}: data.slice_columns needs one row per example; drop data.slice_columns")
        selected = selected.assign(**{SLICE_PREFIX + name: values.astype(str).to_numpy()})
    return selected


def named_splits(table: Table, cfg: DataConfig) -> dict[str, pd.DataFrame]:
    if isinstance(table, dict):
        splits = {SPLIT_ALIASES.get(k.lower(), k): v for k, v in table.items()}
    elif cfg.split_column:
        col = column(table, cfg.split_column, "split_column", cfg.train)
        names = col.astype(str).str.lower().map(SPLIT_ALIASES)
        if names.isna().any():
            bad = col[names.isna()].iloc[0]
            raise DataError(f"{cfg.train}: split column '{cfg.split_column}' has value '{bad}'; use train, validation or test")
        splits = {name: table[names == name] for name in names.unique()}
    else:
        return {"train": table}
    if "train" not in splits:
        raise DataError(f"{cfg.train}: no 'train' split among {', '.join(splits)}; name one split train")
    return {k: v for k, v in splits.items() if k in ("train", "validation", "test")}


def hold_out(frame: pd.DataFrame, size: float, seed: int, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split `size` of the rows off for `name`, stratified by label when there is one label per row."""
    n_out = round(len(frame) * size)
    if n_out < 1 or n_out >= len(frame):
        raise DataError(f"cannot hold out {size:.0%} of {len(frame)} rows for {name}; add data or give a {name} file")
    counts = frame["label"].value_counts() if "label" in frame else None
    stratify = frame["label"] if counts is not None and counts.min() >= 2 and n_out >= len(counts) else None
    kept, held = model_selection.train_test_split(frame, test_size=n_out, random_state=seed, stratify=stratify)
    return kept.reset_index(drop=True), held.reset_index(drop=True)


def subsample(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    if limit is None or len(frame) <= limit:
        return frame
    return frame.sample(n=limit, random_state=seed).reset_index(drop=True)


def column(frame: pd.DataFrame, name: str, key: str, where: str) -> pd.Series:
    if name in frame.columns:
        return frame[name]
    columns = [str(c) for c in frame.columns]
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise DataError(f"{where}: no column '{name}' (columns: {', '.join(columns[:12])}); {hint}"
                    f"set data.{key} (--{key.replace('_', '-')})")


def preview(value, limit: int = 40) -> str:
    """A cell's value as an error message shows it: its repr, cut at `limit` characters."""
    text = repr(value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _label_str(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _user_name(cfg: DataConfig, col: str) -> str:
    return {"text": cfg.text_column or "text", "text_pair": cfg.text_pair_column or "",
            "label": cfg.label_column or "label"}[col]


def source_name(cfg: DataConfig, split: str) -> str:
    source = {"validation": cfg.validation, "test": cfg.test}.get(split) or cfg.train
    return source if Path(source).exists() or split == "train" else f"{source} ({split})"
