"""The learning-rate grid behind ftune's method-aware defaults: each method at several learning rates.

Each cell is one `ftune train` in its own process on the same split and seed; the table gives the
validation score the run picked its weights by, and the test score. The defaults in
`ftune.config.DEFAULT_LEARNING_RATES` are the rates that do well across the datasets here.

    .venv/bin/python bench/lr_grid.py                           # mr, 960 training sentences, 2 epochs
    .venv/bin/python bench/lr_grid.py --data wsj-pos --task token-classification --epochs 3

Writes bench/results/lr_grid-DATA.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
GRID = {"lora": [1e-4, 1e-3, 3e-3], "freeze": [1e-4, 1e-3], "full": [5e-5, 2e-4]}


def train_command(args, method: str, rate: float | str, out: Path) -> list[str]:
    """One grid cell as an `ftune train` command line (bench/lr_auto.py runs its cells with it too)."""
    command = [sys.executable, "-m", "ftune", "train", "--data", args.data, "--method", method,
               "--output-dir", str(out), "--tracking", "none", "--quiet",
               "--set", f"task={getattr(args, 'task', 'classification')}", "--set", f"train.learning_rate={rate}",
               "--set", f"train.epochs={args.epochs}", "--set", "train.baselines=false",
               "--set", f"data.max_length={args.max_length}", "--set", "train.seed=0"]
    if args.train_samples:
        command += ["--set", f"data.max_train_samples={args.train_samples}"]
    if method == "freeze":
        command += ["--set", "method.layers=4"]
    return command


def run_cell(args, method: str, lr: float, root: Path) -> dict:
    out = root / f"{method}-{lr:g}"
    command = train_command(args, method, lr, out)
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"method": method, "lr": lr, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    metrics = json.loads((out / "metrics.json").read_text())
    finetuned = metrics["test"]["finetuned"]
    return {"method": method, "lr": lr, "validation": metrics["validation"]["best"], "metric": metrics["validation"]["metric"],
            "test_accuracy": finetuned["accuracy"], "test_ci95": finetuned.get("accuracy_ci95"),
            "wall_s": round(time.time() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="mr")
    parser.add_argument("--task", default="classification")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=960)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--methods", default="lora,freeze,full")
    parser.add_argument("--lrs", default=None, help="only these rates, e.g. 1e-3,3e-3 (default: the grid)")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            for lr in [float(x) for x in args.lrs.split(",")] if args.lrs else GRID[method]:
                rows.append(run_cell(args, method, lr, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    name = f"lr_grid-{args.data}"
    (RESULTS / f"{name}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    lines = [f"`{args.data}` ({args.task}), {args.train_samples or 'all'} training examples, {args.epochs} epochs, seed 0",
             "", "| method | learning rate | best validation | test accuracy | 95% CI |", "|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | {row['lr']:g} | failed: {row['error']} | | |")
            continue
        best = max(r.get("validation") or 0 for r in rows if r["method"] == row["method"])
        mark = " **(best)**" if row["validation"] == best else ""
        ci = row["test_ci95"]
        lines.append(f"| {row['method']} | {row['lr']:g} | {row['metric']} {row['validation']:.4f}{mark} | "
                     f"{100 * row['test_accuracy']:.1f}% | {100 * ci[0]:.1f}–{100 * ci[1]:.1f}% |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
