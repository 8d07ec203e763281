"""Preference tuning end to end on a tiny random decoder, from the CLI: SFT, then DPO / ORPO / SimPO / KTO from that
run (`--init-from`), a reward model, and the SFT+DPO run exported to GGUF and read back.

No pretrained decoder can be fetched here, so the model is ftune.tiny's 2-layer Llama-style decoder with a byte-level
BPE tokenizer learned from the data, and the task is one it can learn from scratch: "what is the opposite of W ?",
answered "the opposite of W is O ." (chosen) or with a wrong word (rejected). Every row scores the same 80 held-out
pairs (KTO: 80 held-out answers, half right); "start" is the run's model before its own training.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/preference_demo.py      # about 3 minutes on 2 CPU cores

Prints the table and writes bench/results/preference_demo.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from side_by_side import cli  # bench/: on sys.path as the script's own folder

RESULTS = Path(__file__).parent / "results"
COMMON = ["--tracking", "none", "--quiet", "--learning-rate", "0.001", "--set", "data.max_length=64"]


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def main() -> None:
    from ftune.export_gguf import export_gguf
    from ftune.tiny import build_tiny_decoder, opposite_pairs as pairs

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        train = pairs(400, seed=1)
        sft = [{"prompt": r["prompt"], "response": r["chosen"]} for r in pairs(400, seed=2)]
        unpaired = [{"prompt": r["prompt"], "completion": r["chosen" if i % 2 == 0 else "rejected"],
                     "label": i % 2 == 0} for i, r in enumerate(train)]
        decoder = build_tiny_decoder(root / "decoder", [t for r in train + sft for t in r.values()], byte_level=True)
        files = {"pairs": write(root / "pairs.jsonl", train), "sft": write(root / "sft.jsonl", sft),
                 "kto": write(root / "kto.jsonl", unpaired)}
        cli(["train", "--task", "causal-lm", "--model", str(decoder), "--data", files["sft"], "--method", "lora",
             "--epochs", "2", "--output-dir", str(root / "sft"), *COMMON])
        runs = {
            "dpo": ["--task", "preference"],
            "orpo": ["--task", "preference", "--set", "task.loss=orpo"],
            "simpo": ["--task", "preference", "--set", "task.loss=simpo"],
            "kto": ["--task", "kto"],
        }
        rows = []
        for name, flags in runs.items():
            data = files["kto" if name == "kto" else "pairs"]
            cli(["train", *flags, "--model", str(decoder), "--init-from", str(root / "sft"), "--data", data,
                 "--method", "lora", "--epochs", "2", "--output-dir", str(root / name), *COMMON])
            rows.append((f"{name} (LoRA, from the SFT run)", *scores(root / name, "reward_accuracy")))
        cli(["train", "--task", "reward-model", "--model", str(decoder), "--data", files["pairs"], "--method", "full",
             "--epochs", "3", "--output-dir", str(root / "rm"), *COMMON])
        rows.append(("reward model (full, Bradley-Terry)", *scores(root / "rm", "accuracy")))
        exported = json.loads((export_gguf(root / "dpo") / "export.json").read_text())["parity"]
    lines = ["| run | held-out accuracy: start | fine-tuned (95% CI) | baselines | chosen / rejected "
             "log-prob shift a token |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {start} | {tuned} | {baseline} | {shifts} |" for name, start, tuned, baseline, shifts in rows]
    lines += ["", "GGUF export of the DPO run (merged), read back by transformers over every position of "
              f"{exported['chats']} held-out chats:", "", "| file | max abs logit diff | same next token | bytes |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {exported[k]['max_abs_diff']:.3g} | {exported[k]['same_next_token']:.1%} | "
              f"{exported[k]['bytes']:,} |" for k in ("f16", "q8_0")]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "preference_demo.md").write_text(text + "\n")


def scores(run: Path, metric: str) -> tuple[str, str, str, str]:
    test = json.loads((run / "metrics.json").read_text())["test"]
    tuned, start = test["finetuned"], test["base_model"]
    low, high = tuned[f"{metric}_ci95"]
    baseline = "; ".join(f"{v[metric]:.1%} ({k.replace('_', ' ')})" for k, v in test.items()
                         if k not in ("finetuned", "base_model") and isinstance(v, dict) and metric in v)
    shifts = f"{tuned['chosen_shift']:+.2f} / {tuned['rejected_shift']:+.2f}" if "chosen_shift" in tuned else ""
    return f"{start[metric]:.1%}", f"{tuned[metric]:.1%} ({low:.1%}–{high:.1%})", baseline, shifts


if __name__ == "__main__":
    sys.exit(main())
