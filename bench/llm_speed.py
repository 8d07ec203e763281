"""Causal-LM LoRA / QLoRA training speed and memory on a GPU, in one run: TRL's SFTTrainer vs `ftune train`.

The issue's setting: one synthetic instruction set (fixed seed; prompts 20-600 tokens, responses 20-400, log-normal
spreads: many short, a long tail), LoRA r 16 / alpha 32 / dropout 0.1 on all linear layers, bf16, lr 2e-4, one
epoch over the same examples in every row, the loss on the same learned tokens (each response and the <|im_end|> that
closes it). Two randomly initialized decoders built from real models' configs (written out below, nothing from a
hub), each saved once per run as bf16 safetensors with a byte-level BPE tokenizer of the model's vocabulary size
whose words (" abc": 1-4 letters) are one token each, so texts of random words have exact token counts, and a ChatML
template with {% generation %} markers (what TRL's assistant-only loss reads):

  qwen   the Qwen2.5-0.5B shape: Qwen2ForCausalLM, 24 layers, hidden 896, FFN 4864, 14 heads / 2 KV, vocab 151,936,
         tied embeddings, rope_theta 1e6, 32,768 positions
  llama  the Llama-3.2-1B shape: LlamaForCausalLM, 16 layers, hidden 2048, FFN 8192, 32 heads / 8 KV, head_dim 64,
         vocab 128,256, tied, rope_theta 500000 (without Llama 3's rope scaling, which changes no cost)

Rows, for each shape, each in its own process (its own CUDA context, so its peak GPU memory is its own):

  1. trl         TRL SFTTrainer with its defaults: conversational "messages" data, padded batches of whole examples
                 in random order, fp32 weights under bf16 autocast, gradient checkpointing on (TRL's default), LoRA
                 through peft_config. Set besides: assistant_only_loss=True (the same learned tokens as ftune),
                 max_length (no example is cut), lr, batch size            -- the reference for rows 2-4
  2. trl_fast    TRL's documented fast path: packing=True with its "bfd" strategy (which turns padding_free on), the
                 base loaded in bf16, gradient checkpointing off, use_liger_kernel=True when liger-kernel imports
                 (else noted), attn_implementation="flash_attention_2" when flash-attn imports (padding-free's
                 documented requirement; else transformers' sdpa, noted)
  3. ftune       `ftune train` (the CLI, in-process), task causal-lm with task.packing=true (isolated packing: each
                 example attends to itself), the same LoRA; its defaults otherwise (no gradient checkpointing)
  4-6. trl_q, trl_fast_q, ftune_q: the same three with QLoRA (NF4, double quantization, bf16 compute; CUDA and
                 bitsandbytes only, else "skipped")                          -- row 4 is the reference for rows 5-6

Tokens per optimizer step: each tool's own batch unit, matched to one budget of --windows x --max-length tokens
(default 4 x 2,048 = 8,192): rows 2-3 and 5-6 pack examples into --max-length windows and take --windows of them per
step (TRL's best-fit-decreasing packing fills its windows fuller than ftune's in-order packing, so it needs a few
fewer steps for the same epoch); rows 1 and 4 take round(budget / mean example length) whole examples per step,
padded to the longest. The table shows each row's real tokens per step (non-padding tokens / steps). --steps sizes
the epoch: enough examples for about that many steps at the budget. Every row trains the same examples once.

Timed: each optimizer step's end, CUDA synchronized (TRL: a callback's on_step_end; ftune: a wrapper around its
internal _Fit.step, in the row's process only), with the tokens and learned tokens of that step's batch (TRL: counted
from its collator's output; ftune: from its packed windows). learned tok/s and all tok/s are taken over the steps after
the first --warmup-steps (3), whose first-use costs (cuBLAS set-up, TRL's Triton kernels compiled on a fresh
machine) are shown apart; "loop s" is the whole training loop (TRL: on_train_begin to on_train_end; ftune: its
metrics.json train.seconds). Peak GPU memory: torch.cuda.max_memory_allocated over the row's whole process.
"same masks": the tokens and learned tokens each tool prepared and then collated into its batches equal the data's
(rows 1 and 4 also compare TRL's per-example ids and labels with ftune's encoding of the same chats). Final loss: the
mean training loss of the last logged steps (random weights, random words: about ln(vocabulary); a check only).

Largest batch at --max-length tokens (--probes lora: rows 1-3, the default; all; none): per row a separate process
trains 2 steps at batch b of examples exactly --max-length tokens long, b doubling from --probe-start (8) to
--probe-max (64), stopping at the first CUDA OOM or when the probe's time (--probe-timeout, 60 s) would run out, in
that row's configuration (TRL rows: the same SFTConfig; ftune: the same settings through ftune.training.train). ftune
checks its memory estimate before training; when the estimate refuses a batch, the probe notes it and goes on with
the check turned off (in that process only), so the column shows both what ftune allows and what fits.

On the GPU machine (no network; bench/bundle_trl.sh packs what it lacks: ../shared/gpu/bundle.sh --qlora, plus trl
and what it imports at module level -- datasets, pyarrow, dill, multiprocess, xxhash, fsspec, huggingface-hub -- and
liger-kernel, as one xz archive that .device/env.sh unpacks once; 35 MB in all):

    bash bench/bundle_trl.sh                           # here, once
    # then the device tool's run, with carry [".device"] and timeout_s 600:
    source .device/env.sh && python bench/llm_speed.py; cp bench/results/llm_speed.* $OUT/

Estimated GPU wall time on an H100 (not measured yet): the two model folders ~20 s; each row ~10-15 s of start-up
(imports, CUDA context, loading, TRL's dataset preparation) plus ~250k tokens of training: LoRA rows ~3-5 s with
packing and ~10-15 s for TRL's padded, checkpointed default, QLoRA rows about twice that: ~5 minutes for the 12 rows;
then the 6 LoRA probes, ~25-45 s each (~3 minutes). Each row stops after --row-timeout (120 s), each probe after
--probe-timeout, and whatever has not started by --total-timeout (540 s) is shown as skipped, so one hang cannot eat
the device time and the table is always written; the probes run last, so they are what a slow machine loses. Less:
--probes none (~5.5 minutes), --shapes qwen, --steps 20; the probes alone: --probes-only. Where trl does not import,
TRL's rows are "skipped: trl does not import" with the error in the setup line.

On a CPU, a check that every row works end to end in a few minutes (2 cores): tiny shapes (2 layers, hidden 64,
vocabulary 512), short examples, tiny probes; QLoRA rows "skipped: no CUDA":

    HF_HUB_OFFLINE=1 .venv/bin/python bench/llm_speed.py --quick

Prints a markdown table per shape (with the GPU's name and the libraries' versions) and writes
bench/results/llm_speed.{json,md}. A row that fails is a row with its error's last line, not a crash.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from side_by_side import cli, last_line, run_process  # bench/: on sys.path as the script's own folder

STARTED = time.perf_counter()  # a probe's time runs from its process's start, as the parent's timeout does
RESULTS = Path(__file__).parent / "results"
IGNORE = -100

# Real models' configs (from their config.json on the hub), written out: nothing is downloaded.
SHAPES = {
    "qwen": {"class": "Qwen2Config", "title": "Qwen2.5-0.5B shape (Qwen2ForCausalLM)",
             "config": {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                        "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                        "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                        "use_sliding_window": False, "hidden_act": "silu"}},
    "llama": {"class": "LlamaConfig", "title": "Llama-3.2-1B shape (LlamaForCausalLM)",
              "config": {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                         "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                         "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
                         "tie_word_embeddings": True, "hidden_act": "silu"}},
}
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,  # --quick
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}

TITLES = {
    "trl": "TRL SFTTrainer, defaults (padded batches, fp32 base, gradient checkpointing)",
    "trl_fast": "TRL fast path (packing bfd + padding_free, bf16 base on CUDA, no checkpointing)",
    "ftune": "ftune train causal-lm, packing",
    "trl_q": "QLoRA: TRL SFTTrainer, defaults",
    "trl_fast_q": "QLoRA: TRL fast path",
    "ftune_q": "QLoRA: ftune train causal-lm, packing",
}
ROWS = list(TITLES)
REFERENCE = {"trl_fast": "trl", "ftune": "trl", "trl_q": "trl", "trl_fast_q": "trl_q", "ftune_q": "trl_q"}
LORA = {"r": 16, "alpha": 32, "dropout": 0.1}
LEARNING_RATE = 2e-4  # ftune's default for causal-lm LoRA; the same in every row (TRL's default is 2e-5)

SPECIALS = ["<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>"]
ROLES = ["system", "user", "assistant"]
# ChatML without newlines, with {% generation %} around what is learned: the answer and the <|im_end|> that closes
# it (ftune learns the same span, found from the template's layout). The space before an answer belongs to the
# answer's first token, so the prompt ends on a token boundary (both tools need that).
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant' }}{% generation %}{{ ' ' + m['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|im_start|>' + m['role'] + ' ' + m['content'] + '<|im_end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant' }}{% endif %}")
TEMPLATE_TOKENS = 6  # <|im_start|> user ... <|im_end|> <|im_start|> assistant ... <|im_end|>
# Qwen2's pre-tokenizer: transformers (5.x) loads any model_type "qwen2" folder's tokenizer as Qwen2Tokenizer, a
# byte-level BPE rebuilt from the saved vocabulary and merges with this split, whatever tokenizer.json says; so both
# shapes get a byte-level BPE built for it, in which every word " abc" is one token.
PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                     r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


# ---------------------------------------------------------------- data and models (the parent writes them once)

def length_spec(args) -> dict:
    """Prompt and response token counts: log-normal (median, sigma), redrawn until inside [low, high]."""
    if args.quick:
        return {"prompt": (15, 0.8, 5, 60), "response": (11, 0.7, 5, 40)}
    return {"prompt": (150, 0.8, 20, 600), "response": (110, 0.7, 20, 400)}


def draw_lengths(rng, n: int, median: float, sigma: float, low: int, high: int):
    import numpy as np

    out = np.empty(0, dtype=np.int64)
    while len(out) < n:
        x = np.rint(rng.lognormal(math.log(median), sigma, size=2 * n)).astype(np.int64)
        out = np.concatenate([out, x[(x >= low) & (x <= high)]])
    return out[:n]


def expected_mean_length(args) -> float:
    """The mean example length of the distribution (a large sample), to size the epoch before drawing it."""
    import numpy as np

    spec, rng = length_spec(args), np.random.default_rng(12345)
    return float(draw_lengths(rng, 20000, *spec["prompt"]).mean() + draw_lengths(rng, 20000, *spec["response"]).mean()
                 + TEMPLATE_TOKENS)


def byte_chars() -> list[str]:
    """GPT-2's byte-to-character map (what byte-level BPE vocabularies are written in): 256 characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


SPACE = byte_chars()[ord(" ")]  # "Ġ"


def role_pieces() -> list[str]:
    """The role names as single tokens and the prefixes their merges pass through: us, use, user, ..."""
    return [role[:k] for role in ROLES for k in range(2, len(role) + 1)]


def words_of(vocab_size: int) -> list[str]:
    """The data's words: the vocabulary's remaining tokens, each " " + 1-4 lowercase letters, one token each. All of
    length 1-3 come first (every longer word's prefix is then a token, as BPE's merges need), then 4-letter ones."""
    from itertools import islice, product

    letters = "abcdefghijklmnopqrstuvwxyz"
    need = vocab_size - len(SPECIALS) - 256 - len(role_pieces())
    every = ("".join(t) for k in range(1, 5) for t in product(letters, repeat=k))
    words = list(islice(every, need))
    if len(words) < need:
        raise ValueError(f"a vocabulary of {vocab_size} is more than 1-4 letter words give")
    return words


def make_chats(prompt_lengths, response_lengths, vocab_size: int, seed: int) -> list[list[dict]]:
    """One user turn and one assistant turn each, random words of the vocabulary (one token per word)."""
    import numpy as np

    words = np.array(words_of(vocab_size))
    rng = np.random.default_rng(seed)

    def text(n: int) -> str:
        return " ".join(words[rng.integers(0, len(words), size=int(n))])

    return [[{"role": "user", "content": text(p)}, {"role": "assistant", "content": text(r)}]
            for p, r in zip(prompt_lengths, response_lengths)]


def write_jsonl(path: Path, chats: list[list[dict]]) -> None:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats), encoding="utf-8")


def read_jsonl(path: Path) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]


def shape_config(args, shape: str) -> dict:
    config = dict(SHAPES[shape]["config"])
    if args.quick:
        config.update(TINY)
        if shape == "qwen":
            config.pop("head_dim")  # Qwen2's head_dim is hidden / heads
    return config


def make_tokenizer(vocab_size: int):
    """A byte-level BPE with exactly the model's vocabulary size: the specials, the 256 byte characters, the role
    names, and words " abc" that are one token each (Qwen2's pre-tokenizer; see PRETOKENIZE_REGEX). The words' merges
    rank before the roles', so a word that starts like a role still merges from its leading space."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [SPACE + w for w in words_of(vocab_size)]
    tokens = SPECIALS + byte_chars() + role_pieces() + words
    vocab = {token: i for i, token in enumerate(tokens)}
    merges = [(w[:-1], w[-1]) for w in words] + [(r[:-1], r[-1]) for r in role_pieces()]
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                                end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIALS)  # matched before the split, at their own ids
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=None, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    assert len(tokenizer) == vocab_size, (len(tokenizer), vocab_size)
    return tokenizer


def check_tokenizer(folder: Path, chat: list[dict], vocab_size: int) -> None:
    """The folder's tokenizer as both tools load it (AutoTokenizer) gives one token per word, TEMPLATE_TOKENS more."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    words = sum(len(m["content"].split()) for m in chat)
    if len(ids) != words + TEMPLATE_TOKENS or len(tokenizer) != vocab_size:
        raise RuntimeError(f"{folder}: {type(tokenizer).__name__} gives {len(ids)} tokens for {words} words "
                           f"(expected {words + TEMPLATE_TOKENS}) and {len(tokenizer)} tokens (expected {vocab_size}): "
                           f"token counts would not be exact")


def make_model(args, shape: str, folder: Path) -> None:
    """The shape's config, random weights (on the GPU when there is one: seconds, not minutes), bf16 safetensors."""
    import torch
    import transformers

    tokenizer = make_tokenizer(shape_config(args, shape)["vocab_size"])
    config = getattr(transformers, SHAPES[shape]["class"])(
        **shape_config(args, shape), bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_data(args, shape: str, folder: Path) -> dict:
    """train.jsonl (one epoch of about --steps steps at the token budget), small validation/test files (ftune
    evaluates after training, untimed), and what the rows should see: examples, tokens, learned tokens."""
    import numpy as np

    spec = length_spec(args)
    budget = args.windows * args.max_length
    n = max(8, round(args.steps * budget / expected_mean_length(args)))
    rng = np.random.default_rng(0)  # the same lengths for both shapes: only the words differ
    prompts, responses = draw_lengths(rng, n, *spec["prompt"]), draw_lengths(rng, n, *spec["response"])
    vocab = shape_config(args, shape)["vocab_size"]
    chats = make_chats(prompts, responses, vocab, seed=1)
    check_tokenizer(folder / "model", chats[0], vocab)
    write_jsonl(folder / "train.jsonl", chats)
    small = draw_lengths(rng, 8, *spec["prompt"]), draw_lengths(rng, 8, *spec["response"])
    write_jsonl(folder / "validation.jsonl", make_chats(small[0][:4], small[1][:4], vocab, seed=2))
    write_jsonl(folder / "test.jsonl", make_chats(small[0][4:], small[1][4:], vocab, seed=3))
    lengths = prompts + responses + TEMPLATE_TOKENS
    info = {"examples": n, "tokens": int(lengths.sum()), "learned_tokens": int((responses + 1).sum()),
            "mean_length": float(lengths.mean()), "max_length_seen": int(lengths.max()),
            "prompt_mean": float(prompts.mean()), "response_mean": float(responses.mean()),
            "whole_examples_per_step": max(1, round(budget / float(lengths.mean())))}
    (folder / "data.json").write_text(json.dumps(info))
    return info


def probe_chats(args, shape: str, batch: int) -> list[list[dict]]:
    """2 steps' worth of examples exactly --max-length tokens long (60% prompt, 40% response)."""
    total = args.max_length - TEMPLATE_TOKENS
    prompt = int(total * 0.6)
    return make_chats([prompt] * 2 * batch, [total - prompt] * 2 * batch, shape_config(args, shape)["vocab_size"],
                      seed=4)


# ---------------------------------------------------------------- the rows, each run in its own process (--one NAME)

def cuda_ready() -> bool:
    import torch

    return torch.cuda.is_available()


def fast_path_extras() -> tuple[dict, dict, list[str]]:
    """SFTConfig fields and model_init_kwargs of TRL's fast path on this machine, and notes on what is missing."""
    import torch

    config, init, notes = {"packing": True, "packing_strategy": "bfd", "padding_free": True,
                           "gradient_checkpointing": False}, {}, []
    if torch.cuda.is_available():
        init["dtype"] = torch.bfloat16
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            init["attn_implementation"] = "flash_attention_2"
        else:
            notes.append("no flash-attn: sdpa (a block-diagonal mask over the flattened batch)")
        if importlib.util.find_spec("liger_kernel") is not None:
            try:
                importlib.import_module("liger_kernel.transformers")  # what TRL's use_liger_kernel imports
                config["use_liger_kernel"] = True
            except Exception as e:  # noqa: BLE001 - any import failure means: not used, and said so
                notes.append(f"liger-kernel does not import ({type(e).__name__}): not used")
        else:
            notes.append("no liger-kernel: not used")
    return config, init, notes


def log_steps(args) -> int:
    """Both tools log the mean training loss every 10 steps (their defaults); --quick's few steps: every step."""
    return 1 if args.quick else 10


def synced_time() -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def make_clock():
    """A TrainerCallback timing the training loop (on_train_begin to on_train_end) and the end of every optimizer
    step, CUDA synchronized."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        seconds, step_ends = None, []

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.step_ends = synced_time(), []

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ends.append(synced_time())

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = synced_time() - self.start

    return Clock()


def count_batches(trainer) -> list[tuple[int, int]]:
    """(non-padding tokens, learned tokens) of each batch TRL's collator makes, in order (one batch per step here)."""
    collate, counts = trainer.data_collator, []

    def counting(features):
        batch = collate(features)
        mask = batch.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())  # padding-free: no padding
        counts.append((tokens, int((batch["labels"] != IGNORE).sum())))
        return batch

    trainer.data_collator = counting
    return counts


def steady(step_ends: list[float], counts: list[tuple[int, int]], warmup: int) -> dict:
    """Tokens, learned tokens and seconds of the steps after the first `warmup` (their first-use costs: CUDA
    kernels' set-up, Triton compiles): step k's tokens are counts[k], its end step_ends[k]."""
    n = min(len(step_ends), len(counts))
    if warmup < 1 or n <= warmup + 1:
        return {}
    return {"steady_seconds": step_ends[n - 1] - step_ends[warmup - 1], "steady_steps": n - warmup,
            "steady_tokens": sum(c[0] for c in counts[warmup:n]), "steady_learned": sum(c[1] for c in counts[warmup:n])}


def trl_trainer(args, shape: str, fast: bool, qlora: bool, chats: list[list[dict]], batch: int, out: Path,
                clock=None):
    """An SFTTrainer on the shape's model folder in the row's configuration (see the module's docstring)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    folder = Path(args.work) / shape / "model"
    extra, init, notes = fast_path_extras() if fast else ({}, {}, [])
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16) if qlora else None
    config = SFTConfig(output_dir=str(out), per_device_train_batch_size=batch, num_train_epochs=1,
                       learning_rate=LEARNING_RATE, max_length=args.max_length, assistant_only_loss=True, seed=0,
                       logging_steps=log_steps(args), save_strategy="no", eval_strategy="no", report_to="none",
                       disable_tqdm=True, bf16=cuda, use_cpu=not cuda, model_init_kwargs=init or None, **extra)
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    trainer = SFTTrainer(model=str(folder), args=config, processing_class=tokenizer, peft_config=peft,
                         train_dataset=Dataset.from_list([{"messages": c} for c in chats]),
                         quantization_config=quantization, callbacks=[clock] if clock else None)
    attention = getattr(trainer.model.config, "_attn_implementation", None)
    settings = {**extra, "gradient_checkpointing": config.gradient_checkpointing,
                "base_dtype": str(init.get("dtype", "float32 (TRL's default)"))}
    return trainer, tokenizer, {"attention": attention, "notes": notes, "config": settings}


def masks_match(chats: list[list[dict]], tokenizer, dataset, max_length: int) -> bool:
    """TRL's prepared ids and labels (unpacked rows) against ftune's encoding of the same chats."""
    import numpy as np

    from ftune.tasks.causal_lm import encode_chats

    ours = encode_chats(chats, tokenizer, max_length)
    theirs_ids, theirs_labels = dataset["input_ids"], dataset["labels"]
    if len(theirs_ids) != len(ours.input_ids):
        return False
    for ids, labels, x, y in zip(theirs_ids, theirs_labels, ours.input_ids, ours.labels):
        if list(ids) != x.tolist() or not np.array_equal(np.asarray(labels)[1:] != IGNORE, y[1:] != IGNORE):
            return False
    return True


def run_trl(args, shape: str, fast: bool, qlora: bool) -> dict:
    import torch

    folder = Path(args.work) / shape
    chats, info = read_jsonl(folder / "train.jsonl"), json.loads((folder / "data.json").read_text())
    batch = args.windows if fast else info["whole_examples_per_step"]
    clock = make_clock()
    trainer, tokenizer, setup = trl_trainer(args, shape, fast, qlora, chats, batch, folder / f"trl-{args.one}", clock)
    counts = count_batches(trainer)
    prepared = trainer.train_dataset
    learned = sum(int((torch.tensor(y) != IGNORE).sum()) for y in prepared["labels"])
    tokens = int(sum(len(x) for x in prepared["input_ids"]))
    same = learned == info["learned_tokens"] and tokens == info["tokens"]
    if same and not fast:  # unpacked: each example's ids and labels, against ftune's
        same = masks_match(chats, tokenizer, prepared, args.max_length)
    trainer.train()
    same = same and [sum(c[0] for c in counts), sum(c[1] for c in counts)] == [info["tokens"], info["learned_tokens"]]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    if clock.seconds is None:
        raise RuntimeError("the training loop's clock did not stop (no on_train_end)")
    return {"seconds": clock.seconds, "steps": trainer.state.global_step, "batch": batch,
            "tokens": info["tokens"], "learned_tokens": info["learned_tokens"], "tool_learned_tokens": learned,
            "tool_tokens": tokens, "same_masks": same, "final_loss": losses[-1] if losses else None,
            "collated": [sum(c[0] for c in counts), sum(c[1] for c in counts)],
            **steady(clock.step_ends, counts, args.warmup_steps), **setup}


def ftune_settings(args, shape: str, qlora: bool, batch: int, train: Path, out: Path) -> list[str]:
    """`--set` overrides of an ftune row (the data and model paths included): the same for the row and its probe."""
    folder = Path(args.work) / shape
    settings = [f"model.name={folder / 'model'}", f"data.train={train}",
                f"data.validation={folder / 'validation.jsonl'}", f"data.test={folder / 'test.jsonl'}",
                "task.name=causal-lm", "task.packing=true", f"data.max_length={args.max_length}", "method.name=lora",
                f"method.r={LORA['r']}", f"method.alpha={LORA['alpha']}", f"method.dropout={LORA['dropout']}",
                "method.target_modules=all-linear", "train.epochs=1", f"train.batch_size={batch}",
                f"train.learning_rate={LEARNING_RATE}", f"train.log_steps={log_steps(args)}", "train.seed=0",
                "train.baselines=false", "train.evaluate_test=false", "tracking.backend=none", f"output_dir={out}"]
    return settings + (["method.load_in_4bit=true"] if qlora else [])


def time_ftune_steps() -> tuple[list[float], list[tuple[int, int]], str | None]:
    """Each optimizer step's end (CUDA synchronized) and its (tokens, learned tokens), recorded around ftune's
    _Fit.step (one micro-batch = one step without accumulation) in this process. ftune's internals, not its API: if
    they moved, nothing is recorded and the row falls back to its whole-loop time (the third value says why)."""
    import ftune.training

    ends, counts = [], []
    fit = getattr(ftune.training, "_Fit", None)
    original = getattr(fit, "step", None)
    if original is None:
        return ends, counts, "ftune.training._Fit.step not found"

    def step(self, batches, b, *rest, **kwargs):
        data = self.data["train"]
        rows = batches[b]
        tokens = int(data.lengths[rows].sum())
        learned = int(sum(int((data.labels[i] != IGNORE).sum()) for i in rows))
        result = original(self, batches, b, *rest, **kwargs)
        ends.append(synced_time())
        counts.append((tokens, learned))
        return result

    fit.step = step
    return ends, counts, None


def run_ftune(args, shape: str, qlora: bool) -> dict:
    folder = Path(args.work) / shape
    info = json.loads((folder / "data.json").read_text())
    out = folder / f"ftune-{args.one}"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["train", "--quiet"]
    for setting in ftune_settings(args, shape, qlora, args.windows, folder / "train.jsonl", out):
        argv += ["--set", setting]
    try:
        ends, counts, why = time_ftune_steps()
    except Exception as e:  # noqa: BLE001 - instrumentation only: the row still runs, timed as a whole
        ends, counts, why = [], [], f"{type(e).__name__}: {e}"
    cli(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["train"]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "train"]
    learned = metrics["data"]["response_tokens"]["train"]
    return {"seconds": train["seconds"], "steps": train["steps"], "batch": args.windows, "tokens": info["tokens"],
            "learned_tokens": info["learned_tokens"], "tool_learned_tokens": learned,
            "tool_tokens": train["tokens_seen"],
            "same_masks": learned == info["learned_tokens"] and train["tokens_seen"] == info["tokens"] and
            (not counts or [sum(c[0] for c in counts), sum(c[1] for c in counts)] == [info["tokens"],
                                                                                     info["learned_tokens"]]),
            "final_loss": losses[-1] if losses else None, "attention": "sdpa (transformers' default; ftune sets none)",
            "notes": [f"no per-step times ({why})"] if why else [],
            "packed_windows": metrics["data"].get("packed_train_sequences"),
            "collated": [sum(c[0] for c in counts), sum(c[1] for c in counts)],
            **steady(ends, counts, args.warmup_steps)}


# ---------------------------------------------------------------- the probes: largest batch of --max-length tokens

def is_oom(error: BaseException) -> bool:
    import torch

    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text.lower()


def free_gpu() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def probe_trl(args, shape: str, fast: bool, qlora: bool, batch: int) -> None:
    chats = probe_chats(args, shape, batch)
    trainer, _, _ = trl_trainer(args, shape, fast, qlora, chats, batch, Path(args.work) / shape / f"probe-{args.one}")
    try:
        trainer.train()
    finally:
        del trainer


def probe_ftune(args, shape: str, qlora: bool, batch: int) -> None:
    from ftune.config import load_config
    from ftune.training import train

    folder = Path(args.work) / shape
    data = folder / f"probe-{args.one}-{batch}.jsonl"
    write_jsonl(data, probe_chats(args, shape, batch))
    out = folder / f"probe-{args.one}-{batch}"
    shutil.rmtree(out, ignore_errors=True)
    train(load_config(None, ftune_settings(args, shape, qlora, batch, data, out)), quiet=True)


def run_probe(args, shape: str, row: str) -> dict:
    """Batch sizes doubling from --probe-start until the first OOM (or --probe-max, or --probe-timeout nearly spent)."""
    import torch

    import ftune.training
    from ftune.errors import ConfigError

    qlora, fast = row.endswith("_q"), row.startswith("trl_fast")
    deadline = STARTED + (args.budget or args.probe_timeout) - 8  # before the parent's kill
    fits, allowed_by_estimate, refused, oom, peaks, left_over, last = None, None, None, None, {}, {}, 0.0
    stopped, batch = None, args.probe_start
    while batch <= args.probe_max:
        if time.perf_counter() + 2 * last > deadline:  # the next attempt takes about twice the last
            stopped = "time"
            break
        free_gpu()
        # what an earlier attempt left allocated (0 unless something kept its model alive: then later OOMs come early)
        left_over[batch] = torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else None
        start = time.perf_counter()
        try:
            if row.startswith("ftune"):
                probe_ftune(args, shape, qlora, batch)
            else:
                probe_trl(args, shape, fast, qlora, batch)
        except ConfigError as e:  # ftune's memory estimate said no before training: note it, then look further
            if "needs about" not in str(e) or refused is not None:
                raise
            refused = batch
            ftune.training.check_fits = lambda *a, **k: None  # this process only: what really fits
            continue
        except Exception as e:  # noqa: BLE001 - an OOM anywhere in a tool's step (some wrap it in their own error)
            if not is_oom(e):
                raise
            oom = batch
            break
        last = time.perf_counter() - start
        peaks[batch] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        fits = batch
        if refused is None:
            allowed_by_estimate = batch
        batch *= 2
    total = torch.cuda.get_device_properties(0).total_memory / 2**20 if torch.cuda.is_available() else None
    return {"fits": fits, "oom_at": oom, "estimate_refused": refused, "estimate_allowed": allowed_by_estimate,
            "capped": fits is not None and oom is None and (stopped is not None or fits * 2 > args.probe_max),
            "stopped": stopped, "peaks_mb": peaks, "left_over_mb": left_over, "gpu_total_mb": total}


def one(args) -> None:
    """One row or probe, in this process; the last stdout line `RESULT {...}` is what the parent reads."""
    import torch

    kind, shape, row = args.one.split(":") if args.one.count(":") == 2 else ("row", *args.one.split(":"))
    start = time.perf_counter()
    if kind == "build":  # the parent never touches the GPU: its memory is the rows' and the probes'
        (Path(args.work) / shape).mkdir(exist_ok=True)
        make_model(args, shape, Path(args.work) / shape / "model")
        result = write_data(args, shape, Path(args.work) / shape)
    elif kind == "probe":
        result = run_probe(args, shape, row)
    elif row.startswith("ftune"):
        result = run_ftune(args, shape, row.endswith("_q"))
    else:
        result = run_trl(args, shape, row.startswith("trl_fast"), row.endswith("_q"))
    result["wall_seconds"] = time.perf_counter() - start
    result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent: set-up, one process per row, the table

def run_row(name: str, work: Path, timeout: int) -> dict:
    command = [sys.executable, __file__, *sys.argv[1:], "--one", name, "--work", str(work), "--budget", str(timeout)]
    env = {**os.environ, "FTUNE_CACHE": str(work / "ftune-cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    return run_process(command, timeout, env)


def versions() -> dict:
    import torch
    import transformers

    env = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else
           f"CPU only ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads)",
           "cuda": torch.cuda.is_available(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "transformers": transformers.__version__, "python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for name in ("peft", "accelerate", "trl", "datasets", "bitsandbytes", "liger_kernel", "flash_attn"):
        try:
            env[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            env[name] = None
    return env


def trl_missing() -> str | None:
    """Why TRL cannot run here (checked once, in a child: importing trl costs seconds), or None."""
    done = subprocess.run([sys.executable, "-c", "import trl.trainer.sft_trainer"], capture_output=True, text=True)
    return last_line(done.stderr) if done.returncode else None


def fmt(x, spec: str = ",.0f", none: str = "") -> str:
    return none if x is None else format(x, spec)


def probe_text(p: dict | None) -> str:
    if not p:
        return ""
    if "skipped" in p or "error" in p:
        return f"skipped: {p['skipped']}" if "skipped" in p else f"failed: {p['error']}"
    fits = "none" if p["fits"] is None else f"{'≥' if p['capped'] else ''}{p['fits']}"
    text = fits + (f" (OOM at {p['oom_at']})" if p["oom_at"] else " (out of probe time)" if p.get("stopped") else "")
    if p.get("estimate_refused"):
        text += f"; ftune's estimate allows {p['estimate_allowed'] or 'none'}, refuses {p['estimate_refused']}"
    return text


def report(results: dict, args, env: dict, data: dict, shapes: list[str], names: list[str],
           trl_note: str | None) -> None:
    header = ["#", "row", "learned tok/s", "all tok/s", "vs ref", "peak GPU MB", "peak vs ref",
              f"largest batch @{args.max_length}", "tokens/step", "steps", "loop s",
              f"first {args.warmup_steps} step{'s' * (args.warmup_steps != 1)} s",
              "final loss", "same masks"]
    parts = []
    for shape in shapes:
        d = data.get(shape, {})
        lines = [f"### {SHAPES[shape]['title'] if not args.quick else f'tiny {shape} shape (2 layers, hidden 64)'}",
                 "", f"{d.get('examples', '?')} examples, {fmt(d.get('tokens'))} tokens ({fmt(d.get('learned_tokens'))}"
                 f" learned), mean {fmt(d.get('mean_length'), '.0f')} tokens per example; rows 1/4: batch "
                 f"{d.get('whole_examples_per_step', '?')} examples; rows 2-3/5-6: batch {args.windows} windows of "
                 f"{args.max_length} tokens", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for i, row in enumerate(ROWS, 1):
            if row not in names:
                continue
            r = results.get(f"{shape}:{row}", {"skipped": "not run"})
            probe = probe_text(results.get(f"probe:{shape}:{row}"))
            if "skipped" in r or "error" in r:
                why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['error']}"
                lines.append(f"| {i} | {TITLES[row]} | {why} |" + " |" * 4 + f" {probe} |" + " |" * 6)
                continue
            if r.get("steady_seconds"):  # after the first steps; else the whole loop (marked *)
                r["learned_per_s"] = r["steady_learned"] / r["steady_seconds"]
                r["tokens_per_s"] = r["steady_tokens"] / r["steady_seconds"]
                first, mark = f"{r['seconds'] - r['steady_seconds']:.1f}", ""
            else:
                r["learned_per_s"] = r["learned_tokens"] / r["seconds"]
                r["tokens_per_s"] = r["tokens"] / r["seconds"]
                first, mark = "", "*"
            ref_name = REFERENCE.get(row)
            ref = results.get(f"{shape}:{ref_name}", {}) if ref_name else {}
            ref_no = ROWS.index(ref_name) + 1 if ref_name else None
            ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x ({ref_no})" if ref.get("tokens_per_s") else ""
            peak = fmt(r.get("peak_gpu_mb"))
            share = f"{r['peak_gpu_mb'] / ref['peak_gpu_mb']:.0%} ({ref_no})" \
                if r.get("peak_gpu_mb") and ref.get("peak_gpu_mb") else ""
            same = {True: "yes", False: f"no ({fmt(r.get('tool_learned_tokens'))} learned)"}.get(
                r.get("same_masks"), "")
            lines.append(f"| {i} | {TITLES[row]} | {fmt(r['learned_per_s'])}{mark} | {fmt(r['tokens_per_s'])}{mark} | "
                         f"{ratio} | {peak} | {share} | {probe} | {fmt(r['tokens'] / max(r['steps'], 1))} | "
                         f"{r['steps']} | {r['seconds']:.1f} | {first} | {fmt(r.get('final_loss'), '.3f')} | {same} |")
        notes = sorted({n for row in ROWS for n in results.get(f"{shape}:{row}", {}).get("notes", [])})
        attention = {row: results[f"{shape}:{row}"].get("attention") for row in ROWS
                     if results.get(f"{shape}:{row}", {}).get("attention")}
        if notes or attention:
            lines.append("")
        if notes:
            lines.append("TRL fast path here: " + "; ".join(notes) + "  ")
        if attention:
            lines.append("attention: " + ", ".join(f"{row} {a}" for row, a in attention.items()))
        parts.append("\n".join(lines))
    libs = ", ".join(f"{k} {env[k]}" for k in ("peft", "accelerate", "trl", "datasets", "bitsandbytes", "liger_kernel",
                                               "flash_attn") if env.get(k))
    setup = (f"{env['device']}; torch {env['torch']} (CUDA {env['torch_cuda']}), transformers {env['transformers']}, "
             f"{libs}\nLoRA r {LORA['r']} alpha {LORA['alpha']} dropout {LORA['dropout']} on all linear layers, lr "
             f"{LEARNING_RATE:g}, {'bf16' if env['cuda'] else 'fp32 on CPU'}, 1 epoch of about {args.steps} steps at "
             f"{args.windows} x {args.max_length} tokens, seed 0"
             + (f"\nTRL rows not run: {trl_note}" if trl_note else "")
             + ("  [--quick: a check that every row works, not a measurement]" if args.quick else ""))
    notes = [f"learned tok/s: response tokens (and the <|im_end|> closing each) per second; all tok/s: non-padding "
             f"tokens per second; both over the steps after the first {args.warmup_steps} (whose first-use costs, "
             f"e.g. Triton compiles, are in 'first steps s'), from each step's end (CUDA synchronized) and the tokens "
             f"of its batch; * marks a row timed over its whole loop instead. loop s: the whole training loop (1 epoch "
             f"of the same examples in every row)",
             "vs ref / peak vs ref: against row 1 (LoRA rows and row 4), row 4 (QLoRA rows 5-6)",
             "peak GPU MB: torch.cuda.max_memory_allocated over the row's whole process (loading, training, ftune's "
             "evaluation of 4 validation chats)",
             f"largest batch: a separate process per row, examples of exactly {args.max_length} tokens, batch "
             f"doubling from {args.probe_start} to {args.probe_max} (≥: the cap or the probe's time came first), 2 "
             f"steps each, up to the first CUDA OOM",
             "tokens/step: non-padding tokens / optimizer steps (each tool's batch unit; see the docstring)",
             "final loss: random weights and random words, about ln(vocabulary): a check that training ran, not a "
             "score",
             "same masks: the tokens and learned tokens each tool prepared, and then collated into its batches, equal "
             "the data's (rows 1 and 4: also TRL's per-example ids and labels equal ftune's encoding)"]
    text = setup + "\n\n" + "\n\n".join(parts) + "\n\n" + "\n".join(f"- {n}" for n in notes)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)  # git-ignored
    (RESULTS / "llm_speed.md").write_text(text + "\n")
    settings = {k: v for k, v in vars(args).items() if k not in ("one", "work")}
    (RESULTS / "llm_speed.json").write_text(json.dumps({"environment": env, "setup": settings, "data": data,
                                                        "results": results}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a CPU-sized check that every row works (minutes on 2 cores)")
    p.add_argument("--shapes", choices=["qwen", "llama", "both"], default="both")
    p.add_argument("--rows", nargs="*", choices=ROWS, help="these rows only (default all six)")
    p.add_argument("--probes", choices=["none", "lora", "all"], help="largest-batch probes: none, the LoRA rows' "
                   "(default), or every row's")
    p.add_argument("--probes-only", action="store_true", help="the probes without the timed rows (e.g. a second "
                   "device command when the first ran out of time)")
    p.add_argument("--steps", type=int, help="size of the epoch in optimizer steps at the token budget (default 30; "
                   "--quick 5)")
    p.add_argument("--warmup-steps", type=int, help="first steps left out of the tokens/s columns (default 3; "
                   "--quick 1); the whole loop's time is shown too")
    p.add_argument("--windows", type=int, help="packed windows per step (default 4; --quick 2)")
    p.add_argument("--max-length", type=int, help="window and probe length (default 2048; --quick 256)")
    p.add_argument("--probe-start", type=int, help="first probe batch (default 8; --quick 2)")
    p.add_argument("--probe-max", type=int, help="largest probe batch tried (default 64; --quick 4)")
    p.add_argument("--row-timeout", type=int, help="seconds before a row is stopped (default 120; --quick 900)")
    p.add_argument("--probe-timeout", type=int, help="seconds for one probe (default 60; --quick 900)")
    p.add_argument("--total-timeout", type=int, help="seconds for everything; later rows are skipped (default 540, "
                   "inside the device machine's 10 minutes a command; --quick 3600)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=int, help=argparse.SUPPRESS)  # a probe's seconds, from the parent
    args = p.parse_args()
    defaults = ({"steps": 5, "warmup_steps": 1, "windows": 2, "max_length": 256, "probes": "lora", "probe_start": 2,
                 "probe_max": 4, "row_timeout": 900, "probe_timeout": 900, "total_timeout": 3600} if args.quick else
                {"steps": 30, "warmup_steps": 3, "windows": 4, "max_length": 2048, "probes": "lora", "probe_start": 8,
                 "probe_max": 64, "row_timeout": 120, "probe_timeout": 60, "total_timeout": 540})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.one:
        return one(args)

    started = time.perf_counter()
    deadline = started + args.total_timeout
    env = versions()
    if not env["cuda"] and not args.quick:
        print("warning: no CUDA here; every row runs on the CPU at full size (very slow). --quick is the CPU check.",
              file=sys.stderr)
    shapes = ["qwen", "llama"] if args.shapes == "both" else [args.shapes]
    names = args.rows or ROWS
    trl_note = trl_missing() if any(n.startswith("trl") for n in names) else None
    qlora_note = None if env["cuda"] else "no CUDA"
    if qlora_note is None and importlib.util.find_spec("bitsandbytes") is None:
        qlora_note = "no bitsandbytes"
    probed = [] if args.probes == "none" else [n for n in names if args.probes == "all" or not n.endswith("_q")]
    jobs = ([] if args.probes_only else [f"{s}:{n}" for s in shapes for n in names]) + \
        [f"probe:{s}:{n}" for s in shapes for n in probed]
    work = Path(tempfile.mkdtemp(prefix="llm_speed-"))  # models, data, runs: all deleted after
    results, data = {}, {}
    try:
        built = {}
        for shape in shapes:
            t = time.perf_counter()
            built[shape] = run_row(f"build:{shape}:model", work, max(30, int(deadline - time.perf_counter())))
            if "error" not in built[shape]:
                data[shape] = {k: v for k, v in built[shape].items() if k not in ("wall_seconds", "peak_gpu_mb")}
            said = built[shape].get("error") or f"model and {data[shape]['examples']} examples written"
            print(f"{shape}: {said} ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
        for job in jobs:
            row, shape = job.split(":")[-1], job.split(":")[-2]
            left = deadline - time.perf_counter()
            if "error" in built[shape]:
                results[job] = {"skipped": f"no model: {built[shape]['error']}"}
            elif row.endswith("_q") and qlora_note:
                results[job] = {"skipped": qlora_note}
            elif row.startswith("trl") and trl_note:
                results[job] = {"skipped": "trl does not import"}
            elif left < 20:
                results[job] = {"skipped": "out of time (--total-timeout)"}
            else:
                limit = args.probe_timeout if job.startswith("probe:") else args.row_timeout
                t = time.perf_counter()
                results[job] = r = run_row(job, work, int(min(limit, left)))
                said = r.get("error") or (probe_text(r) if job.startswith("probe:") else
                                          f"{r['tokens'] / r['seconds']:,.0f} tokens/s, peak GPU "
                                          f"{fmt(r['peak_gpu_mb'], none='-')} MB")
                print(f"{job}: {said} ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
                continue
            print(f"{job}: skipped: {results[job]['skipped']}", file=sys.stderr, flush=True)
        report(results, args, env, data, shapes, names, trl_note)
        print(f"\n(whole run: {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
