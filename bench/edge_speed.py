"""On-device exports side by side: file size and single-text latency of a run's ONNX models, the int8 one in ONNX
Runtime's mobile (ORT) format, and its ExecuTorch programs (fp32 and int8, XNNPACK), each row in a process of its
own, on the same texts and thread count.

    .venv/bin/python bench/edge_speed.py runs/mr_lora [--texts 300] [--threads 1]

Exports the run first (RUN/onnx, RUN/ort and RUN/executorch, each with --quantize int8) unless those folders
exist. A row loads its model through the runtime alone (onnxruntime's InferenceSession; ExecuTorch's Python
runtime, whose XNNPACK kernels are those a phone runs), then labels the first --texts test texts one at a time,
unpadded, as an app does; it reports the median and 90th-percentile latency and the labels' accuracy. One thread by
default: a phone app rarely gets more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from side_by_side import cli, run_process  # noqa: E402

ROWS = {"onnx-fp32": ("onnx", "fp32"), "onnx-int8": ("onnx", "int8"), "ort-int8": ("ort", "int8"),
        "executorch-fp32": ("executorch", "fp32"), "executorch-int8": ("executorch", "int8")}


def one(run: Path, row: str, texts: int, threads: int) -> dict:
    """Latency of one row's model on single texts; printed as RESULT."""
    import numpy as np

    from ftune.predictors import load_predictor
    from ftune.run import Run

    fmt, variant = ROWS[row]
    if fmt == "executorch":  # XNNPACK's threads: set before any program loads (resetting them later crashes)
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)
    folder = run / fmt
    predictor = load_predictor(folder, variant, device="cpu")  # its checks, tokenizer and file, then the raw call
    task = predictor.task
    data = task.encode_splits(task.load_splits(Run(run).config.train.seed), predictor.tokenizer)["test"]
    data = data.subset(np.arange(min(texts, len(data))))
    if fmt in ("onnx", "ort"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(predictor.file), options, providers=["CPUExecutionProvider"])

        def call(ids, types):
            feed = {"input_ids": ids, "token_type_ids": types, "attention_mask": np.ones_like(ids)}
            return session.run(["logits"], {k: v for k, v in feed.items() if k in predictor.input_names})[0]
    else:
        import torch

        method = predictor.method

        def call(ids, types):
            feed = {"input_ids": torch.from_numpy(ids), "token_type_ids": torch.from_numpy(types)}
            return method.execute([feed[name] for name in predictor.input_names])[0].numpy()
    seconds, right = [], 0
    for i in range(len(data)):
        ids = data.input_ids[i][None].astype(np.int64)
        types = (data.token_type_ids[i] if data.token_type_ids else np.zeros_like(data.input_ids[i]))[None]
        call(ids, types.astype(np.int64))  # warm: the first call of each length plans its memory
        start = time.perf_counter()
        logits = call(ids, types.astype(np.int64))
        seconds.append(time.perf_counter() - start)
        right += int(logits[0].argmax() == data.labels[i])
    seconds.sort()
    return {"bytes": predictor.file.stat().st_size, "median_ms": 1000 * statistics.median(seconds),
            "p90_ms": 1000 * seconds[int(0.9 * (len(seconds) - 1))], "accuracy": right / len(data),
            "texts": len(data), "tokens_mean": float(np.mean([len(x) for x in data.input_ids]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--texts", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", choices=list(ROWS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.run, args.one, args.texts, args.threads)))
        return
    for fmt in ("onnx", "ort", "executorch"):
        if not (args.run / fmt / "export.json").is_file():
            print(f"exporting {args.run} to {fmt} (fp32 and int8)", flush=True)
            cli(["export", str(args.run), "--format", fmt, "--quantize", "int8"])
    results = {row: run_process([sys.executable, __file__, str(args.run), "--one", row, "--texts", str(args.texts),
                                 "--threads", str(args.threads)], timeout=1800) for row in ROWS}
    first = next(r for r in results.values() if "error" not in r)
    print(f"{args.run}: {first['texts']} test texts one at a time ({first['tokens_mean']:.1f} tokens on average), "
          f"{args.threads} thread(s)")
    base = results["onnx-int8"]
    print("| model | size MB | size vs ONNX int8 | median ms | p90 ms | latency vs ONNX int8 | accuracy |")
    print("|---|---|---|---|---|---|---|")
    for row, r in results.items():
        if "error" in r:
            print(f"| {row} | error: {r['error']} |||||")
            continue
        ratio = (f"{r['bytes'] / base['bytes']:.2f}x", f"{r['median_ms'] / base['median_ms']:.2f}x") \
            if "error" not in base else ("", "")
        print(f"| {row} | {r['bytes'] / 1e6:.1f} | {ratio[0]} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
              f"{ratio[1]} | {r['accuracy']:.2%} |")


if __name__ == "__main__":
    main()
