"""DPO with LoRA, side by side: TRL's DPOTrainer and `ftune train --task preference`, on the same pairs and model.

The model: a randomly initialized decoder built from a real config (bench/llm_speed.py's shapes and tokenizer: the
Qwen2.5-0.5B shape, or with --quick its tiny shape), nothing from a hub. The data: --pairs prompts of random words
(20-200 tokens, --quick 8-40) each with two answers (20-120 tokens, --quick 8-30), the same in both rows. LoRA r 16,
alpha 32, dropout 0.1 on every linear layer; beta 0.1; lr 5e-6; --batch pairs per optimizer step; one epoch; bf16
autocast on a GPU, fp32 on a CPU.

Rows, each in its own process:

  trl    DPOTrainer with the peft config: its reference is the base with the adapter switched off, a second forward
         pass on every step (its default); chosen and rejected padded into one batch of 2 x --batch sequences
  ftune  the same through the CLI: the reference's log-probabilities computed once before the first step (no grad),
         each pair one row (the two answers attend only to themselves), no second pass per step

Timed: the training loop (TRL: trainer.train(); ftune: metrics.json's train seconds) and, for ftune, the reference
pass before it, which the "pairs/s with the reference" column counts; peak GPU memory per process. The loss at the
first step is printed for both as a check (same pairs, same start: about ln 2).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/dpo_speed.py --quick        # CPU: 2 cores, about a minute
    python bench/dpo_speed.py                                           # GPU (bench/bundle_trl.sh's .device/)

Writes bench/results/dpo_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from side_by_side import cli, run_process  # bench/: on sys.path as the script's own folder

RESULTS = Path(__file__).parent / "results"
LORA = {"r": 16, "alpha": 32, "dropout": 0.1}
RATE, BETA = 5e-6, 0.1


def build(args, work: Path) -> None:
    """The model folder and pairs.jsonl (prompt, chosen, rejected as chats), once, in the parent."""
    import numpy as np
    import llm_speed

    args.steps, args.windows, args.max_length = 1, 1, 1  # what llm_speed's shape helpers read besides --quick
    llm_speed.make_model(args, "qwen", work / "model")
    vocab = llm_speed.shape_config(args, "qwen")["vocab_size"]
    rng = np.random.default_rng(0)
    prompt, answer = ((8, 40), (8, 30)) if args.quick else ((20, 200), (20, 120))
    prompts, chosen, rejected = (rng.integers(*span, size=args.pairs) for span in (prompt, answer, answer))
    good = llm_speed.make_chats(prompts, chosen, vocab, seed=1)
    bad = llm_speed.make_chats(prompts, rejected, vocab, seed=2)
    with (work / "pairs.jsonl").open("w") as f:
        for g, b in zip(good, bad):
            f.write(json.dumps({"prompt": g[:1], "chosen": g[1:], "rejected": [{**b[1]}]}) + "\n")


def row_trl(args, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    cuda = torch.cuda.is_available()
    rows = [json.loads(line) for line in (work / "pairs.jsonl").read_text().splitlines()]
    config = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.batch, num_train_epochs=1,
                       learning_rate=RATE, beta=BETA, max_length=None, report_to="none", save_strategy="no",
                       logging_steps=1, bf16=cuda, use_cpu=not cuda, disable_tqdm=True, seed=0)
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=str(work / "model"), args=config, processing_class=AutoTokenizer.from_pretrained(
        work / "model"), train_dataset=Dataset.from_list(rows), peft_config=peft)
    start = time.perf_counter()
    trainer.train()
    loop = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"loop_s": loop, "reference_s": 0.0, "first_loss": losses[0] if losses else None}


def row_ftune(args, work: Path) -> dict:
    from ftune.tasks.preference import Preference

    timed = {}
    before = Preference.before_training

    def timing(self, *a, **k):
        start = time.perf_counter()
        line = before(self, *a, **k)
        timed["reference_s"] = time.perf_counter() - start
        return line

    Preference.before_training = timing
    out = work / "ftune"
    cli(["train", "--task", "preference", "--model", str(work / "model"), "--data", str(work / "pairs.jsonl"),
         "--method", "lora", "--epochs", "1", "--learning-rate", str(RATE), "--batch-size", str(args.batch),
         "--output-dir", str(out), "--tracking", "none", "--quiet", "--set", "data.max_length=512",
         "--set", "data.validation_size=0.02", "--set", "data.test_size=0.02", "--set", "train.baselines=false",
         "--set", "train.log_steps=1", "--set", f"method.r={LORA['r']}", "--set", f"method.alpha={LORA['alpha']}",
         "--set", f"method.dropout={LORA['dropout']}", "--set", "method.target_modules=all-linear"])
    metrics = json.loads((out / "metrics.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in history if e.get("type") == "train" and "loss" in e]
    return {"loop_s": metrics["train"]["seconds"], "reference_s": timed.get("reference_s", 0.0),
            "first_loss": losses[0] if losses else None, "pairs_trained": metrics["data"]["train"]}


def one(args) -> None:
    import torch

    work = Path(args.work)
    result = row_trl(args, work) if args.one == "trl" else row_ftune(args, work)
    result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the tiny shape and short texts, for a CPU")
    parser.add_argument("--pairs", type=int, default=None, help="pairs in the epoch (default 512, --quick 1024)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.pairs = args.pairs or (1024 if args.quick else 512)
    if args.one:
        return one(args)
    import torch

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        build(args, work)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "FTUNE_CACHE": str(work / "c")}
        results = {name: run_process([sys.executable, __file__, *sys.argv[1:], "--one", name, "--work", folder],
                                     args.timeout, env) for name in ("trl", "ftune")}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    lines = [f"DPO + LoRA, {args.pairs} pairs, batch {args.batch}, {'tiny' if args.quick else 'Qwen2.5-0.5B'} shape, "
             f"{device}", "", "| row | loop s | reference pass s | pairs/s (loop) | pairs/s with the reference | "
             "vs trl | peak GPU MB | first loss |", "|---|---|---|---|---|---|---|---|"]
    trl = results["trl"]
    base = trl.get("pairs_trained", args.pairs) / trl["loop_s"] if "loop_s" in trl else None  # TRL's pairs/s
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} |  |  |  |  |  |  |")
            continue
        trained = r.get("pairs_trained", args.pairs)
        total = r["loop_s"] + r["reference_s"]
        ratio = f"{trained / total / base:.2f}x" if base else ""  # pairs/s with the reference, over TRL's
        lines.append(f"| {name} | {r['loop_s']:.1f} | {r['reference_s']:.1f} | {trained / r['loop_s']:.1f} | "
                     f"{trained / total:.1f} | {ratio} | {r['peak_gpu_mb'] or '–'} | {r['first_loss']:.4f} |")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dpo_speed.md").write_text(text + "\n")
    (RESULTS / "dpo_speed.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
