"""Scores by slice on real data: `mr` grouped by text length (a group derived from the text itself, so no outside
label is needed).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/slices_by_length.py runs/mr_lora     # a run of configs/mr_lora.yaml
    HF_HUB_OFFLINE=1 .venv/bin/python bench/slices_by_length.py --train runs/mr_lora_sliced

The first writes a finished run's own test split with its `length` column to bench/results/<run>-test-by-length.csv
and scores it with `ftune eval RUN --data FILE --slice-by length`. The second writes the whole of `mr` with that
column to bench/results/mr-by-length.csv and trains configs/mr_lora.yaml on it with `data.slice_columns=[length]`:
the run's metrics.json, report and `ftune runs compare` then show the test split by length, base model beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from side_by_side import cli  # bench/: on sys.path as the script's own folder

RESULTS = Path(__file__).parent / "results"
BUCKETS = ((12, "1-12 words"), (25, "13-25 words"), (10**9, "26+ words"))


def by_length(frame):
    """The frame with label names and a `length` bucket column (words split at whitespace)."""
    words = frame["text"].str.split().str.len().to_numpy()
    return frame.assign(length=np.select([words <= limit for limit, _ in BUCKETS], [n for _, n in BUCKETS], ""))


def main(run_dir: str) -> None:
    from ftune.run import Run
    from ftune.tasks import task_for

    run = Run(run_dir)
    splits = task_for(run.config).load_splits(run.config.train.seed)  # the run's own split: its test texts
    test = by_length(splits.test.assign(label=[splits.labels[i] for i in splits.test["label"]]))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{Path(run_dir).name}-test-by-length.csv"
    test.to_csv(path, index=False)
    cli(["eval", run_dir, "--data", str(path), "--slice-by", "length"])


def train(output: str) -> None:
    import pandas as pd

    from ftune.data.builtin import builtin_path
    from ftune.data.sources import read_source

    table = read_source(str(builtin_path("mr")))
    frame = pd.concat(table.values()) if isinstance(table, dict) else table
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "mr-by-length.csv"
    by_length(frame).to_csv(path, index=False)
    cli(["train", "configs/mr_lora.yaml", "--set", f"data.train={path}", "--set", "data.slice_columns=[length]",
         "--output-dir", output])


if __name__ == "__main__":
    train(sys.argv[2]) if sys.argv[1] == "--train" else main(sys.argv[1])
