"""Build a multi-label demo corpus from the built-in BBC News articles (5 topics).

Each document is either the lead (first WORDS words) of one article, labeled with its topic, or the leads of two
articles of different topics joined, labeled with both ("business|tech"). Every article is used at most once, and
articles whose lead repeats another's (the corpus has some duplicates) are dropped first, so no text is shared
between the train and test splits that ftune later holds out. Deterministic for a given --seed.

    python scripts/bbc_pairs.py [OUT.csv] [--seed 0] [--single-share 0.3] [--words 60]

Writes a CSV with columns text,label (labels joined by '|'); by default data/bbc_pairs.csv. The texts are BBC's
(distributed by the dataset's authors for non-commercial research): keep the output out of version control.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import pandas as pd

from ftune.data.builtin import builtin_path


def lead(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def build(articles: pd.DataFrame, seed: int = 0, single_share: float = 0.3, words: int = 60) -> pd.DataFrame:
    """Documents of one or two article leads, each labeled with its articles' topics (sorted, joined by '|')."""
    leads = articles.assign(text=articles["text"].map(lambda t: lead(t, words)))
    leads = leads.drop_duplicates("text").reset_index(drop=True)
    order = list(range(len(leads)))
    random.Random(seed).shuffle(order)
    rng = random.Random(seed + 1)
    pool = [(leads["text"][i], leads["label"][i]) for i in order]
    rows = []
    while pool:
        text, topic = pool.pop(0)
        partner = None if rng.random() < single_share else next(
            (j for j, (_, other) in enumerate(pool) if other != topic), None)
        if partner is None:
            rows.append((text, topic))
            continue
        other_text, other_topic = pool.pop(partner)
        rows.append((f"{text} {other_text}", "|".join(sorted((topic, other_topic)))))
    return pd.DataFrame(rows, columns=["text", "label"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="data/bbc_pairs.csv", help="where to write the CSV")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single-share", type=float, default=0.3, help="share of documents that are one article")
    parser.add_argument("--words", type=int, default=60, help="words of each article's lead")
    args = parser.parse_args(argv)
    articles = pd.read_csv(builtin_path("bbc-news"), keep_default_na=False)
    corpus = build(articles, args.seed, args.single_share, args.words)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    corpus.to_csv(out, index=False)
    pairs = corpus["label"].str.contains("|", regex=False)
    print(f"{out}: {len(corpus)} documents from {len(articles)} articles, {int(pairs.sum())} of two topics and "
          f"{int((~pairs).sum())} of one; label sets: {corpus['label'].value_counts().to_dict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
