"""Offline material for `task: causal-lm`: an instruction set made from the built-in `mr` sentences and a tiny
random decoder whose tokenizer is learned from it (no pretrained decoder can be downloaded here).

    python scripts/instruct_demo.py runs/instruct     # writes instructions.jsonl and tiny-decoder/
    ftune train configs/instruct_lora.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ftune.data.sources import read_source
from ftune.tiny import build_tiny_decoder

PROMPT = "Is this movie review positive or negative?\n\n{text}"


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": PROMPT.format(text=text), "response": f"The review is {label}."}
            for text, label in read_source("mr")[["text", "label"]].itertuples(index=False)]
    (out / "instructions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    build_tiny_decoder(out / "tiny-decoder", [f"{r['prompt']} {r['response']}" for r in rows])
    print(f"wrote {len(rows)} instructions to {out / 'instructions.jsonl'} and a tiny decoder to {out / 'tiny-decoder'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/instruct")
