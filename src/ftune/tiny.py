"""Tiny, randomly initialized decoders built offline: for tests, and for trying `task: causal-lm` where no
pretrained decoder can be downloaded. A word-level tokenizer learned from the given texts, a chat template,
and a 2-layer Llama-style model; the same config works with any hub model name in its place."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}"
                 "{% if m['role'] == 'assistant' %} <|end|>{% endif %} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")
# Byte-level BPE: no blanks around the turn markers, so a prompt's tokens end where its text does (a blank would join
# the answer's first word, as " the", and the prompt would not be a prefix of the chat).
BYTE_LEVEL_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                       "{% if m['role'] == 'assistant' %}<|end|>{% endif %}{% endfor %}"
                       "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIALS = ["<pad>", "<unk>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def build_tiny_decoder(folder: str | Path, texts: list[str], hidden: int = 64, layers: int = 2, seed: int = 0,
                       byte_level: bool = False) -> Path:
    """Write a tokenizer (word level, with a chat template) and a random Llama-style decoder to `folder`.
    `byte_level`: a byte-level BPE tokenizer instead (as Llama 3's and Qwen's are), which GGUF files can hold."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    if byte_level:
        core = Tokenizer(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    else:
        core = Tokenizer(models.WordLevel(unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
        core.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=4000, special_tokens=SPECIALS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<|end|>", bos_token=None)
    tokenizer.chat_template = BYTE_LEVEL_TEMPLATE if byte_level else CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=False,
                         initializer_range=0.2)  # 10x the usual: a frozen random output layer must allow large logits
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "old": "new", "light": "dark",
             "early": "late", "happy": "sad", "open": "closed", "rich": "poor"}


def opposite_pairs(n: int, seed: int = 0) -> list[dict]:
    """Preference pairs a tiny decoder can learn from scratch: "what is the opposite of W ?" with the right opposite
    chosen and a wrong word (W itself, or another word's opposite) rejected (tests and bench/preference_demo.py)."""
    import random

    rng = random.Random(seed)
    words = list(OPPOSITES.items()) + [(b, a) for a, b in OPPOSITES.items()]
    rows = []
    for _ in range(n):
        (w, o), (_, wrong) = rng.choice(words), rng.choice(words)
        wrong = w if wrong == o else wrong
        rows.append({"prompt": f"what is the opposite of {w} ?", "chosen": f"the opposite of {w} is {o} .",
                     "rejected": f"the opposite of {w} is {wrong} ."})
    return rows
