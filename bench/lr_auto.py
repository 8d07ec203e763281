"""`train.learning_rate: auto` on each method: the rate the range test chooses, what the run then scores, and
what the test costs.

Each cell is one `ftune train` in its own process (same split and seed) with `learning_rate: auto`; the
table gives the chosen rate (and the method's default beside it), the validation score the run picked its
weights by, the test accuracy, and the range test's seconds as a share of the process's wall time.
`--with-default` also trains each method at its default rate, for a side-by-side comparison.

    .venv/bin/python bench/lr_auto.py                          # mr, 960 training sentences, 2 epochs
    .venv/bin/python bench/lr_auto.py --train-samples 64 --epochs 1 --methods lora   # a quick check

Writes bench/results/lr_auto-DATA.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from ftune.config import default_learning_rate
from lr_grid import train_command  # the same cell command as the grid: bench/ is on sys.path when run as a script

RESULTS = Path(__file__).parent / "results"


def run_cell(args, method: str, rate: str, root: Path) -> dict:
    out = root / f"{method}-{rate}"
    command = train_command(args, method, rate, out)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    row = {"method": method, "rate": rate, "wall_s": round(wall, 1)}
    if done.returncode != 0:
        return {**row, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    metrics = json.loads((out / "metrics.json").read_text())
    finetuned = metrics["test"]["finetuned"]
    row.update(validation=metrics["validation"]["best"], metric=metrics["validation"]["metric"],
               test_accuracy=finetuned["accuracy"], test_ci95=finetuned.get("accuracy_ci95"),
               train_s=round(metrics["train"]["seconds"], 1), steps=metrics["train"]["steps"],
               learning_rate=json.loads((out / "run.json").read_text())["learning_rate"]["value"])
    if (out / "lr_find.json").is_file():
        curve = json.loads((out / "lr_find.json").read_text())
        row.update(range_test_s=round(curve["seconds"], 1), range_test_steps=len(curve["rates"]),
                   examples_per_step=curve["examples_per_step"], minimum_at=curve["minimum_at"],
                   share_of_wall=curve["seconds"] / wall)
    return row


def table(args, rows: list[dict]) -> list[str]:
    lines = [f"`{args.data}`, {args.train_samples or 'all'} training examples, {args.epochs} epochs, seed 0, "
             f"max_length {args.max_length}; one process per row",
             "", "| method | learning rate | method default | best validation | test accuracy | 95% CI | "
                 "range test | share of the run's wall time | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        default = f"{default_learning_rate(args.task, row['method']):g}"
        if "error" in row:
            lines.append(f"| {row['method']} | {row['rate']} | {default} | failed: {row['error']} | | | | | |")
            continue
        rate = f"**{row['learning_rate']:.1e}** (auto)" if row["rate"] == "auto" else f"{row['learning_rate']:g}"
        ci = row["test_ci95"]
        test = f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%" if ci else ""
        probe = (f"{row['range_test_steps']} steps x {row['examples_per_step']}, {row['range_test_s']:.1f} s"
                 if "range_test_s" in row else "")
        share = f"{100 * row['share_of_wall']:.1f}%" if "share_of_wall" in row else ""
        lines.append(f"| {row['method']} | {rate} | {default} | {row['metric']} {row['validation']:.4f} | "
                     f"{100 * row['test_accuracy']:.1f}% | {test} | {probe} | {share} | {row['wall_s']:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mr")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=960)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--task", default="classification")
    parser.add_argument("--methods", default="full,freeze,lora")
    parser.add_argument("--with-default", action="store_true", help="also train each method at its default rate")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            rates = ["auto", f"{default_learning_rate(args.task, method):g}"] if args.with_default else ["auto"]
            for rate in rates:
                rows.append(run_cell(args, method, rate, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    (RESULTS / f"lr_auto-{args.data}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    lines = table(args, rows)
    (RESULTS / f"lr_auto-{args.data}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
