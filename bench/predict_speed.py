"""Inference speed, side by side in one run: `transformers.pipeline`, `ftune predict` on the PyTorch
run, and `ftune predict` on its ONNX export (fp32 and int8, onnxruntime), all on the same texts.

    .venv/bin/python bench/predict_speed.py --run runs/mr_full     # a finished full/freeze run (has model/)
    .venv/bin/python bench/predict_speed.py                        # trains a small run first (~1 minute)

Texts: 1,600 `mr` sentences (train split, fixed order). The export is RUN/onnx, made first with
`ftune export RUN --quantize int8` when missing. Prints samples/s, ratios to the pipeline with its
default batch and to ftune's PyTorch path, the share of labels equal to the pipeline's, and writes
bench/results/predict_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PYTORCH = "ftune predict, PyTorch run (length-sorted batches of 128)"


def timed(fn, texts: list[str]) -> tuple[float, list[str]]:
    fn(texts[:64])  # warm-up: first-call allocations are not what a service pays per request
    start = time.perf_counter()
    labels = fn(texts)
    return len(texts) / (time.perf_counter() - start), labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a finished run directory with model/")
    p.add_argument("--texts", type=int, default=1600)
    args = p.parse_args()

    import ftune
    from ftune.config import DataConfig
    from ftune.data import load_splits
    from ftune.predictors.onnx import OnnxPredictor
    from ftune.predictors import Predictor
    from transformers import pipeline

    run_dir = args.run
    if run_dir is None:
        run_dir = str(RESULTS / "predict_run")
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        ftune.train(ftune.load_config(overrides={"data.max_train_samples": 320, "train.epochs": 1,
                                                 "train.baselines": False, "output_dir": run_dir}), quiet=True)
    texts = load_splits(DataConfig(train="mr"), seed=0).train["text"].tolist()[: args.texts]

    export_dir = Path(run_dir) / "onnx"
    if not (export_dir / "export.json").is_file():
        from ftune.export import export_onnx

        export_onnx(run_dir, export_dir, quantize="int8")
    classify = pipeline("text-classification", model=f"{run_dir}/model", device="cpu")
    predictors = {"pytorch": Predictor(run_dir), "fp32": OnnxPredictor(export_dir, "fp32"),
                  "int8": OnnxPredictor(export_dir, "int8")}
    recipes = {
        "transformers.pipeline, default batch (1)": lambda t: [r["label"] for r in classify(t, truncation=True)],
        "transformers.pipeline, batch_size=32": lambda t: [r["label"] for r in classify(t, batch_size=32, truncation=True)],
        PYTORCH: lambda t: [r["label"] for r in predictors["pytorch"].predict(t)],
        "ftune predict, ONNX fp32 export (onnxruntime)": lambda t: [r["label"] for r in predictors["fp32"].predict(t)],
        "ftune predict, ONNX int8 export (onnxruntime)": lambda t: [r["label"] for r in predictors["int8"].predict(t)],
    }
    rows = {name: timed(fn, texts) for name, fn in recipes.items()}
    reference = next(iter(rows.values()))
    lines = ["| recipe | samples/s | vs pipeline default | vs pipeline batch 32 | vs ftune PyTorch | same labels |",
             "|---|---|---|---|---|---|"]
    batch32 = rows["transformers.pipeline, batch_size=32"][0]
    for name, (sps, labels) in rows.items():
        same = sum(a == b for a, b in zip(labels, reference[1])) / len(texts)
        lines.append(f"| {name} | {sps:.1f} | {sps / reference[0]:.2f}x | {sps / batch32:.2f}x | "
                     f"{sps / rows[PYTORCH][0]:.2f}x | {same:.1%} |")
    table = "\n".join(lines)
    setup = f"{len(texts)} mr sentences, model {run_dir}/model, CPU threads {__import__('torch').get_num_threads()}"
    print(setup + "\n" + table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "predict_speed.md").write_text(setup + "\n\n" + table + "\n")
    (RESULTS / "predict_speed.json").write_text(json.dumps({name: sps for name, (sps, _) in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
