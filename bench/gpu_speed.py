"""GPU speed, side by side in one run (issue 16): the Hugging Face Trainer vs `ftune train` (eager and compiled), a
BERT-base-shaped encoder at 128 and 512 tokens against the GPU's measured matmul peak, `ftune predict` vs
transformers' pipeline, and `ftune serve` with micro-batching on vs off.

MiniLM rows, issue 16's setting: MiniLM on built-in `mr` (2,880 train / 800 test sentences, ftune's split, seed 0),
batch 32, max_length 128, 3 epochs, lr 5e-5, linear schedule with 10% warmup, bf16 autocast on CUDA. Each row runs
in its own process (its own CUDA context, so its peak GPU memory is its own), in this order:

  part 1 (MiniLM on mr; rows 6-11 use row 3's run)
   1. trainer_dynamic     HF Trainer, dynamic padding (DataCollatorWithPadding)          -- the reference for 2-4
   2. trainer_grouped     HF Trainer, its own length grouping (train_sampling_strategy="group_by_length")
   3. ftune_full          `ftune train`, full (--tracking none, no baselines, lr 5e-5)
   4. ftune_full_compile  row 3 plus `--set train.compile=true` (regional torch.compile of the repeated layers, in
                          place; --compile picks the backend). Shows metrics.json's train.compile_seconds (the
                          process's torch.compile time, training and evaluation graphs) and samples/s both over all
                          training time and over training time less the compile time spent inside training (this
                          script times that part: it wraps ftune's evaluate() to take the evaluation graphs out)
   5. ftune_lora          `ftune train`, lora (its default lr)
   6. predict_cpu         `ftune predict RUN --input test.csv --device cpu`       -- the labels' reference (fp32)
   7. pipeline            transformers.pipeline("text-classification", model=RUN/model, device=0, batch_size=64),
                          truncation at max_length, fp32; its label names mapped to ftune's through the model
                          config's label2id and the run's labels.json                 -- the reference for 8-9
   8. predict_cuda        `ftune predict ... --device cuda --precision fp32`
   9. predict_cuda_bf16   `ftune predict ... --device cuda --precision bf16`
      (the input is the test split repeated to --predict-texts texts. Rows 6-9 each run twice in-process, a 64-text
      warm-up then the timed call, so texts/s counts loading the model, reading, labelling and writing, but not
      Python's imports or the CUDA context; row 7 times pipeline() construction + labelling + writing the same way.
      "same labels" is the share equal to row 6's fp32 CPU labels.)
  10. serve_off           `ftune serve RUN --device cuda --no-batching` (fp32), loaded by bench/serve_load.py's
                          drive(): --serve-clients (32) concurrent clients, single-text requests of mr test sentences,
                          --serve-requests requests after a warm-up pass of as many (serve_load's own) -- ref. for 11
  11. serve_on            the same with --batching (micro-batching, --max-batch 64, --max-wait-ms 5)
  part 2 (a BERT-base-shaped encoder: 12 layers, hidden 768, 12 heads, FFN 3072, MiniLM's vocabulary, random init)
  12. matmul_peak         the GPU's measured bf16 matmul peak: torch.matmul of two 8192x8192 bf16 matrices, 10
                          warm-up calls, then 5 timed runs of 50 (torch.cuda.synchronize around each run), 2*n^3 flop a
                          matmul, the best run counts. On a CPU: fp32, n=1024 (--quick) or 2048, labelled so.
  13. bert128_trainer     HF Trainer, dynamic padding, texts of exactly 128 tokens, 1 epoch    -- the ref. for 14
  14. bert128_ftune       `ftune train` full on the same texts
  15. bert512_trainer     the same at 512 tokens                                              -- the ref. for 16
  16. bert512_ftune       (issue 16's target: 35% or more of row 12's peak)
      Texts: mr is short (~20-60 tokens a sentence), so the parent writes CSVs of synthesized texts: random mr
      sentences (seed 0) joined until a text is past the window, so every text is cut to exactly 128 (or 512) tokens;
      --bert-texts (8,192 at 128, 4,096 at 512: about 1M and 2M tokens) train texts, 64 validation, 64 test; both
      tools read the same files through ftune's loader. samples/s only: a random model scores nothing.
      Achieved TFLOP/s = training FLOPs / training seconds, with FLOPs = tokens_seen (real, non-padding tokens from
      metrics.json; the Trainer row: its texts' token counts) x (6 N + 12 L H S): N the parameters of the encoder's
      layers (85.0M; embeddings, pooler and head excluded), L layers, H hidden size, S the texts' mean real length
      (= 128 or 512): forward + backward of the matmuls, plus the attention scores and their weighted sum.

The Trainer rows use plain lists of dicts (the GPU machine has no `datasets`) and are scored by one in-order loop, so
row 2 is scored too (the Trainer's own predict() would order the test set by length). `ftune` rows run the `ftune`
command in-process (ftune.cli.main) so that torch.cuda.max_memory_allocated sees them; they read samples/s, tokens/s
and test accuracy from the run's metrics.json. Samples/s is over training time only (no evaluation) in every row.

On the GPU machine (nothing there reaches PyPI or a hub; ../shared/gpu/bundle.sh packs what it lacks):

    bash ../shared/gpu/bundle.sh --model --serve   # here, once: .device/ with pydantic, seqeval, fastapi, uvicorn,
                                                   # fp16 MiniLM, mr
    # then the device tool's run, with carry: [".device"] and timeout_s 600, in one call:
    source .device/env.sh && python bench/gpu_speed.py; cp bench/results/gpu_speed.* $OUT/
    # or in two calls (each well inside 10 minutes), then merge the two JSON files here:
    source .device/env.sh && python bench/gpu_speed.py --part 1; cp bench/results/gpu_speed.* $OUT/
    source .device/env.sh && python bench/gpu_speed.py --part 2; cp bench/results/gpu_speed.* $OUT/
    .venv/bin/python bench/gpu_speed.py --merge FILES/gpu_speed.part1.json FILES/gpu_speed.part2.json

Estimated GPU wall time on an H100 (each row: ~10-15 s of process start-up, model loading and evaluation plus what
it times): rows 1-3 and 5 ~30-40 s each (8,640 samples at 430-610 samples/s); row 4 ~70-120 s (a cold inductor
compile of one layer's training and evaluation graphs, and one recompile for dynamic lengths); rows 6-9 ~15-25 s
each; rows 10-11 ~25 s each (a server start, 2 x 1,024 requests); row 12 ~10 s; rows 13-16 ~20-40 s each (1-2M
tokens at ~150-900 samples/s at 512 tokens). Part 1 about 5.5-6 minutes, part 2 about 2-3, all about 7.5-8.5.
Each row is stopped after --row-timeout seconds (then shown as failed; the row's whole process group is killed, so a
server or compile workers it started go too), and rows not started within --total-timeout (540 s) are shown as
skipped, so one hang cannot eat the device time and the table is always written.

On a CPU, a check that every row works end to end (2 cores): tiny sizes, BERT-shaped rows tiny too (2 layers, hidden
128, 64/32 texts), the compile row with the aot_eager backend, the pipeline on device -1 and the servers on the CPU;
rows that need CUDA (8-9) printed as "skipped: no CUDA":

    HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu_speed.py --quick [--only ROW ...]

Prints a markdown table with the GPU's name and the torch/transformers versions, and writes
bench/results/gpu_speed.{json,md} (with --part N: gpu_speed.partN.{json,md}). A row that fails is a row with its
error's last line, not a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from side_by_side import cli, run_process  # bench/: on sys.path as the script's own folder

RESULTS = Path(__file__).parent / "results"
TITLES = {
    "trainer_dynamic": "HF Trainer, dynamic padding (DataCollatorWithPadding)",
    "trainer_grouped": 'HF Trainer, train_sampling_strategy="group_by_length"',
    "ftune_full": "ftune train, full (lr 5e-5)",
    "ftune_full_compile": "ftune train, full, --set train.compile (regional torch.compile)",
    "ftune_lora": "ftune train, lora (default lr)",
    "predict_cpu": "ftune predict --device cpu (fp32)",
    "pipeline": 'transformers pipeline("text-classification", device=0, batch_size=64), fp32',
    "predict_cuda": "ftune predict --device cuda --precision fp32",
    "predict_cuda_bf16": "ftune predict --device cuda --precision bf16",
    "serve_off": "ftune serve --device cuda --no-batching (requests/s)",
    "serve_on": "ftune serve --device cuda --batching (requests/s)",
    "matmul_peak": "matmul peak (torch.matmul, best of 5 x 50)",
    "bert128_trainer": "BERT-shaped, 128 tokens: HF Trainer, dynamic padding",
    "bert128_ftune": "BERT-shaped, 128 tokens: ftune train, full",
    "bert512_trainer": "BERT-shaped, 512 tokens: HF Trainer, dynamic padding",
    "bert512_ftune": "BERT-shaped, 512 tokens: ftune train, full",
}
ROWS = list(TITLES)  # in this order (part 1, part 2): the predict, pipeline and serve rows use ftune_full's run
PARTS = {1: ["trainer_dynamic", "trainer_grouped", "ftune_full", "ftune_full_compile", "ftune_lora", "predict_cpu",
             "pipeline", "predict_cuda", "predict_cuda_bf16", "serve_off", "serve_on"],
         2: ["matmul_peak", "bert128_trainer", "bert128_ftune", "bert512_trainer", "bert512_ftune"]}
REFERENCE = {"trainer_grouped": "trainer_dynamic", "ftune_full": "trainer_dynamic", "ftune_lora": "trainer_dynamic",
             "ftune_full_compile": "ftune_full", "bert128_ftune": "bert128_trainer", "bert512_ftune": "bert512_trainer",
             "predict_cuda": "pipeline", "predict_cuda_bf16": "pipeline", "serve_on": "serve_off"}
NEEDS_CUDA = ("predict_cuda", "predict_cuda_bf16")  # the other rows fall back to the CPU (fp32) where CUDA is absent
NEEDS_RUN = ("predict_cpu", "pipeline", "predict_cuda", "predict_cuda_bf16", "serve_off", "serve_on")
BERT_LENGTHS = (128, 512)
BERT_BASE = {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
BERT_TINY = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512}  # --quick


# ---------------------------------------------------------------- the rows, each run in its own process (--one NAME)

def splits(args, **data):
    """ftune's own split (seed 0) of `mr`, or of the files in `data`, so the Trainer rows see exactly the examples the
    ftune rows see."""
    from ftune.config import DataConfig
    from ftune.data import load_splits

    data = data or {"train": "mr", "max_length": args.max_length, "max_train_samples": args.train_samples,
                    "max_eval_samples": args.eval_samples}
    return load_splits(DataConfig(**data), seed=0)


def bert_data(args, length: int) -> dict:
    """The synthesized texts of `length` tokens (write_long_texts) as a DataConfig's fields."""
    folder = Path(args.work) / f"texts{length}"
    return {"train": str(folder / "train.csv"), "validation": str(folder / "validation.csv"),
            "test": str(folder / "test.csv"), "max_length": length}


def run_trainer(args, model: str, epochs: int, grouped: bool, scored: bool, data: dict | None = None) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    from ftune.models import resolve_model

    cuda = torch.cuda.is_available()
    s = splits(args, **(data or {}))
    max_length = (data or {}).get("max_length", args.max_length)
    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def features(frame) -> list[dict]:  # plain dicts, not datasets.Dataset: the GPU machine has no `datasets`
        enc = tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length)
        return [{**{k: enc[k][i] for k in enc}, "labels": int(y)} for i, y in enumerate(frame["label"])]

    train, test = features(s.train), features(s.test)
    set_seed(0)
    # dtype: transformers v5 keeps a checkpoint's stored dtype, and the bundled MiniLM is stored as fp16
    net = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(s.labels), dtype=torch.float32)
    fields = TrainingArguments.__dataclass_fields__
    sampling = {}
    if grouped:  # transformers v5 renamed group_by_length=True to train_sampling_strategy="group_by_length"
        sampling = ({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in fields
                    else {"group_by_length": True})
    targs = TrainingArguments(output_dir=str(Path(args.work) / f"trainer-{args.one}"), per_device_train_batch_size=32,
                              learning_rate=5e-5, weight_decay=0.01, warmup_steps=0.1, num_train_epochs=epochs,
                              save_strategy="no", eval_strategy="no", report_to="none", logging_steps=50, seed=0,
                              disable_tqdm=True, bf16=cuda, use_cpu=not cuda, **sampling)
    collator = DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=net, args=targs, train_dataset=train, data_collator=collator)
    start = time.perf_counter()
    trainer.train()  # ends with a host read of the loss, so the GPU's work is inside the time
    seconds = time.perf_counter() - start
    accuracy = None
    if scored:  # our own loop in the test set's order: the Trainer's predict() would group it by length too
        net = trainer.model.eval()
        right = 0
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            for batch in DataLoader(test, batch_size=128, collate_fn=collator):
                batch = {k: v.to(net.device) for k, v in batch.items()}
                labels = batch.pop("labels")
                right += int((net(**batch).logits.argmax(-1) == labels).sum())
        accuracy = right / len(test)
    return {"samples": len(train) * epochs, "seconds": seconds,
            "tokens": sum(len(x["input_ids"]) for x in train) * epochs, "accuracy": accuracy}


def time_compile_in_training() -> dict:
    """Wrap ftune's training loop and evaluation so that the torch.compile seconds spent inside train() less those
    spent in its evaluations land in box["train"] (metrics.json has only the process's total)."""
    from ftune import training

    box = {"evaluate": 0.0, "train": None}
    fit = getattr(training, "_Fit", None)
    if fit is None or not all(hasattr(fit, name) for name in ("train", "evaluate")):
        return box  # ftune changed: the row falls back to the total (and says so)
    train, evaluate = fit.train, fit.evaluate

    def timed_evaluate(self, *a, **k):
        start = training.compile_seconds()
        try:
            return evaluate(self, *a, **k)
        finally:
            box["evaluate"] += training.compile_seconds() - start

    def timed_train(self, *a, **k):
        start, in_evaluation = training.compile_seconds(), box["evaluate"]
        try:
            return train(self, *a, **k)
        finally:
            box["train"] = training.compile_seconds() - start - (box["evaluate"] - in_evaluation)

    fit.train, fit.evaluate = timed_train, timed_evaluate
    return box


def run_ftune(args, model: str, method: str, epochs: int, scored: bool, data: dict | None = None,
              compile_backend: str | None = None) -> dict:
    out = Path(args.work) / args.one
    shutil.rmtree(out, ignore_errors=True)
    argv = ["train", "--model", model, "--method", method, "--epochs", str(epochs), "--batch-size", "32",
            "--output-dir", str(out), "--tracking", "none", "--quiet", "--set", "train.baselines=false",
            "--set", "train.seed=0"]
    if data is None:  # mr
        argv += ["--data", "mr", "--set", f"data.max_length={args.max_length}"]
        caps = (("data.max_train_samples", args.train_samples), ("data.max_eval_samples", args.eval_samples))
        argv += [x for key, value in caps if value for x in ("--set", f"{key}={value}")]
    else:  # the synthesized long texts: no test evaluation (a random model scores nothing)
        argv += ["--data", data["train"], "--set", f"data.validation={data['validation']}",
                 "--set", f"data.test={data['test']}", "--set", f"data.max_length={data['max_length']}",
                 "--set", "train.evaluate_test=false"]
    if method == "full":
        argv += ["--learning-rate", "5e-5"]  # lora keeps its own default (1e-3): each method at its usual rate
    box = None
    if compile_backend:
        argv += ["--set", f"train.compile={compile_backend}"]
        box = time_compile_in_training()
    cli(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["train"]
    result = {"samples": train["samples_seen"], "seconds": train["seconds"], "tokens": train["tokens_seen"],
              "accuracy": metrics["test"]["finetuned"]["accuracy"] if scored else None}
    if box is not None:
        result["compile_seconds"] = train.get("compile_seconds")
        result["train_compile_seconds"] = box["train"]  # None: not measured (the total is subtracted instead)
    return result


def run_bert(args, length: int, tool: str) -> dict:
    data, bert = bert_data(args, length), str(Path(args.work) / "bert")
    result = (run_trainer(args, bert, args.bert_epochs, grouped=False, scored=False, data=data) if tool == "trainer"
              else run_ftune(args, bert, "full", args.bert_epochs, scored=False, data=data))
    shape = json.loads((Path(bert) / "flop_counts.json").read_text())
    seq = result["tokens"] / max(result["samples"], 1)  # the texts' mean real length: `length` when all are full
    result["seq"] = seq
    result["flops_per_token"] = 6 * shape["layer_parameters"] + 12 * shape["layers"] * shape["hidden"] * seq
    result["flops"] = result["flops_per_token"] * result["tokens"]
    return result


def run_matmul_peak(args) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    n = 8192 if cuda else (1024 if args.quick else 2048)
    dtype = torch.bfloat16 if cuda else torch.float32
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    c = torch.empty(n, n, device=device, dtype=dtype)
    warm, runs, per_run = (10, 5, 50) if cuda else (2, 3, 5)
    for _ in range(warm):
        torch.matmul(a, b, out=c)
    sync()
    best, total = 0.0, 0.0
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(per_run):
            torch.matmul(a, b, out=c)
        sync()
        seconds = time.perf_counter() - start
        total += seconds
        best = max(best, 2 * n**3 * per_run / seconds / 1e12)
    return {"samples": runs * per_run, "seconds": total, "tokens": None, "accuracy": None, "tflops": best,
            "matmul": f"{n}x{n} {'bf16' if cuda else 'fp32'} on {'CUDA' if cuda else 'the CPU'}"}


def need_run(args) -> Path:
    run = Path(args.work) / "ftune_full"
    if not (run / "metrics.json").is_file():
        sys.exit("no run to predict with: the ftune_full row must run (and succeed) first")
    return run


def run_predict(args, device: str, precision: str | None) -> dict:
    work, run = Path(args.work), need_run(args)
    flags = ["--device", device] + (["--precision", precision] if precision else [])
    # warm-up: imports, the CUDA context and first kernels are paid once by a service, not per batch of texts
    cli(["predict", str(run), "--input", str(work / "warmup.csv"), "--output", str(work / "warmup.jsonl"), *flags])
    out = work / f"{args.one}.jsonl"
    start = time.perf_counter()
    cli(["predict", str(run), "--input", str(work / "test.csv"), "--output", str(out), *flags])
    seconds = time.perf_counter() - start
    labels = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    return {"samples": len(labels), "seconds": seconds, "tokens": None, "accuracy": None, "labels_file": str(out)}


def run_pipeline(args) -> dict:
    """transformers' own way to label texts with the run's saved model/, timed as the predict rows are: a 64-text
    warm-up call, then pipeline() construction, labelling and writing the labels."""
    import pandas as pd
    import torch
    from transformers import pipeline

    work, run = Path(args.work), need_run(args)
    names = json.loads((run / "labels.json").read_text())  # ftune's label names, in class-id order
    device = 0 if torch.cuda.is_available() else -1

    def label(csv: Path, out: Path) -> int:
        texts = pd.read_csv(csv)["text"].astype(str).tolist()
        pipe = pipeline("text-classification", model=str(run / "model"), device=device, batch_size=64)
        label2id = {v: int(k) for k, v in pipe.model.config.id2label.items()}  # the pipeline's names -> class ids
        answers = pipe(texts, truncation=True, max_length=args.max_length)
        with out.open("w") as f:
            for a in answers:
                f.write(json.dumps({"label": names[label2id[a["label"]]]}) + "\n")
        return len(answers)

    label(work / "warmup.csv", work / "warmup-pipeline.jsonl")
    out = work / f"{args.one}.jsonl"
    start = time.perf_counter()
    count = label(work / "test.csv", out)
    seconds = time.perf_counter() - start
    return {"samples": count, "seconds": seconds, "tokens": None, "accuracy": None, "labels_file": str(out),
            "device": "cuda:0" if device == 0 else "cpu"}


def run_serve(args, batching: bool) -> dict:
    """`ftune serve` on the run, started and loaded by bench/serve_load.py's launch() and drive()."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import serve_load

    work, run = Path(args.work), need_run(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    port = serve_load.free_port()
    log = work / f"{args.one}.server.log"
    server = [sys.executable, "-m", "ftune", "serve", str(run), "--port", str(port), "--device", device,
              "--max-waiting", "4096", "--batching" if batching else "--no-batching"]
    # launch() sends the server's output to /dev/null: a shell in between keeps its stderr, for a failure's reason
    command = ["bash", "-c", f'exec "$@" 2>>"{log}"', "bash", *server]
    texts = splits(args).test["text"].tolist()
    try:
        process, url = serve_load.launch(command, port, os.environ | {"HF_HUB_OFFLINE": "1"}, seconds=180)
    except SystemExit:
        said = [line for line in (log.read_text().splitlines() if log.is_file() else []) if line.strip()]
        sys.exit(f"the server did not start: {said[-1] if said else 'no output'}")
    try:
        load = asyncio.run(serve_load.drive(url, texts, args.serve_clients, args.serve_requests))
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return {"samples": load["requests"], "seconds": load["requests"] / load["rps"], "tokens": None, "accuracy": None,
            "failed": load["failed"], "p50_ms": load["p50_ms"], "p95_ms": load["p95_ms"], "p99_ms": load["p99_ms"],
            "clients": args.serve_clients, "device": device}


def one(args) -> None:
    """One row, in this process; the last stdout line `RESULT {...}` is what the parent reads."""
    name = args.one
    start = time.perf_counter()
    if name == "trainer_dynamic":
        result = run_trainer(args, "minilm", args.epochs, grouped=False, scored=True)
    elif name == "trainer_grouped":
        result = run_trainer(args, "minilm", args.epochs, grouped=True, scored=True)
    elif name in ("ftune_full", "ftune_lora"):
        result = run_ftune(args, "minilm", name.removeprefix("ftune_"), args.epochs, scored=True)
    elif name == "ftune_full_compile":
        result = run_ftune(args, "minilm", "full", args.epochs, scored=True, compile_backend=args.compile)
    elif name == "matmul_peak":
        result = run_matmul_peak(args)
    elif name.startswith("bert"):
        length, tool = name.removeprefix("bert").split("_")
        result = run_bert(args, int(length), tool)
    elif name == "pipeline":
        result = run_pipeline(args)
    elif name in ("serve_off", "serve_on"):
        result = run_serve(args, batching=name == "serve_on")
    else:
        result = run_predict(args, "cpu" if name == "predict_cpu" else "cuda",
                             {"predict_cuda": "fp32", "predict_cuda_bf16": "bf16"}.get(name))
    import torch

    result["wall_seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the whole process's peak (training and its evaluation); None on the CPU, and for the serve rows (the server is
    # another process)
    cuda = torch.cuda.is_available() and not name.startswith("serve")
    result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent: set-up, one process per row, the table

def make_bert(folder: Path, shape: dict) -> None:
    """A BERT-shaped encoder with MiniLM's vocabulary and tokenizer, randomly initialized (no weights needed for
    speed), saved where `ftune train --model FOLDER` and the Trainer rows both load it; flop_counts.json beside it has
    what the FLOP count needs (the parameters of its layers: no embeddings, pooler or head)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from ftune.models import resolve_model

    path = resolve_model("minilm")
    config = AutoConfig.from_pretrained(path)
    config.update(shape)
    torch.manual_seed(0)
    # the encoder alone, in fp32 (not the bundled fp16): both rows add a new 2-class head
    model = AutoModel.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    counts = {"layer_parameters": sum(p.numel() for p in model.encoder.layer.parameters()),
              "layers": config.num_hidden_layers, "hidden": config.hidden_size}
    (folder / "flop_counts.json").write_text(json.dumps(counts))


def write_long_texts(args, work: Path) -> None:
    """texts{128,512}/{train,validation,test}.csv: random mr sentences (seed 0) joined until each text is past the
    window, so every text is cut to exactly that many tokens; the label is its first sentence's (a random model
    learns nothing from it anyway)."""
    import numpy as np
    import pandas as pd
    from transformers import AutoTokenizer

    from ftune.config import DataConfig
    from ftune.data import load_splits
    from ftune.models import resolve_model

    s = load_splits(DataConfig(train="mr"), seed=0)
    sentences, labels = s.train["text"].tolist(), [s.labels[y] for y in s.train["label"]]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    lengths = [len(ids) for ids in tokenizer(sentences, add_special_tokens=False)["input_ids"]]
    rng = np.random.default_rng(0)
    for length, count in zip(BERT_LENGTHS, args.bert_texts):
        folder = work / f"texts{length}"
        folder.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", count), ("validation", 64), ("test", 64)):
            rows = []
            for _ in range(n):
                picked, tokens = [], 0
                while tokens < length + 16:  # past the window (2 special tokens, and room for joins)
                    i = int(rng.integers(len(sentences)))
                    picked.append(i)
                    tokens += lengths[i]
                rows.append({"text": " ".join(sentences[i] for i in picked), "label": labels[picked[0]]})
            pd.DataFrame(rows).to_csv(folder / f"{split}.csv", index=False)


def write_inputs(args, work: Path) -> None:
    """test.csv: the test split's texts repeated to --predict-texts (a GPU labels 800 short texts in a blink)."""
    import pandas as pd

    texts = splits(args).test["text"].tolist()
    texts = (texts * (args.predict_texts // len(texts) + 1))[: args.predict_texts]
    pd.DataFrame({"text": texts}).to_csv(work / "test.csv", index=False)
    pd.DataFrame({"text": texts[:64]}).to_csv(work / "warmup.csv", index=False)


def run_row(name: str, work: Path, timeout: int) -> dict:
    return run_process([sys.executable, __file__, *sys.argv[1:], "--one", name, "--work", str(work)], timeout,
                        hint=" (--row-timeout)")


def environment() -> dict:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if cuda else f"CPU only ({platform.processor() or 'cpu'}, "
            f"{torch.get_num_threads()} threads)", "cuda": cuda, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "transformers": transformers.__version__,
            "python": platform.python_version()}


def tera(x: float) -> str:
    """TFLOP/s: one decimal on a GPU, three significant digits for a CPU's fractions."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def title(name: str, r: dict) -> str:
    """The row's title, saying the device where the pipeline or the server ran on the CPU (no CUDA)."""
    if r.get("device") == "cpu":
        return TITLES[name].replace("device=0", "device=-1").replace("--device cuda", "--device cpu")
    return TITLES[name]


def report(rows: dict, args, env: dict, suffix: str = "") -> None:
    labels = {}
    if rows.get("predict_cpu", {}).get("labels_file"):
        labels = Path(rows["predict_cpu"]["labels_file"]).read_text().splitlines()
        labels = [json.loads(line)["label"] for line in labels]
    peak = rows.get("matmul_peak", {}).get("tflops")
    header = ["#", "row", "samples/s", "samples/s excl. compile", "tokens/s", "TFLOP/s (% of peak)", "compile s",
              "timed s", "process s", "peak GPU MB", "test acc", "vs reference", "same labels as fp32 CPU",
              "serve p50 / p99 ms, failed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    number = {name: i for i, name in enumerate(rows, 1)}
    for name, r in rows.items():
        if "skipped" in r or "error" in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['error']}"
            lines.append(f"| {number[name]} | {TITLES[name]} | {why} |" + " |" * (len(header) - 3))
            continue
        r["samples_per_s"] = r["samples"] / r["seconds"]
        r["tokens_per_s"] = r["tokens"] / r["seconds"] if r.get("tokens") else None
        rate = "" if name == "matmul_peak" else f"{r['samples_per_s']:.1f}"
        excl = compiled = ""
        if r.get("compile_seconds") is not None:
            part = r.get("train_compile_seconds")
            part = r["compile_seconds"] if part is None else part  # not measured: the whole (an overestimate)
            r["samples_per_s_excl_compile"] = r["samples"] / max(r["seconds"] - part, 1e-9)
            excl = f"{r['samples_per_s_excl_compile']:.1f}"
            compiled = f"{r['compile_seconds']:.1f}" + (f" ({part:.1f} in training)" if part != r["compile_seconds"]
                                                        else "")
        flops = ""
        if name == "matmul_peak":
            flops = f"{tera(r['tflops'])} (the peak: {r['matmul']})"
        elif r.get("flops"):
            r["tflops"] = r["flops"] / r["seconds"] / 1e12
            r["share_of_peak"] = r["tflops"] / peak if peak else None
            flops = tera(r["tflops"]) + (f" ({r['share_of_peak']:.1%})" if peak else "")
        ref = rows.get(REFERENCE.get(name, ""), {})
        ratio = f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x ({number[REFERENCE[name]]})" \
            if ref.get("samples_per_s") else ""
        if name.startswith("bert"):
            acc = "n/a (random init)"
        else:
            acc = f"{r['accuracy']:.1%}" if r.get("accuracy") is not None else ""
        same = ""
        if r.get("labels_file") and labels:
            mine = [json.loads(line)["label"] for line in Path(r["labels_file"]).read_text().splitlines()]
            r["same_labels"] = sum(a == b for a, b in zip(mine, labels)) / max(len(labels), 1)
        if r.get("same_labels") is not None:
            same = f"{r['same_labels']:.2%}"
        serve = f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} ms, {r['failed']} failed" if "p50_ms" in r else ""
        gpu = f"{r['peak_gpu_mb']:.0f}" if r.get("peak_gpu_mb") is not None else ""
        tokens = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else ""
        lines.append(f"| {number[name]} | {title(name, r)} | {rate} | {excl} | {tokens} | {flops} | {compiled} | "
                     f"{r['seconds']:.1f} | {r['wall_seconds']:.1f} | {gpu} | {acc} | {ratio} | {same} | {serve} |")
    table = "\n".join(lines)
    shape = "tiny (2 layers, hidden 128)" if args.quick else "BERT-base (12 layers, hidden 768, 110M)"
    where = "on CUDA" if env["cuda"] else "on the CPU"
    setup = (f"{env['device']}; torch {env['torch']} (CUDA {env['torch_cuda']}), transformers {env['transformers']}\n"
             f"mr: {args.train_samples or 'all 2,880'} train / {args.eval_samples or 800} test sentences, batch 32, "
             f"max_length {args.max_length}, {args.epochs} epoch(s), lr 5e-5 (lora: its default), warmup 10%, "
             f"{'bf16 autocast' if env['cuda'] else 'fp32 on CPU'}, seed 0; compile row: train.compile={args.compile}; "
             f"BERT-shaped rows: {shape}, random init, {args.bert_epochs} epoch(s) of "
             f"{' / '.join(f'{n:,} texts of {length}' for length, n in zip(BERT_LENGTHS, args.bert_texts))} tokens; "
             f"predict and pipeline: {args.predict_texts} texts; serve: {args.serve_clients} clients, "
             f"{args.serve_requests} single-text requests per mode, fp32 {where}"
             + ("  [--quick: a check that every row works, not a measurement]" if args.quick else ""))
    notes = ["samples/s: training examples per second of training time (evaluation excluded; for the compile row this "
             "includes the compile time spent in training); predict and pipeline rows: texts per second of one call "
             "after a warm-up call (model load, read, label, write); serve rows: requests per second, one text each",
             "samples/s excl. compile (compile row): samples / (training seconds - the torch.compile seconds spent "
             "inside the training loop, its evaluations' compiles left out); compile s: metrics.json's "
             "train.compile_seconds, the process's whole torch.compile time (training and evaluation graphs)",
             "TFLOP/s (BERT-shaped rows): training FLOPs per second of training time; FLOPs = real (non-padding) "
             "tokens seen (ftune: metrics.json's tokens_seen; Trainer: its texts' token counts) x (6 N + 12 L H S), "
             "N the parameters of the encoder's layers (embeddings, pooler and head excluded), L layers, H hidden, "
             "S the texts' mean real length (every text fills its window); % of the matmul_peak row, measured on the "
             "same machine in its own process" + ("" if env["cuda"] else " (on the CPU: fp32, not a GPU's bf16)"),
             "BERT-shaped rows are randomly initialized: their accuracy is meaningless, so none is given",
             "same labels: the share of labels equal to `ftune predict --device cpu`'s (the pipeline's label names "
             "mapped through the model config's label2id to the run's labels.json)",
             "serve: `ftune serve` (uvicorn) on loopback, driven by bench/serve_load.py's drive() after its own "
             "warm-up pass; failed counts non-200 answers and connection errors; vs reference of serve_on is on/off",
             "peak GPU MB: torch.cuda.max_memory_allocated over the row's whole process (training and evaluation); "
             "none for the serve rows (the server is another process)"]
    text = setup + "\n\n" + table + "\n\n" + "\n".join(f"- {n}" for n in notes)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)  # git-ignored
    (RESULTS / f"gpu_speed{suffix}.md").write_text(text + "\n")
    for r in rows.values():
        r.pop("labels_file", None)  # a temporary file, gone after the run
    setup_args = {k: v for k, v in vars(args).items() if k not in ("one", "work", "merge")}  # the parent's settings
    (RESULTS / f"gpu_speed{suffix}.json").write_text(json.dumps({"environment": env, "setup": setup_args,
                                                                  "rows": rows}, indent=2))


def merge(files: list[str]) -> None:
    """One table from the JSON files of --part runs (rows in the usual order; the first file's setup)."""
    parts = [json.loads(Path(f).read_text()) for f in files]
    found = {name: r for part in parts for name, r in part["rows"].items()}
    rows = {name: found[name] for name in ROWS if name in found}
    report(rows, argparse.Namespace(**parts[0]["setup"]), parts[0]["environment"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a CPU-sized check that every row works (minutes on 2 cores)")
    p.add_argument("--only", nargs="*", choices=ROWS, help="these rows only (predict, pipeline and serve rows need "
                   "ftune_full; the BERT rows' share of the peak needs matmul_peak)")
    p.add_argument("--part", type=int, choices=sorted(PARTS), help="1: the MiniLM training, predict, pipeline and "
                   "serve rows; 2: the matmul peak and the BERT-shaped rows (two device calls instead of one)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="write one table from --part runs' gpu_speed.partN.json")
    p.add_argument("--epochs", type=int, help="MiniLM rows (default 3; --quick 1)")
    p.add_argument("--compile", choices=["true", "inductor", "cudagraphs", "aot_eager"],
                   help="train.compile of the compile row (default true, i.e. inductor; --quick aot_eager)")
    p.add_argument("--bert-epochs", type=int, help="BERT-shaped rows (default 1)")
    p.add_argument("--bert-texts", type=int, nargs=2, metavar=("AT128", "AT512"),
                   help="training texts of the BERT-shaped rows at 128 and 512 tokens (default 8192 4096; "
                   "--quick 64 32)")
    p.add_argument("--max-length", type=int, help="MiniLM rows: default 128; --quick 64")
    p.add_argument("--train-samples", type=int, help="default all (2,880); --quick 128")
    p.add_argument("--eval-samples", type=int, help="default all (800 test); --quick 200")
    p.add_argument("--predict-texts", type=int, help="default 8000 (the test split repeated); --quick 400")
    p.add_argument("--serve-clients", type=int, help="concurrent clients of the serve rows (default 32)")
    p.add_argument("--serve-requests", type=int, help="timed requests per serve row (default 1024; --quick 64)")
    p.add_argument("--row-timeout", type=int, help="seconds before a row is stopped (default 300; --quick 900)")
    p.add_argument("--total-timeout", type=int, help="seconds for all rows; later rows are skipped (default 540, "
                   "inside the device machine's 10 minutes a command; --quick 3600)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.merge:
        return merge(args.merge)
    defaults = ({"epochs": 1, "compile": "aot_eager", "bert_epochs": 1, "bert_texts": [64, 32], "max_length": 64,
                 "train_samples": 128, "eval_samples": 200, "predict_texts": 400, "serve_clients": 32,
                 "serve_requests": 64, "row_timeout": 900, "total_timeout": 3600} if args.quick else
                {"epochs": 3, "compile": "true", "bert_epochs": 1, "bert_texts": [8192, 4096], "max_length": 128,
                 "train_samples": None, "eval_samples": None, "predict_texts": 8000, "serve_clients": 32,
                 "serve_requests": 1024, "row_timeout": 300, "total_timeout": 540})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.one:
        return one(args)

    env = environment()
    if not env["cuda"] and not args.quick:
        print("warning: no CUDA here; every row runs on the CPU at full size (slow). --quick is the CPU check.",
              file=sys.stderr)
    # the table is always written: a device command is killed at 10 minutes, with everything it had not written
    deadline = time.perf_counter() + args.total_timeout
    work = Path(tempfile.mkdtemp(prefix="gpu_speed-"))  # runs, the random encoder, inputs: all deleted after
    rows = {}
    try:
        names = args.only or [n for n in ROWS if not args.part or n in PARTS[args.part]]
        if any(n.startswith("bert") for n in names):
            make_bert(work / "bert", BERT_TINY if args.quick else BERT_BASE)
            write_long_texts(args, work)
        if any(n in NEEDS_RUN for n in names):
            write_inputs(args, work)
        for name in names:
            left = deadline - time.perf_counter()
            if name in NEEDS_CUDA and not env["cuda"]:
                rows[name] = {"skipped": "no CUDA"}
            elif left < 15:
                rows[name] = {"skipped": "out of time (--total-timeout)"}
            else:
                start = time.perf_counter()
                rows[name] = run_row(name, work, int(min(args.row_timeout, left)))
                r = rows[name]
                said = r.get("error") or (f"{r['tflops']:.1f} TFLOP/s" if name == "matmul_peak" else
                                          f"{r['samples'] / r['seconds']:.1f} samples/s")
                print(f"{name}: {said} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
            if "skipped" in rows[name]:
                print(f"{name}: skipped: {rows[name]['skipped']}", file=sys.stderr, flush=True)
        report(rows, args, env, f".part{args.part}" if args.part and not args.only else "")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
