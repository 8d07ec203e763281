"""Label columns that are not one class name per row: label sets (multi-label) and numbers (regression).

Both read the text column(s) as classification does (ftune.data.prepare.select_columns) and parse the label column
cell by cell; a bad cell is a DataError that names its row (1-based), shows the value and says the fix.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any, Callable

import numpy as np

from ftune.data.prepare import MISSING_LABELS, column, preview, select_columns
from ftune.errors import DataError
from ftune.lazy import lazy

pd = lazy("pandas")

# Cells that mean "no value": the classification markers, plus NA / N/A, which for a number cannot be a real value.
MISSING_TARGETS = MISSING_LABELS | {"NA", "N/A", "na", "n/a", "NaN", "nan"}
# Squares of targets (and of their differences) must stay normal doubles, or the scale, the loss and RMSE overflow
# to inf or underflow to 0 (1e199 targets made task.json unusable; 1e-301 ones were "all the same").
MAX_TARGET = 1e150


def with_labels(frame: pd.DataFrame, cfg, where: str, parse: Callable[[pd.Series, str, str], list | np.ndarray],
                default: str = "label") -> pd.DataFrame:
    """text / [text_pair] as select_columns checks them, and `label`: `parse(cells, where, column name)`."""
    out = select_columns(frame, cfg, where, need_label=False)
    name = cfg.label_column or default
    return out.assign(label=parse(column(frame, name, "label_column", where), where, name))


# --- label sets ---------------------------------------------------------------------------------------------------

def parse_label_sets(cells: pd.Series, where: str, name: str, separator: str) -> list[list[str]]:
    """Each row's label names (a list, no repeats); an empty set is an error."""
    cells = cells.reset_index(drop=True)
    parsed, empty, missing = [], [], []
    for row, cell in enumerate(cells):
        try:
            names, was_missing = parse_label_cell(cell, separator)
        except ValueError as e:
            raise DataError(f"{where} row {row + 1}: column '{name}' holds {preview(cell)}, {e}") from None
        parsed.append(names)
        if not names:
            empty.append(row)
            missing.append(was_missing)
    if empty:
        row = empty[0]
        cell = cells.iloc[row]
        what = f"label '{cell.strip()}' (a missing value)" if missing[0] and isinstance(cell, str) else \
            "an empty label set"
        raise DataError(f"{where} row {row + 1}: {what} in column '{name}'; every row needs at least one label "
                        f"(several joined by '{separator}', or a list): fill it or remove the row ({len(empty)} such "
                        f"rows)")
    return parsed


def parse_label_cell(cell: Any, separator: str) -> tuple[list[str], bool]:
    """(the label names of one cell, whether the cell was a missing value). A list is taken as is; a string that looks
    like a list ('["a", "b"]' or "['a', 'b']") is read as one; any other string is split at `separator`. Names are
    stripped; empty pieces and repeats are dropped. ValueError (the rest of a message) for what cannot be labels."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return [], True
    if isinstance(cell, str):
        text = cell.strip()
        if text in MISSING_LABELS:
            return [], True
        if text.startswith("[") and text.endswith("]"):
            items = _read_list(text)
            if items is None:
                raise ValueError(f"which looks like a list but is neither JSON nor a Python list; write it as "
                                 f"[\"a\", \"b\"], or as labels joined by '{separator}' (task.label_separator)")
            return _names(items), False
        return _unique(piece.strip() for piece in text.split(separator)), False
    if isinstance(cell, (list, tuple, set, np.ndarray, pd.Series)):
        items = list(cell)
        return _names(sorted(items, key=str) if isinstance(cell, set) else items), False
    if isinstance(cell, bool) or not isinstance(cell, (int, float, np.integer, np.floating)):
        raise ValueError(f"which is not a label set; give a list of labels or a string of labels joined by "
                         f"'{separator}'")
    return _names([cell]), False


def _read_list(text: str) -> list | None:
    for read in (json.loads, ast.literal_eval):
        try:
            value = read(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, (list, tuple)):
            return list(value)
    return None


def _names(items: list) -> list[str]:
    names = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float, np.integer, np.floating)):
            raise ValueError(f"a list with {preview(item)} among its labels; each label must be a string")
        if isinstance(item, (float, np.floating)) and math.isnan(item):
            raise ValueError("a list with a missing value among its labels; each label must be a string")
        names.append(str(int(item)) if isinstance(item, (float, np.floating)) and float(item).is_integer()
                     else str(item).strip())
    return _unique(names)


def _unique(names) -> list[str]:
    return list(dict.fromkeys(n for n in names if n))


def check_known(frame: pd.DataFrame, labels: list[str], where: str, split: str | None) -> None:
    """A label the training data does not have is an error: the model has no output for it."""
    known = set(labels)
    unknown = [row for row, names in enumerate(frame["label"]) if not known.issuperset(names)]
    if unknown:
        row = unknown[0]
        name = next(n for n in frame["label"].iloc[row] if n not in known)
        has = f"the {split} split has label" if split else "label"
        rows = f"{len(unknown)} such {split} rows" if split else f"{len(unknown)} such rows"
        shown = ", ".join(labels[:10]) + (", …" if len(labels) > 10 else "")
        raise DataError(f"{where} row {row + 1}: {has} '{name}', which does not occur in the training data (labels: "
                        f"{shown}), so the model cannot predict it; fix the label, add training examples for it, or "
                        f"remove the {rows}")


def multi_hot(label_ids: pd.Series | list, num_labels: int) -> np.ndarray:
    """The float32 (rows, labels) 0/1 matrix of lists of label ids."""
    matrix = np.zeros((len(label_ids), num_labels), dtype=np.float32)
    for row, ids in enumerate(label_ids):
        matrix[row, list(ids)] = 1.0
    return matrix


# --- numbers --------------------------------------------------------------------------------------------------------

def parse_targets(values: pd.Series, where: str, name: str) -> np.ndarray:
    """Each cell as a float64, or a DataError naming the first bad row (1-based), its value and the fix."""
    values = values.reset_index(drop=True)
    parsed = np.empty(len(values), dtype=np.float64)
    problems: list[str | None] = []
    for i, value in enumerate(values):
        number, problem = _parse_target(value)
        parsed[i] = number
        problems.append(problem)
    bad = [i for i, p in enumerate(problems) if p is not None]
    if not bad:
        return parsed
    row, kind = bad[0], problems[bad[0]]
    count = sum(p == kind for p in problems)
    value = values.iloc[row]
    shown = preview(value)
    place = f"{where} row {row + 1}"
    if kind == "missing":
        what = f"target {shown} (a missing value)" if isinstance(value, str) and value.strip() else "empty target"
        raise DataError(f"{place}: {what} in column '{name}'; fill it with a number or remove the row "
                        f"({count} such rows)")
    if kind == "nested":
        raise DataError(f"{place}: column '{name}' holds {shown}, not one number per row; give each row a single "
                        f"number ({count} such rows)")
    if kind == "too large":
        raise DataError(f"{place}: target {shown} in column '{name}' is beyond ±{MAX_TARGET:.0e}, where squared "
                        f"errors overflow; rescale the column (divide it by a power of ten, or take its logarithm) "
                        f"({count} such rows)")
    if kind == "not finite":
        raise DataError(f"{place}: target {shown} in column '{name}' is not a finite number; replace it with a "
                        f"finite number or remove the row ({count} such rows)")
    hint = ""
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?[0-9]+,[0-9]+\s*", value):
        hint = f"; write the decimal point as '.' ({value.strip().replace(',', '.')})"
    elif isinstance(value, str) and re.search(r"[A-Za-z]", value) and not re.search(r"[0-9]", value):
        hint = "; for a label per text use task: classification"
    raise DataError(f"{place}: target {shown} in column '{name}' is not a number; regression needs a number in "
                    f"every row: fix it or remove the row ({count} such rows){hint}")


def _parse_target(value) -> tuple[float, str | None]:
    """(the number, None) or (nan, what is wrong: missing / nested / not finite / not a number)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return math.nan, "missing"
    if isinstance(value, (list, tuple, dict, set, bytes, np.ndarray)):
        return math.nan, "nested"
    if isinstance(value, (bool, np.bool_)):  # a yes/no column is a label, not a number
        return math.nan, "not a number"
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
        if math.isnan(number):
            return math.nan, "missing"
        return _in_range(number)
    if not isinstance(value, str):
        return math.nan, "not a number"
    text = value.strip()
    if text == "" or text in MISSING_TARGETS:
        return math.nan, "missing"
    # float() also reads '1_000' and full-width digits; a target is written in plain decimal notation.
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|infinity)", text,
                        flags=re.IGNORECASE | re.ASCII):
        return math.nan, "not a number"
    return _in_range(float(text))


def _in_range(number: float) -> tuple[float, str | None]:
    if not math.isfinite(number):
        return math.nan, "not finite"
    return (number, None) if abs(number) <= MAX_TARGET else (math.nan, "too large")
