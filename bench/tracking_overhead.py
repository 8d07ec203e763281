"""What tracking adds to a run: each backend replays a finished run's log into a fresh store, side by side.

    .venv/bin/python bench/tracking_overhead.py --run runs/mr_full

For each backend (none, mlflow, tensorboard), in one process: open the store (created on first
use), start the run, log every metrics.jsonl entry, finish (final metrics and artifact upload).
The imports are timed too (first backend use in a process pays them), and the total is shown as a
share of the run's own training time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ftune.config import TrackingConfig, validate
from ftune.run import Run, read_history
from ftune.tracking import connect


def replay(backend: str, run: Run, root: Path) -> dict:
    copy = root / f"run-{backend}"
    shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns("checkpoints", "model", "adapter", "onnx"))
    uri = f"sqlite:///{root / backend / 'mlflow.db'}" if backend == "mlflow" else str(root / backend)
    (root / backend).mkdir()
    cfg = TrackingConfig(backend=backend, uri=uri)
    config = validate({**run.config.model_dump(), "tracking": cfg.model_dump()})
    history = read_history(copy)
    times = {}
    t = time.perf_counter()
    tracker = connect(cfg)
    times["open store (with imports)"] = time.perf_counter() - t
    t = time.perf_counter()
    tracker.start(copy, config, resume=False)
    times["start run"] = time.perf_counter() - t
    t = time.perf_counter()
    for entry in history:
        tracker.log(entry)
    times[f"log {len(history)} entries"] = time.perf_counter() - t
    t = time.perf_counter()
    tracker.finish(copy, "complete")
    times["finish (upload)"] = time.perf_counter() - t
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/mr_full", help="a finished run directory")
    args = parser.parse_args()
    run = Run(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        results = {backend: replay(backend, run, Path(tmp)) for backend in ("none", "mlflow", "tensorboard")}
    train_s = run.metrics["train"]["seconds"]
    steps = list(results["none"])
    print(f"run {run.path}: {train_s:.0f} s of training, {len(read_history(run.path))} logged entries\n")
    print("| backend | " + " | ".join(s + " s" for s in steps) + " | total s | per entry ms | share of training |")
    print("|---" * (len(steps) + 4) + "|")
    for backend, times in results.items():
        total = sum(times.values())
        per_entry = 1000 * list(times.values())[2] / max(len(read_history(run.path)), 1)
        print(f"| {backend} | " + " | ".join(f"{v:.3f}" for v in times.values()) +
              f" | {total:.2f} | {per_entry:.2f} | {100 * total / train_s:.2f}% |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
