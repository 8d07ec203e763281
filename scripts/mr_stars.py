"""A demo corpus for `task: regression`, made from the built-in `mr` sentences (nothing here is downloaded or
committed): each passage joins 4 movie-review sentences drawn without reuse (seeded), and its target `stars` is how
many of them are positive, 0-4. The built-in's 4,000 sentences make 1,000 passages.

    python scripts/mr_stars.py                 # writes data/mr_stars.csv (columns text, stars)
    ftune train configs/mr_regression.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ftune.data.sources import read_source


def passages(sentences: pd.DataFrame, per_passage: int = 4, seed: int = 0) -> pd.DataFrame:
    """Every sentence used once, in seeded random order, `per_passage` to a passage (a remainder is left out)."""
    order = np.random.default_rng(seed).permutation(len(sentences))
    order = order[: len(order) - len(order) % per_passage].reshape(-1, per_passage)
    texts = sentences["text"].to_numpy(dtype=object)
    positive = (sentences["label"] == "positive").to_numpy()
    return pd.DataFrame({"text": [" ".join(texts[group]) for group in order],
                         "stars": positive[order].sum(axis=1).astype(int)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="data/mr_stars.csv", help="CSV to write (default: data/mr_stars.csv)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sentences' order (default: 0)")
    parser.add_argument("--per-passage", type=int, default=4, help="sentences per passage (default: 4)")
    args = parser.parse_args()
    frame = passages(read_source("mr"), args.per_passage, args.seed)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    counts = frame["stars"].value_counts().sort_index()
    print(f"wrote {len(frame)} passages to {out} (stars: {', '.join(f'{k}: {v}' for k, v in counts.items())})")


if __name__ == "__main__":
    main()
