"""Causal-lm encoding speed: the per-turn method (a prompt and a chat rendered and tokenized for every assistant turn)
against one render and one batched tokenization per chat, and a second encode read from the token cache.

    .venv/bin/python bench/chat_encoding.py                  # 100,000 chats
    .venv/bin/python bench/chat_encoding.py --chats 20000 --no-minilm

Chats: synthetic, 2-4 user/assistant turns of random words (users 5-40 words, answers 10-120), a system message in
30% of them; no external data. Rows: the tiny word-level tokenizer and chat template of ftune.tiny, and MiniLM's
WordPiece tokenizer with a ChatML template. One process, rows in turn; each prints chats/s and checks that both
methods give the same ids and labels. "one render" includes hashing the chats for the cache key and writing the
cache.

Measured on 2 shared CPU cores, `--chats 20000` (the per-turn rows would take 4-10 minutes at 100,000):
tiny + its template 341 -> 1,149 chats/s (3.4x), MiniLM + ChatML 170 -> 588 chats/s (3.5x); a cache read 70,000 and
42,000 chats/s. What is left is mostly the tokenizer itself (Rust) and transformers' per-chat conversions.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

MAX_LENGTH = 2048
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def synthetic_chats(n: int, seed: int = 0) -> tuple[list[list[dict]], list[str]]:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ten", "ra", "su", "vel", "do", "pri", "an", "es", "or", "ul", "gi", "bo", "ne"]
    words = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(3000)})

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choices(words, k=rng.randint(lo, hi)))

    chats = []
    for _ in range(n):
        chat = [{"role": "system", "content": text(5, 20)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(2, 4)):
            chat += [{"role": "user", "content": text(5, 40)}, {"role": "assistant", "content": text(10, 120)}]
        chats.append(chat)
    return chats, words


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def row(name: str, chats: list[list[dict]], tokenizer) -> None:
    from ftune.tasks.causal_lm import encode_chats

    old_s, old = timed(lambda: encode_chats(chats, tokenizer, MAX_LENGTH, per_turn=True))
    new_s, new = timed(lambda: encode_chats(chats, tokenizer, MAX_LENGTH, use_cache=True))  # encodes, writes the cache
    cached_s, cached = timed(lambda: encode_chats(chats, tokenizer, MAX_LENGTH, use_cache=True))
    same = all(a.tolist() == b.tolist() == c.tolist() for column in ("input_ids", "labels")
               for a, b, c in zip(getattr(old, column), getattr(new, column), getattr(cached, column)))
    tokens = int(sum(len(x) for x in new.input_ids))
    n = len(chats)
    print(f"| {name} | {n:,} | {tokens / n:.0f} | {n / old_s:,.0f} | {n / new_s:,.0f} | {old_s / new_s:.1f}x | "
          f"{n / cached_s:,.0f} | {'yes' if same else 'NO'} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chats", type=int, default=100_000)
    p.add_argument("--no-minilm", action="store_true", help="only the tiny tokenizer's row")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="ftune-chat-bench-") as scratch:
        os.environ["FTUNE_CACHE"] = scratch  # a cold token cache, removed afterwards
        run(args, scratch)


def run(args, scratch: str) -> None:
    from ftune.models import load_tokenizer, resolve_model
    from ftune.tiny import build_tiny_decoder

    chats, words = synthetic_chats(args.chats)
    print(f"{args.chats:,} synthetic chats, max_length {MAX_LENGTH}, {os.cpu_count()} CPUs")
    print("| tokenizer + template | chats | tokens/chat | per-turn chats/s | one render chats/s | speed-up | "
          "cache read chats/s | same ids and labels |")
    print("|---|---|---|---|---|---|---|---|")
    tiny = load_tokenizer(str(build_tiny_decoder(os.path.join(scratch, "tiny"), [" ".join(words)])))
    row("ftune.tiny word-level + its template", chats, tiny)
    if not args.no_minilm:
        minilm = load_tokenizer(resolve_model("minilm"))
        minilm.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        minilm.chat_template = CHATML
        minilm.model_max_length = 10**6  # chats are longer than BERT's 512: no warning, nothing is cut here anyway
        row("MiniLM WordPiece + ChatML", chats, minilm)


if __name__ == "__main__":
    main()
