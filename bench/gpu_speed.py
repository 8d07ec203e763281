"""GPU speed, side by side in one run: the Hugging Face Trainer vs `ftune train`, and `ftune predict` on CPU vs GPU.

Issue 16's setting: MiniLM on built-in `mr` (2,880 train / 800 test sentences, ftune's split, seed 0), batch 32,
max_length 128, 3 epochs, lr 5e-5, linear schedule with 10% warmup, bf16 autocast on CUDA. Each row runs in its
own process (its own CUDA context, so its peak GPU memory is its own):

  1. HF Trainer, dynamic padding (DataCollatorWithPadding)              -- the reference for rows 2-4
  2. HF Trainer, its own length grouping (train_sampling_strategy="group_by_length")
  3. `ftune train`, full (--tracking none, no baselines, lr 5e-5)
  4. `ftune train`, lora (its default lr)
  5. HF Trainer, dynamic padding, on a BERT-base-shaped encoder (12 layers, hidden 768, 12 heads, FFN 3072, MiniLM's
     vocabulary), random initialization, 1 epoch                      -- the reference for row 6
  6. `ftune train` full on that same encoder, 1 epoch                  (samples/s only: a random model scores nothing)
  7. `ftune predict RUN --input test.csv --device cpu`                  -- the reference for rows 8-9
  8. `ftune predict ... --device cuda --precision fp32`
  9. `ftune predict ... --device cuda --precision bf16`
     (RUN is row 3's run; the input is the test split repeated to --predict-texts texts. Each predict row runs the CLI
     in-process twice, a 64-text warm-up then the timed call, so texts/s counts model loading, reading, labelling and
     writing, but not Python's imports or the CUDA context. "same labels" is the share equal to row 7's fp32 labels.)

The Trainer rows use plain lists of dicts (the GPU machine has no `datasets`) and are scored by one in-order loop, so
row 2 is scored too (the Trainer's own predict() would order the test set by length). `ftune` rows run the `ftune`
command in-process (ftune.cli.main) so that torch.cuda.max_memory_allocated sees them; they read samples/s, tokens/s
and test accuracy from the run's metrics.json. Samples/s is over training time only (no evaluation) in every row.

On the GPU machine (nothing there reaches PyPI or a hub; ../shared/gpu/bundle.sh packs what it lacks):

    bash ../shared/gpu/bundle.sh --model        # here, once: .device/ with pydantic, seqeval, fp16 MiniLM, mr
    # then the device tool's run, with carry: [".device"] and timeout_s 600:
    source .device/env.sh && python bench/gpu_speed.py; cp bench/results/gpu_speed.* $OUT/

Estimated GPU wall time on an H100: about 5 minutes (rows 1-4 take 30-60 s each at the issue's 430-610 samples/s
plus start-up and evaluation; rows 5-6 about 40 s each on one epoch; rows 7-9 about 20 s each), inside 8 minutes.
Each row is stopped after --row-timeout seconds (then shown as failed), and rows not started within --total-timeout
(540 s) are shown as skipped, so one hang cannot eat the device time and the table is always written.

On a CPU, a check that every row works end to end in a few minutes (2 cores): tiny sizes, BERT-shaped rows tiny too,
CUDA-only rows printed as "skipped: no CUDA":

    HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu_speed.py --quick

Prints a markdown table (samples/s, tokens/s, seconds, peak GPU MB, test accuracy, ratio to the row's reference, same
labels) with the GPU's name and the torch/transformers versions, and writes bench/results/gpu_speed.{json,md}.
A row that fails is a row with its error's last line, not a crash.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TITLES = {
    "trainer_dynamic": "HF Trainer, dynamic padding (DataCollatorWithPadding)",
    "trainer_grouped": 'HF Trainer, train_sampling_strategy="group_by_length"',
    "ftune_full": "ftune train, full (lr 5e-5)",
    "ftune_lora": "ftune train, lora (default lr)",
    "bert_trainer": "BERT-shaped encoder, random init: HF Trainer, dynamic padding",
    "bert_ftune": "BERT-shaped encoder, random init: ftune train, full",
    "predict_cpu": "ftune predict --device cpu (fp32)",
    "predict_cuda": "ftune predict --device cuda --precision fp32",
    "predict_cuda_bf16": "ftune predict --device cuda --precision bf16",
}
ROWS = list(TITLES)  # in this order: the predict rows use ftune_full's run
REFERENCE = {"trainer_grouped": "trainer_dynamic", "ftune_full": "trainer_dynamic", "ftune_lora": "trainer_dynamic",
             "bert_ftune": "bert_trainer", "predict_cuda": "predict_cpu", "predict_cuda_bf16": "predict_cpu"}
NEEDS_CUDA = ("predict_cuda", "predict_cuda_bf16")  # the other rows fall back to the CPU (fp32) where CUDA is absent
BERT_BASE = {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
BERT_TINY = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512}  # --quick


# ---------------------------------------------------------------- the rows, each run in its own process (--one NAME)

def splits(args):
    """ftune's own split of `mr` (seed 0), so the Trainer rows see exactly the examples the ftune rows see."""
    from ftune.config import DataConfig
    from ftune.data import load_splits

    return load_splits(DataConfig(train="mr", max_length=args.max_length, max_train_samples=args.train_samples,
                                  max_eval_samples=args.eval_samples), seed=0)


def run_trainer(args, model: str, epochs: int, grouped: bool, scored: bool) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    from ftune.models import resolve_model

    cuda = torch.cuda.is_available()
    s = splits(args)
    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def features(frame) -> list[dict]:  # plain dicts, not datasets.Dataset: the GPU machine has no `datasets`
        enc = tokenizer(frame["text"].tolist(), truncation=True, max_length=args.max_length)
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


def cli(argv: list[str]) -> None:
    """`ftune ARGV` in this process; its own error line (or click's usage error) is already on stderr when it fails."""
    from ftune.cli import main

    sys.argv = ["ftune", *argv]
    try:
        main()
    except SystemExit as e:  # click ends every command with SystemExit, 0 on success
        if e.code not in (0, None):
            sys.exit(e.code)


def run_ftune(args, model: str, method: str, epochs: int, scored: bool) -> dict:
    out = Path(args.work) / args.one
    shutil.rmtree(out, ignore_errors=True)
    argv = ["train", "--model", model, "--data", "mr", "--method", method, "--epochs", str(epochs),
            "--batch-size", "32", "--output-dir", str(out), "--tracking", "none", "--quiet",
            "--set", "train.baselines=false", "--set", f"data.max_length={args.max_length}", "--set", "train.seed=0"]
    if method == "full":
        argv += ["--learning-rate", "5e-5"]  # lora keeps its own default (1e-3): each method at its usual rate
    for key, value in (("data.max_train_samples", args.train_samples), ("data.max_eval_samples", args.eval_samples)):
        if value:
            argv += ["--set", f"{key}={value}"]
    cli(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["train"]
    return {"samples": train["samples_seen"], "seconds": train["seconds"], "tokens": train["tokens_seen"],
            "accuracy": metrics["test"]["finetuned"]["accuracy"] if scored else None}


def run_predict(args, device: str, precision: str | None) -> dict:
    work = Path(args.work)
    run = work / "ftune_full"
    if not (run / "metrics.json").is_file():
        sys.exit("no run to predict with: the ftune_full row must run (and succeed) first")
    flags = ["--device", device] + (["--precision", precision] if precision else [])
    # warm-up: imports, the CUDA context and first kernels are paid once by a service, not per batch of texts
    cli(["predict", str(run), "--input", str(work / "warmup.csv"), "--output", str(work / "warmup.jsonl"), *flags])
    out = work / f"{args.one}.jsonl"
    start = time.perf_counter()
    cli(["predict", str(run), "--input", str(work / "test.csv"), "--output", str(out), *flags])
    seconds = time.perf_counter() - start
    labels = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    return {"samples": len(labels), "seconds": seconds, "tokens": None, "accuracy": None, "labels_file": str(out)}


def one(args) -> None:
    """One row, in this process; the last stdout line `RESULT {...}` is what the parent reads."""
    name, bert = args.one, str(Path(args.work) / "bert")
    start = time.perf_counter()
    if name == "trainer_dynamic":
        result = run_trainer(args, "minilm", args.epochs, grouped=False, scored=True)
    elif name == "trainer_grouped":
        result = run_trainer(args, "minilm", args.epochs, grouped=True, scored=True)
    elif name in ("ftune_full", "ftune_lora"):
        result = run_ftune(args, "minilm", name.removeprefix("ftune_"), args.epochs, scored=True)
    elif name == "bert_trainer":
        result = run_trainer(args, bert, args.bert_epochs, grouped=False, scored=False)
    elif name == "bert_ftune":
        result = run_ftune(args, bert, "full", args.bert_epochs, scored=False)
    else:
        result = run_predict(args, "cpu" if name == "predict_cpu" else "cuda",
                             {"predict_cuda": "fp32", "predict_cuda_bf16": "bf16"}.get(name))
    import torch

    result["wall_seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the whole process's peak (training and its evaluation); None on the CPU
    result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent: set-up, one process per row, the table

def make_bert(folder: Path, shape: dict) -> None:
    """A BERT-shaped encoder with MiniLM's vocabulary and tokenizer, randomly initialized (no weights needed for
    speed), saved where `ftune train --model FOLDER` and the Trainer row both load it."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from ftune.models import resolve_model

    path = resolve_model("minilm")
    config = AutoConfig.from_pretrained(path)
    config.update(shape)
    torch.manual_seed(0)
    # the encoder alone, in fp32 (not the bundled fp16): both rows add a new 2-class head
    AutoModel.from_config(config, dtype=torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)


def write_inputs(args, work: Path) -> None:
    """test.csv: the test split's texts repeated to --predict-texts (a GPU labels 800 short texts in a blink)."""
    import pandas as pd

    texts = splits(args).test["text"].tolist()
    texts = (texts * (args.predict_texts // len(texts) + 1))[: args.predict_texts]
    pd.DataFrame({"text": texts}).to_csv(work / "test.csv", index=False)
    pd.DataFrame({"text": texts[:64]}).to_csv(work / "warmup.csv", index=False)


def last_line(text: str) -> str:
    """The last line that says something (rich draws usage errors in a box: strip its frame)."""
    lines = [line.strip(" \t│╭╮╰╯─") for line in text.splitlines()]
    return next((line for line in reversed(lines) if line), "no output")


def run_row(name: str, work: Path, timeout: int) -> dict:
    command = [sys.executable, __file__, *sys.argv[1:], "--one", name, "--work", str(work)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s (--row-timeout)"}
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not result:
        return {"error": last_line(done.stderr or done.stdout)}
    return json.loads(result[-1].removeprefix("RESULT "))


def environment() -> dict:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if cuda else f"CPU only ({platform.processor() or 'cpu'}, "
            f"{torch.get_num_threads()} threads)", "cuda": cuda, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "transformers": transformers.__version__,
            "python": platform.python_version()}


def report(rows: dict, args, env: dict) -> None:
    labels = {}
    if rows.get("predict_cpu", {}).get("labels_file"):
        labels = Path(rows["predict_cpu"]["labels_file"]).read_text().splitlines()
        labels = [json.loads(line)["label"] for line in labels]
    header = ["#", "row", "samples/s", "tokens/s", "timed s", "process s", "peak GPU MB", "test acc", "vs reference",
              "same labels as fp32 CPU"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    number = {name: i for i, name in enumerate(rows, 1)}
    for name, r in rows.items():
        if "skipped" in r or "error" in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['error']}"
            lines.append(f"| {number[name]} | {TITLES[name]} | {why} |" + " |" * (len(header) - 3))
            continue
        r["samples_per_s"] = r["samples"] / r["seconds"]
        r["tokens_per_s"] = r["tokens"] / r["seconds"] if r.get("tokens") else None
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
            same = f"{r['same_labels']:.2%}"
        gpu = f"{r['peak_gpu_mb']:.0f}" if r.get("peak_gpu_mb") is not None else ""
        tokens = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else ""
        lines.append(f"| {number[name]} | {TITLES[name]} | {r['samples_per_s']:.1f} | {tokens} | {r['seconds']:.1f} | "
                     f"{r['wall_seconds']:.1f} | {gpu} | {acc} | {ratio} | {same} |")
    table = "\n".join(lines)
    shape = "tiny (2 layers, hidden 128)" if args.quick else "BERT-base (12 layers, hidden 768, 110M)"
    setup = (f"{env['device']}; torch {env['torch']} (CUDA {env['torch_cuda']}), transformers {env['transformers']}\n"
             f"mr: {args.train_samples or 'all 2,880'} train / {args.eval_samples or 800} test sentences, batch 32, "
             f"max_length {args.max_length}, {args.epochs} epoch(s), lr 5e-5 (lora: its default), warmup 10%, "
             f"{'bf16 autocast' if env['cuda'] else 'fp32 on CPU'}, seed 0; BERT-shaped rows: {shape}, "
             f"{args.bert_epochs} epoch(s); predict: {args.predict_texts} texts"
             + ("  [--quick: a check that every row works, not a measurement]" if args.quick else ""))
    notes = ["samples/s: training examples per second of training time (evaluation excluded); predict rows: texts per "
             "second of one `ftune predict` call after a warm-up call (model load, read, label, write)",
             "BERT-shaped rows are randomly initialized: their accuracy is meaningless, so none is given",
             "peak GPU MB: torch.cuda.max_memory_allocated over the row's whole process (training and evaluation)"]
    print(setup + "\n\n" + table + "\n\n" + "\n".join(f"- {n}" for n in notes))
    RESULTS.mkdir(parents=True, exist_ok=True)  # git-ignored
    (RESULTS / "gpu_speed.md").write_text(setup + "\n\n" + table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    for r in rows.values():
        r.pop("labels_file", None)  # a temporary file, gone after the run
    setup_args = {k: v for k, v in vars(args).items() if k not in ("one", "work")}  # the parent's own settings
    (RESULTS / "gpu_speed.json").write_text(json.dumps({"environment": env, "setup": setup_args, "rows": rows},
                                                       indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a CPU-sized check that every row works (minutes on 2 cores)")
    p.add_argument("--only", nargs="*", choices=ROWS, help="these rows only (predict rows need ftune_full)")
    p.add_argument("--epochs", type=int, help="MiniLM rows (default 3; --quick 1)")
    p.add_argument("--bert-epochs", type=int, help="BERT-shaped rows (default 1)")
    p.add_argument("--max-length", type=int, help="default 128; --quick 64")
    p.add_argument("--train-samples", type=int, help="default all (2,880); --quick 128")
    p.add_argument("--eval-samples", type=int, help="default all (800 test); --quick 200")
    p.add_argument("--predict-texts", type=int, help="default 8000 (the test split repeated); --quick 400")
    p.add_argument("--row-timeout", type=int, help="seconds before a row is stopped (default 300; --quick 900)")
    p.add_argument("--total-timeout", type=int, help="seconds for all rows; later rows are skipped (default 540, "
                   "inside the device machine's 10 minutes a command; --quick 3600)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    defaults = ({"epochs": 1, "bert_epochs": 1, "max_length": 64, "train_samples": 128, "eval_samples": 200,
                 "predict_texts": 400, "row_timeout": 900, "total_timeout": 3600} if args.quick else
                {"epochs": 3, "bert_epochs": 1, "max_length": 128, "train_samples": None, "eval_samples": None,
                 "predict_texts": 8000, "row_timeout": 300, "total_timeout": 540})
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
    work = Path(tempfile.mkdtemp(prefix="gpu_speed-"))  # runs, the random encoder, predict inputs: all deleted after
    rows = {}
    try:
        names = args.only or ROWS
        if any(n.startswith("bert") for n in names):
            make_bert(work / "bert", BERT_TINY if args.quick else BERT_BASE)
        if any(n.startswith("predict") for n in names):
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
                said = r.get("error") or f"{r['samples'] / r['seconds']:.1f} samples/s"
                print(f"{name}: {said} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
            if "skipped" in rows[name]:
                print(f"{name}: skipped: {rows[name]['skipped']}", file=sys.stderr, flush=True)
        report(rows, args, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
