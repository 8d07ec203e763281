"""Read labeled data from wherever the user keeps it into pandas DataFrames.

A source is a built-in dataset name, a file (CSV, TSV, JSON, JSONL, Parquet), a `datasets`
`save_to_disk` directory, or a hub dataset id. A source with named splits comes back as a dict.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ftune.data.builtin import CATALOG, builtin_path
from ftune.errors import DataError

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
Table = pd.DataFrame | dict[str, pd.DataFrame]


def read_source(source: str) -> Table:
    """One DataFrame, or {split name: DataFrame} for sources that carry their own splits."""
    path = Path(source).expanduser()
    if source in CATALOG and not path.exists():
        cached = builtin_path(source)
        if cached.suffix == ".jsonl":
            return pd.read_json(cached, lines=True, dtype=False)
        return pd.read_csv(cached, keep_default_na=False)
    if path.is_dir():
        return _read_saved_dataset(path)
    if path.is_file():
        return _read_file(path)
    if path.suffix.lower() in SUFFIXES or source.startswith((".", "/", "~")):
        raise DataError(f"data file {source} does not exist; check the path (relative paths start at {Path.cwd()})")
    return _read_hub(source)


def _read_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix == ".tsv" else ","
            return pd.read_csv(path, sep=sep, encoding="utf-8-sig", keep_default_na=False, dtype=str)
        if suffix in (".json", ".jsonl"):
            lines = suffix == ".jsonl" or _looks_like_jsonl(path)
            return pd.read_json(path, lines=lines, dtype=False)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not valid UTF-8; re-save the file as UTF-8") from None
    except (ValueError, pd.errors.ParserError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot be read as {suffix[1:].upper()} ({first}); fix the file or its extension") from None
    raise DataError(f"{path}: unsupported file type '{suffix}'; use one of {', '.join(SUFFIXES)}")


def _looks_like_jsonl(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(64).lstrip()[:1] == b"{"


def _read_saved_dataset(path: Path) -> Table:
    import datasets

    if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise DataError(f"{path} is a directory but not a `datasets` save_to_disk folder; point at a file instead")
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        return {name: split.to_pandas() for name, split in loaded.items()}
    return loaded.to_pandas()


def _read_hub(source: str) -> Table:
    import datasets

    try:
        loaded = datasets.load_dataset(source)
    except Exception as e:  # the hub client raises many types; all mean "not reachable from here"
        raise DataError(f"'{source}' is not a file, a built-in dataset ({', '.join(CATALOG)}), or a hub dataset "
                        f"available offline ({type(e).__name__}); pass a local file or a save_to_disk folder") from None
    return {name: split.to_pandas() for name, split in loaded.items()}
