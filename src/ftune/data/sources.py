"""Read labeled data from wherever the user keeps it into pandas DataFrames.

A source is a built-in dataset name, a file (CSV, TSV, JSON, JSONL, Parquet), a `datasets`
`save_to_disk` directory, or a hub dataset id. A source with named splits comes back as a dict.
Whatever cannot be read becomes one DataError naming the file, the line or column, and the fix.
"""

from __future__ import annotations

import errno
import json
import re
import stat
import sys
from pathlib import Path

from ftune.data.builtin import CATALOG, builtin_path
from ftune.errors import DataError
from ftune.lazy import lazy

pd = lazy("pandas")

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
Table = "pd.DataFrame | dict[str, pd.DataFrame]"  # for annotations: pandas is imported on first use
# pandas picks a decompressor from the file name only, so a compressed file named .csv reads as binary garbage;
# its first bytes say what it is. (Refused rather than read: the line numbers of our errors would be wrong.)
COMPRESSED = {b"\x1f\x8b": ("gzip", "gunzip -c"), b"PK\x03\x04": ("zip", "unzip -p"), b"BZh": ("bzip2", "bunzip2 -c"),
              b"\xfd7zXZ\x00": ("xz", "unxz -c"), b"\x28\xb5\x2f\xfd": ("zstd", "unzstd -c")}
# What the hub could hold: `owner/name` or a bare `name`. Anything else that is not here (or whose folder is here) is
# a missing local path, which must not cost a 30 s wait on an unreachable hub.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def read_source(source: str) -> Table:
    """One DataFrame, or {split name: DataFrame} for sources that carry their own splits."""
    path = Path(source).expanduser()
    # A built-in name means the built-in, unless a data file or a saved dataset of that name is here: a run
    # folder called `mr` (`--output-dir mr`) must not shadow the `mr` dataset.
    saved = (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
    if source in CATALOG and not (path.is_file() or saved):
        cached = builtin_path(source)
        if cached.suffix == ".jsonl":
            return pd.read_json(cached, lines=True, dtype=False)
        return pd.read_csv(cached, keep_default_na=False)
    if path.is_dir():
        return _read_saved_dataset(path)
    local = path.is_symlink() or path.exists() or (path.parent != Path(".") and path.parent.is_dir())
    if local or not HUB_ID.fullmatch(source) or path.suffix.lower() in SUFFIXES:
        return _read_file(regular_file(path))
    return _read_hub(source)


def regular_file(path: Path) -> Path:
    """`path` when it is a file that can be read twice; otherwise a DataError saying what it is instead."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(f"data file {path} is a symbolic link to {path.readlink()}, which does not exist; "
                            f"fix the link or pass the file itself") from None
        raise DataError(f"data file {path} does not exist; check the path "
                        f"(relative paths start at {Path.cwd()})") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"data file {path} is a loop of symbolic links; point the link at the file "
                            f"itself") from None
        raise DataError(f"data file {path} cannot be opened ({e.strerror}); check the path and its "
                        f"permissions") from None
    if stat.S_ISREG(mode):
        return path
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    # A file is read more than once (to find a bad line, to sniff JSONL), which a pipe cannot give.
    raise DataError(f"data file {path} is {kind}, not a regular file; write the data to a file and pass that")


def check_not_compressed(path: Path) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError as e:  # a file we may not read, say
        raise DataError(f"data file {path} cannot be opened ({e.strerror}); check its permissions") from None
    for magic, (kind, tool) in COMPRESSED.items():
        if head.startswith(magic):
            raise DataError(f"{path}: the file is {kind}-compressed (its first bytes say so), not plain text; "
                            f"decompress it first ({tool} {path.name} > {path.stem}-plain{path.suffix}) and pass that")


def read_lines(data: bytes, where: str) -> list[str]:
    """The non-blank lines of a text file or of stdin, or a DataError naming the first line that is not UTF-8."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{where} line {line}: not valid UTF-8; convert the text to UTF-8") from None
    # Only \n (and \r\n) end a line: str.splitlines() would also split a text at U+2028 and the like.
    return [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]


def read_stdin_lines() -> list[str]:
    """The non-blank lines of stdin, read as bytes (a real stdin has them; a test's StringIO only has text)."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    return read_lines(data, "stdin")


def read_text_lines(source: str) -> list[str]:
    """The non-blank lines of a plain text file (`ftune predict --input texts.txt`)."""
    path = regular_file(Path(source).expanduser())
    check_not_compressed(path)
    return read_lines(path.read_bytes(), str(path))


def _read_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES + (".txt",):
        if not suffix:  # the extension says how to read a file; guessing would misread some of them
            raise DataError(f"{path}: unsupported file type (no extension); rename it to end in one of "
                            f"{', '.join(SUFFIXES)}, whichever its format is")
        raise DataError(f"{path}: unsupported file type '{suffix}'; save it as one of {', '.join(SUFFIXES)}")
    check_not_compressed(path)
    lines = suffix == ".jsonl" or (suffix == ".json" and _first_line_is_object(path))
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix == ".tsv" else ","
            read = dict(sep=sep, encoding="utf-8-sig", keep_default_na=False, dtype=str)
            # pandas renames a repeated column to 'label.1' and reads the first; read the header as it is written.
            _check_unique(pd.read_csv(path, header=None, nrows=1, **read).iloc[0].tolist(), path)
            return pd.read_csv(path, **read)
        if suffix in (".json", ".jsonl"):
            _check_json(path, lines)
            return pd.read_json(path, lines=lines, dtype=False)
        import pyarrow.parquet as pq

        _check_unique(pq.read_schema(path).names, path)
        return pd.read_parquet(path)
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not valid UTF-8; re-save the file as UTF-8") from None
    except (ValueError, TypeError, pd.errors.ParserError, OSError) as e:
        if lines:  # pandas does not say where a JSONL file breaks; the standard library does, line by line
            _check_json_lines(path)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot be read as {suffix[1:].upper()} ({first}); fix the file or its extension") from None


def _check_unique(names: list, path: Path) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: column '{name}' appears more than once; rename or remove one of them")
        seen.add(name)


def _check_json(path: Path, lines: bool) -> None:
    """Repeated keys (pandas silently keeps the last) and, for a JSON document, where it breaks. JSONL is checked on
    its first record only (cheap; it names the columns); its broken lines are found when pandas fails."""
    def unique_keys(pairs: list) -> dict:
        _check_unique([key for key, _ in pairs], path)
        return dict(pairs)

    with path.open(encoding="utf-8-sig") as f:
        text = next((line for line in f if line.strip()), "") if lines else f.read()
    try:
        json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        line = 1 if lines else e.lineno  # a broken first JSONL line: pandas would fail on it too
        raise DataError(f"{path} line {line}: not valid JSON ({e.msg} at column {e.colno}); fix that line") from None


def _check_json_lines(path: Path) -> None:
    """The first line of a JSONL file that is not a JSON object, as a DataError."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))  # so that the error's column is on this line
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {number}: not valid JSON ({e.msg} at column {e.colno}); "
                                f"fix or remove that line") from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {number}: a JSON {type(record).__name__}, not an object; JSONL needs "
                                f'one object per line, like {{"text": "...", "label": "..."}}') from None


def _first_line_is_object(path: Path) -> bool:
    """A .json file holding JSONL: its first line is a whole JSON object (a JSON document's first line is not)."""
    with path.open("rb") as f:
        first = next((line for line in f if line.strip()), b"")
    if first.lstrip()[:1] != b"{":
        return False
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:  # also UnicodeDecodeError: pandas will name the line
        return False


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
                        f"available offline ({type(e).__name__}); pass a local file ({', '.join(SUFFIXES)}) "
                        f"or a save_to_disk folder") from None
    return {name: split.to_pandas() for name, split in loaded.items()}
