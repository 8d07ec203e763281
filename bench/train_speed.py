"""Training speed, side by side in one run: the Hugging Face Trainer recipes vs `ftune train`.

Same machine, data (a fixed subset of built-in `mr`), model (MiniLM), learning rate, schedule,
epochs and seed. Each configuration runs in its own subprocess so its peak RSS is its own.

    .venv/bin/python bench/train_speed.py                 # about 10 minutes on 2 cores
    .venv/bin/python bench/train_speed.py --train-samples 480 --tutorial-steps 4   # a quick look
    .venv/bin/python bench/train_speed.py --only trainer_grouped ftune_full --repeat 5   # the anchor, 5 passes each

Prints a table (samples/s, tokens/s, wall time, peak RSS, test accuracy, ratios to the
well-configured Trainer) and writes it to bench/results/train_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
RECIPES = ["trainer_tutorial", "trainer_dynamic", "trainer_grouped", "ftune_full", "ftune_full_random_batches", "ftune_freeze", "ftune_lora"]
FULL_TRAINING = ("trainer_dynamic", "trainer_grouped", "ftune_full", "ftune_full_random_batches")  # rows whose FLOPs are 6 N per token
TITLES = {"trainer_tutorial": "HF Trainer, padding=max_length, batch 8 (tutorial)",
          "trainer_dynamic": "HF Trainer, dynamic padding, batch 32",
          "trainer_grouped": "HF Trainer, dynamic padding, its own length grouping (group_by_length), batch 32",
          "ftune_full": "ftune full", "ftune_full_random_batches": "ftune full, group_by_length off (ablation)",
          "ftune_freeze": "ftune freeze (first 4 of 6 layers)",
          "ftune_lora": "ftune lora (r 16)",
          "ftune_full_compile": "ftune full, train.compile: true (inductor; compile time inside train s)"}
LR = {"ftune_lora": 1e-3, "ftune_freeze": 1e-4}  # each method at its own usual learning rate


def splits(args):
    from ftune.config import DataConfig
    from ftune.data import load_splits

    return load_splits(DataConfig(train="mr", max_train_samples=args.train_samples), seed=0)


def run_trainer(args, tutorial: bool, grouped: bool = False) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    from ftune.models import resolve_model

    s = splits(args)
    path = resolve_model("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    padding = {"padding": "max_length", "max_length": 512} if tutorial else {"max_length": args.max_length}

    def tokenize(frame):
        ds = Dataset.from_pandas(frame.rename(columns={"label": "labels"})[["text", "labels"]])
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, **padding), batched=True, remove_columns=["text"])

    train, test = tokenize(s.train), tokenize(s.test)
    set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(s.labels))
    batch = 8 if tutorial else 32
    targs = TrainingArguments(output_dir=str(RESULTS / "trainer_tmp"), per_device_train_batch_size=batch,
                              per_device_eval_batch_size=128, learning_rate=5e-5, weight_decay=0.01, warmup_steps=0.1,
                              num_train_epochs=args.epochs, max_steps=args.tutorial_steps if tutorial else -1,
                              save_strategy="no", eval_strategy="no", report_to=[], logging_steps=50, seed=0,
                              disable_tqdm=True, use_cpu=True,
                              # transformers v5's name for the Trainer's length-grouped sampler (v4: group_by_length)
                              train_sampling_strategy="group_by_length" if grouped else "random")
    trainer = Trainer(model=model, args=targs, train_dataset=train,
                      data_collator=None if tutorial else DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    steps = trainer.state.global_step
    samples = min(steps * batch, len(train) * args.epochs)
    lengths = np.array([len(x) for x in tokenizer(s.train["text"].tolist(), truncation=True,
                                                  max_length=args.max_length)["input_ids"]])
    tokens = lengths.mean() * samples  # real (non-pad) tokens trained on
    accuracy = None
    if not tutorial:  # in the test split's order, whatever the sampler: predictions line up with the labels
        collator = DataCollatorWithPadding(tokenizer)
        model.eval()
        preds = []
        with torch.inference_mode():
            for i in range(0, len(test), 128):
                batch = collator([{k: test[j][k] for k in ("input_ids", "attention_mask", "token_type_ids")
                                   if k in test.column_names} for j in range(i, min(i + 128, len(test)))])
                preds += model(**batch).logits.argmax(-1).tolist()
        accuracy = float((np.array(preds) == np.array(test["labels"])).mean())
    return {"samples": samples, "seconds": seconds, "tokens": float(tokens), "accuracy": accuracy}


def run_ftune(args, recipe: str) -> dict:
    import ftune

    method = recipe.split("_")[0]
    overrides = {"train.group_by_length": not recipe.endswith("random_batches"), "train.compile": recipe.endswith("compile"),"data.train": "mr", "data.max_train_samples": args.train_samples, "data.max_length": args.max_length,
                 "method.name": method, "train.epochs": args.epochs, "train.learning_rate": LR.get(f"ftune_{recipe}", 5e-5),
                 "train.batch_size": 32, "train.baselines": False, "output_dir": str(RESULTS / f"ftune_{recipe}_run")}
    if method == "freeze":
        overrides["method.layers"] = 4
    shutil.rmtree(overrides["output_dir"], ignore_errors=True)
    run = ftune.train(ftune.load_config(overrides=overrides), quiet=True)
    train = run.metrics["train"]
    return {"samples": train["samples_seen"], "seconds": train["seconds"], "tokens": train["tokens_seen"],
            "accuracy": run.metrics["test"]["finetuned"]["accuracy"], "compile_seconds": train.get("compile_seconds")}


def one(args) -> None:
    start = time.perf_counter()
    if args.one.startswith("trainer"):
        result = run_trainer(args, tutorial=args.one == "trainer_tutorial", grouped=args.one == "trainer_grouped")
    else:
        result = run_ftune(args, args.one.removeprefix("ftune_"))  # e.g. "full", "full_random_batches"
    result["wall_seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-samples", type=int, default=1920)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--tutorial-steps", type=int, default=10, help="the tutorial recipe is too slow for a whole epoch")
    p.add_argument("--only", nargs="*", default=RECIPES)
    p.add_argument("--repeat", type=int, default=1, help="passes over the rows, in turn; each row's median pass is "
                   "shown (a shared or throttled machine moves single runs by 10-30%%)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return one(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    passes: dict[str, list[dict]] = {name: [] for name in args.only}
    for _ in range(args.repeat):  # rows in turn, so a slow spell of the machine touches every row alike
        for name in args.only:
            cmd = [sys.executable, __file__, "--one", name, "--train-samples", str(args.train_samples), "--epochs",
                   str(args.epochs), "--max-length", str(args.max_length), "--tutorial-steps", str(args.tutorial_steps)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not line:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            r = json.loads(line[-1][7:])
            passes[name].append(r)
            print(f"{name}: {r['samples'] / r['seconds']:.1f} samples/s", file=sys.stderr)
    rows = {}
    for name, runs in passes.items():
        rates = sorted(r["samples"] / r["seconds"] for r in runs)
        rows[name] = sorted(runs, key=lambda r: r["samples"] / r["seconds"])[(len(runs) - 1) // 2]  # the median pass
        rows[name]["samples_per_s_passes"] = rates
    report(rows, args, *roofline())


def roofline() -> tuple[int, float]:
    """MiniLM's non-embedding parameter count, and this machine's fp32 matmul peak in FLOP/s."""
    import torch
    from transformers import AutoModel

    from ftune.models import resolve_model

    model = AutoModel.from_pretrained(resolve_model("minilm"))
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    start, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    return params, 2 * 2048**3 * n / (time.perf_counter() - start)


def report(rows: dict, args, params: int, peak: float) -> None:
    ref = rows.get("trainer_dynamic")
    ref_sps = ref["samples"] / ref["seconds"] if ref else None
    grouped = rows.get("trainer_grouped")  # the fair anchor: the Trainer with its own length grouping
    grouped_sps = grouped["samples"] / grouped["seconds"] if grouped else None
    header = ["recipe", "samples/s", "tokens/s", "train s", "wall s", "peak RSS MB", "test acc", "samples/s vs (2)",
              "vs the Trainer's grouping", "acc - (2)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, (name, r) in enumerate(rows.items(), 1):
        sps = r["samples"] / r["seconds"]
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "n/a (steps only)"
        ratio = f"{sps / ref_sps:.2f}x" if ref_sps else ""
        ratio_grouped = f"{sps / grouped_sps:.2f}x" if grouped_sps else ""
        dacc = f"{(r['accuracy'] - ref['accuracy']) * 100:+.2f} pt" if ref and r["accuracy"] is not None else ""
        lines.append(f"| ({i}) {TITLES[name]} | {sps:.1f} | {r['tokens'] / r['seconds']:.0f} | {r['seconds']:.1f} | "
                     f"{r['wall_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {acc} | {ratio} | {ratio_grouped} | {dacc} |")
    table = "\n".join(lines)
    setup = (f"mr, {args.train_samples} training sentences, {args.epochs} epoch(s), max_length {args.max_length}, "
             f"test 800 sentences, seed 0; tutorial recipe: {args.tutorial_steps} steps; each row: the median of "
             f"{args.repeat} pass(es), rows in turn")
    if args.repeat > 1:
        setup += "\nsamples/s of every pass: " + "; ".join(
            f"{name} {', '.join(f'{x:.1f}' for x in r['samples_per_s_passes'])}" for name, r in rows.items())
    # Roofline: training costs ~6 FLOPs per non-embedding weight per real token (forward 2, backward 4);
    # attention's share is ~1% at these lengths and left out. Padding is work too, but not useful work.
    useful = [f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s; MiniLM non-embedding weights: {params / 1e6:.2f}M"]
    for name in FULL_TRAINING:
        if name in rows:
            flops = 6 * params * rows[name]["tokens"] / rows[name]["seconds"]
            rows[name]["useful_flops_per_s"] = flops
            useful.append(f"{TITLES[name]}: {flops / 1e9:.1f} GFLOP/s of useful work = {flops / peak:.0%} of peak")
    useful += [f"{TITLES[name]}: torch.compile took {r['compile_seconds']:.1f} s (training and evaluation graphs), "
               f"{r['samples'] / max(r['seconds'] - r['compile_seconds'], 1e-9):.1f} samples/s without it"
               for name, r in rows.items() if r.get("compile_seconds")]
    print(setup)
    print(table)
    print("\n".join(useful))
    (RESULTS / "train_speed.md").write_text(setup + "\n\n" + table + "\n\n" + "\n".join(f"- {u}" for u in useful) + "\n")
    (RESULTS / "train_speed.json").write_text(json.dumps({"setup": vars(args), "rows": rows, "peak_flops": peak,
                                                          "nonembedding_params": params}, indent=2))


if __name__ == "__main__":
    main()
