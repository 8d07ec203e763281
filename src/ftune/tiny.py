"""Tiny, randomly initialized decoders built offline: for tests, and for trying `task: causal-lm` where no
pretrained decoder can be downloaded. A word-level tokenizer learned from the given texts, a chat template,
and a 2-layer Llama-style model; the same config works with any hub model name in its place."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}"
                 "{% if m['role'] == 'assistant' %} <|end|>{% endif %} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")
SPECIALS = ["<pad>", "<unk>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def build_tiny_decoder(folder: str | Path, texts: list[str], hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a tokenizer (word level, with a chat template) and a random Llama-style decoder to `folder`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=4000, special_tokens=SPECIALS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<|end|>", bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=False,
                         initializer_range=0.2)  # 10x the usual: a frozen random output layer must allow large logits
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
