"""Scores by slice on real data: a finished run's own test split, grouped by text length (a group derived from the
text itself, so no outside label is needed), through `ftune eval RUN --data FILE --slice-by length`.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/slices_by_length.py runs/mr_lora     # a run of configs/mr_lora.yaml

Writes the test split with its `length` column to bench/results/<run>-test-by-length.csv and prints the slices.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from side_by_side import cli  # bench/: on sys.path as the script's own folder

RESULTS = Path(__file__).parent / "results"
BUCKETS = ((12, "1-12 words"), (25, "13-25 words"), (10**9, "26+ words"))


def main(run_dir: str) -> None:
    from ftune.run import Run
    from ftune.tasks import task_for

    run = Run(run_dir)
    splits = task_for(run.config).load_splits(run.config.train.seed)  # the run's own split: its test texts
    test = splits.test.assign(label=[splits.labels[i] for i in splits.test["label"]])
    words = test["text"].str.split().str.len().to_numpy()
    test["length"] = np.select([words <= limit for limit, _ in BUCKETS], [name for _, name in BUCKETS], default="")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{Path(run_dir).name}-test-by-length.csv"
    test.to_csv(path, index=False)
    cli(["eval", run_dir, "--data", str(path), "--slice-by", "length"])


if __name__ == "__main__":
    main(sys.argv[1])
