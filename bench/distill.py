"""Distillation on built-in data: the teacher (MiniLM, 6 layers, full fine-tuning) against students cut to 3 and 2 of
its layers, each trained on the teacher's soft labels (`ftune distill`, alpha 0.5) and on the hard labels alone (the
same cut student, alpha 0), on the same split. Then, per model, in a process of its own: `ftune predict` speed on
the test texts (PyTorch, and the int8 ONNX export), the model's size, and the export's test accuracy. On mr, one more
student also reads 10,000 movie-review sentences (from the built-in `movie-reviews`) that only the teacher labels.

    .venv/bin/python bench/distill.py                          # mr and bbc-news: ~30 minutes on 2 cores
    .venv/bin/python bench/distill.py --data mr --layers 3     # one dataset, one student size

Every training run is its own `ftune` process; runs go to bench/results/distill/<data>/<row> and a finished one is
reused (delete it to train again). Prints a table per dataset; writes bench/results/distill.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
FTUNE = str(Path(sys.executable).parent / "ftune")
CONFIGS = {"mr": "configs/mr_full.yaml", "bbc-news": "configs/bbc_full.yaml"}


def finished(run: Path) -> bool:
    manifest = run / "run.json"
    return manifest.is_file() and json.loads(manifest.read_text()).get("status") == "complete"


def ftune(*args: str) -> None:
    started = time.perf_counter()
    subprocess.run([FTUNE, *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"  ftune {' '.join(args[:2])} ... {time.perf_counter() - started:.0f} s", flush=True)


def review_sentences(path: Path, count: int) -> Path:
    """Unlabeled in-domain texts for `mr`: sentences of the built-in `movie-reviews` (full reviews, another corpus
    than mr's snippets), 5 to 60 words, `count` of them in a fixed random order; labels are not read."""
    import random

    from ftune.data.sources import read_source

    if not path.is_file():
        sentences = [" ".join(s.split()) for review in read_source("movie-reviews")["text"] for s in review.split(" . ")
                     if 5 <= len(s.split()) <= 60]
        random.Random(0).shuffle(sentences)
        path.write_text("\n".join(sentences[:count]) + "\n")
    return path


def train_rows(data: str, layers: list[int], folder: Path, unlabeled: int) -> dict[str, Path]:
    """{row name: finished run}: the teacher, then per student size the distilled and the hard-label student (and
    for mr a distilled one that also reads `unlabeled` review sentences only the teacher labels)."""
    teacher = folder / "teacher"
    if not finished(teacher):
        ftune("train", CONFIGS[data], "--output-dir", str(teacher), "--tracking", "none", "--quiet")
    rows = {"teacher (6 layers)": teacher}
    for n in layers:
        for alpha, kind in ((0.5, "distilled"), (0.0, "hard labels")):
            run = folder / f"student-{n}-alpha{alpha:g}"
            if not finished(run):
                ftune("distill", str(teacher), "--layers", str(n), "--alpha", str(alpha), "--output-dir", str(run),
                      "--quiet")
            rows[f"{n} layers, {kind}"] = run
        if data == "mr" and unlabeled:
            run = folder / f"student-{n}-unlabeled"
            if not finished(run):
                texts = review_sentences(folder / "unlabeled.txt", unlabeled)
                # one epoch over 4.5x the texts: about the optimizer steps of the others' three epochs, x1.5
                ftune("distill", str(teacher), "--layers", str(n), "--unlabeled", str(texts), "--epochs", "1",
                      "--output-dir", str(run), "--quiet")
            rows[f"{n} layers, distilled + {unlabeled:,} unlabeled sentences, 1 epoch"] = run
    return rows


def measure(run: str) -> None:
    """In its own process: `ftune predict` samples/s on the run's test texts, PyTorch and int8 ONNX (CPU)."""
    import ftune
    from ftune.predictors import Predictor
    from ftune.predictors.onnx import OnnxPredictor

    r = ftune.Run(run)
    texts = __import__("pandas").read_csv(Path(run) / "test_predictions.csv")["text"].astype(str).tolist()
    out = {}
    for name, predictor in (("pytorch", Predictor(run, device="cpu")),
                            ("int8", OnnxPredictor(Path(run) / "onnx", "int8", device="cpu"))):
        predictor.predict(texts[:64])  # warm-up
        passes = []
        for _ in range(3):  # the median of three passes: one pass can meet another process on these 2 cores
            start = time.perf_counter()
            predictor.predict(texts)
            passes.append(len(texts) / (time.perf_counter() - start))
        out[name] = sorted(passes)[1]
    parity = json.loads((Path(run) / "onnx" / "export.json").read_text())["parity"]
    test = r.metrics["test"]
    out.update(accuracy=test["finetuned"]["accuracy"], ci95=test["finetuned"]["accuracy_ci95"],
               int8_accuracy=parity["onnx-int8"]["accuracy"], int8_mb=parity["onnx-int8"]["bytes"] / 1e6,
               mb=(Path(run) / "model" / "model.safetensors").stat().st_size / 1e6,
               parameters=r.metrics["train"]["total_parameters"], train_s=r.metrics["train"]["seconds"],
               base=(test.get("base_model") or {}).get("accuracy"), texts=len(texts))
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--layers", nargs="+", type=int, default=[3, 2])
    p.add_argument("--unlabeled", type=int, default=10_000, help="mr: review sentences only the teacher labels (0: "
                   "no such row)")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one run's speed, in its own process
    args = p.parse_args()
    if args.measure:
        return measure(args.measure)
    results, lines = {}, []
    for data in args.data:
        print(f"{data}: training", flush=True)
        rows = train_rows(data, args.layers, RESULTS / "distill" / data, args.unlabeled)
        measured = {}
        for name, run in rows.items():
            if not (run / "onnx" / "export.json").is_file():
                ftune("export", str(run), "--quantize", "int8")
            done = subprocess.run([sys.executable, __file__, "--measure", str(run)], check=True, cwd=ROOT,
                                  capture_output=True, text=True)
            measured[name] = json.loads(done.stdout.strip().splitlines()[-1])
        results[data] = measured
        teacher = measured["teacher (6 layers)"]
        lines += [f"\n{data} (test split, {teacher['texts']} texts; predict speed on this CPU, one process each)\n",
                  "| model | test acc | 95% CI | before training | params | MB | predict /s | x teacher | int8 acc | "
                  "int8 /s | int8 MB | train s |", "|" + "---|" * 12]
        for name, m in measured.items():
            base = "" if m["base"] is None else f"{m['base']:.1%}"
            lines.append(f"| {name} | {m['accuracy']:.1%} | {m['ci95'][0]:.1%}–{m['ci95'][1]:.1%} | {base} | "
                         f"{m['parameters'] / 1e6:.1f}M | {m['mb']:.0f} | {m['pytorch']:.0f} | "
                         f"{m['pytorch'] / teacher['pytorch']:.2f}x | {m['int8_accuracy']:.1%} | {m['int8']:.0f} | "
                         f"{m['int8_mb']:.0f} | {m['train_s']:.0f} |")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distill.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "distill.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
