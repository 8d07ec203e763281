"""`ftune predict`'s texts in and answers out: the input file's own fields kept beside the answers, the output
written whole or not at all (it may be the input file itself), and no megabytes echoed to the terminal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ftune import integrity
from ftune.errors import FtuneError

OUTPUT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
ECHO_CHARS = 1_000  # a printed answer repeats at most this much of its text: enough to tell which text it was


def check_output(path: Path) -> None:
    """Refuse an --output that cannot be written before the model loads, not after the work is done."""
    if path.is_dir():
        raise FtuneError(f"--output {path} is a folder; pass a file name, e.g. {path / 'predictions.csv'}")
    if not path.parent.is_dir():
        raise FtuneError(f"--output {path}: the folder {path.parent} does not exist; create it or write elsewhere")
    if path.exists() and not path.is_file():
        raise FtuneError(f"--output {path} is not a regular file; write to a file")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise FtuneError(f"--output {path}: write predictions to a file ending in {', '.join(OUTPUT_SUFFIXES)}")


def check_texts(texts: list[str], where: str) -> None:
    """A text the shell passed with bytes that are not UTF-8 arrives with lone surrogates, which no tokenizer
    or writer takes: refuse it as files and stdin do."""
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise FtuneError(f"{where} {i + 1}: not valid UTF-8 (a lone surrogate or a stray byte); pass the text "
                             f"as UTF-8") from None


def echo(text: str, result: dict) -> str:
    """One printed JSON line: the answer with its text, cut to ECHO_CHARS (then `text_chars` says how long it was)."""
    shown = {"text": text} if len(text) <= ECHO_CHARS else {"text": text[:ECHO_CHARS] + "…", "text_chars": len(text)}
    return json.dumps({**shown, **result}, ensure_ascii=False)


def write_predictions(frame: pd.DataFrame, results: list[dict], path: Path) -> None:
    """The input rows with every field they had plus the answer's fields, as CSV/TSV (a column per answer field
    that fits a cell) or JSON/JSONL (the whole answer). Written to a temp file and renamed: `--output` may be the
    input file, which must stay whole until the new one is complete."""
    suffix = path.suffix.lower()
    try:
        with integrity.atomic_path(path) as tmp:
            if suffix in (".jsonl", ".json"):
                rows = [{**_plain(row), **result} for row, result in zip(frame.to_dict("records"), results)]
                with tmp.open("w", encoding="utf-8") as f:
                    if suffix == ".jsonl":
                        f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
                    else:
                        json.dump(rows, f, ensure_ascii=False, default=str)
            else:
                # label and score, the word/TAG pairs of a tagged text, a label set, a value; per-class scores and
                # word lists stay in the JSON output.
                simple = [k for k in (results[0] if results else {}) if k not in ("scores", "tokens")]
                columns = {k: ["|".join(r[k]) if isinstance(r[k], list) else r[k] for r in results] for k in simple}
                frame.assign(**columns).to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")
    except OSError as e:
        raise FtuneError(f"cannot write --output {path} ({e.strerror or e}); choose a writable file") from None


def _plain(row: dict) -> dict:
    """A table row as JSON has it: a missing cell (NaN, where other rows have the field) is null, not NaN."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
