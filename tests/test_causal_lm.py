"""Instruction tuning of a tiny decoder built here: response-only loss, templates, packing, LoRA, generation."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from typer.testing import CliRunner

import ftune
from ftune.data.tokenize import IGNORE
from ftune.models import load_tokenizer
from ftune.tasks.causal_lm import encode_chats, pack
from ftune.tiny import build_tiny_decoder

OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "old": "new", "light": "dark",
             "early": "late", "happy": "sad", "open": "closed", "rich": "poor"}


def instructions(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = list(OPPOSITES.items()) + [(b, a) for a, b in OPPOSITES.items()]
    return [{"prompt": f"what is the opposite of {w} ?", "response": f"the opposite of {w} is {o} ."}
            for w, o in (rng.choice(words) for _ in range(n))]


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    texts = [f"{r['prompt']} {r['response']}" for r in instructions(200)]
    return str(build_tiny_decoder(tmp_path_factory.mktemp("tiny-decoder"), texts))


@pytest.fixture
def instructions_jsonl(tmp_path):
    path = tmp_path / "instructions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in instructions(400)))
    return path


def test_only_response_tokens_carry_labels_in_every_assistant_turn(tiny_decoder):
    tokenizer = load_tokenizer(tiny_decoder)
    chat = [{"role": "user", "content": "what is the opposite of hot ?"}, {"role": "assistant", "content": "cold"},
            {"role": "user", "content": "and of big ?"}, {"role": "assistant", "content": "small"}]
    [ids], [labels] = (lambda e: (e.input_ids, e.labels))(encode_chats([chat], tokenizer, 64))
    learned = tokenizer.decode(ids[labels != IGNORE].tolist())
    assert learned.split() == ["cold", "<|end|>", "small", "<|end|>"]  # the answers and their end marks, nothing else
    assert (labels[labels != IGNORE] == ids[labels != IGNORE]).all()
    short = encode_chats([chat], tokenizer, 8)
    assert len(short.input_ids[0]) == 8 and short.labels[0][0] == IGNORE


def test_without_a_chat_template_the_plain_layout_is_used(tiny_decoder, tmp_path):
    tokenizer = load_tokenizer(tiny_decoder)
    tokenizer.chat_template = None
    data = encode_chats([[{"role": "user", "content": "hot"}, {"role": "assistant", "content": "cold"}]], tokenizer, 64)
    labels = data.labels[0]
    assert tokenizer.decode(data.input_ids[0][labels != IGNORE].tolist()).split() == ["cold", "<|end|>"]
    with pytest.raises(ftune.DataError, match="multi-turn chats need a tokenizer with a chat template"):
        encode_chats([[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                       {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]], tokenizer, 64)


def test_packing_joins_whole_examples_up_to_the_window(tiny_decoder):
    tokenizer = load_tokenizer(tiny_decoder)
    chats = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
             for r in instructions(20)]
    data = encode_chats(chats, tokenizer, 64)
    packed = pack(data, 64)
    assert len(packed) < len(data) and max(packed.lengths) <= 64
    assert np.concatenate(packed.input_ids).tolist() == np.concatenate(data.input_ids).tolist()  # nothing lost or split
    assert sum((y != IGNORE).sum() for y in packed.labels) == sum((y != IGNORE).sum() for y in data.labels)


def test_lora_on_a_tiny_decoder_lowers_validation_loss_and_generates(tiny_decoder, instructions_jsonl, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftune.cli import app

    cfg = ftune.load_config(overrides={
        "task": "causal-lm", "model.name": tiny_decoder, "data.train": str(instructions_jsonl), "data.max_length": 64,
        "data.packing": True, "method.name": "lora", "method.r": 8, "method.target_modules": "all-linear",
        "train.epochs": 3, "train.batch_size": 8, "train.learning_rate": 1e-2, "output_dir": str(tmp_path / "run"), "tracking.backend": "none"})
    run = ftune.train(cfg, quiet=True)
    validation = run.metrics["validation"]
    before, after = validation["base_model"]["loss"], validation["history"][-1]["validation"]["loss"]
    assert after < 0.85 * before  # a random decoder whose frozen weights LoRA can only nudge: a clear, modest drop
    test = run.metrics["test"]
    assert test["finetuned"]["perplexity"] < test["base_model"]["perplexity"]
    assert run.metrics["data"]["packed_train_sequences"] < run.metrics["data"]["train"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_decoder), str(run.path / "adapter"))
    assert model.peft_config["default"].task_type == "CAUSAL_LM"
    report = (run.path / "report.md").read_text()
    assert "perplexity" in report and "Validation loss before fine-tuning" in report

    result = CliRunner().invoke(app, ["generate", str(run.path), "--prompt", "what is the opposite of hot ?",
                                      "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.splitlines()[0])
    assert answer["prompt"] == "what is the opposite of hot ?" and isinstance(answer["response"], str)
    refused = CliRunner().invoke(app, ["predict", str(run.path), "--text", "x"])
    assert refused.exit_code != 0 and "ftune generate" in str(refused.exception)


def test_qlora_on_cpu_and_wrong_task_settings_are_config_errors(tiny_decoder, instructions_jsonl, tmp_path):
    cfg = ftune.load_config(overrides={"task": "causal-lm", "model.name": tiny_decoder, "data.train": str(instructions_jsonl),
                                       "method.name": "lora", "method.load_in_4bit": True, "tracking.backend": "none",
                                       "output_dir": str(tmp_path / "q")})
    with pytest.raises(ftune.ConfigError, match="QLoRA.*needs a CUDA GPU"):
        ftune.train(cfg, quiet=True)
    assert not (tmp_path / "q").exists()
    with pytest.raises(ftune.ConfigError, match="train.metric=accuracy is not a score of task causal-lm"):
        ftune.load_config(overrides={"task": "causal-lm", "train.metric": "accuracy"})
