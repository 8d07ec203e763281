"""Instruction tuning of a tiny decoder built here: response-only loss, templates, packing, LoRA, generation; the loss
on learned tokens only equals the loss on every logit, and packed examples keep to themselves."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ftune
from ftune import tiny
from ftune.data.tokenize import IGNORE, Encoded, collate
from ftune.models import load_tokenizer
from ftune.tasks import causal_lm
from ftune.tasks.base import cross_entropy_sum
from ftune.tasks.causal_lm import CausalLM, encode_chats, end_of_turn_ids, pack
from ftune.tiny import build_tiny_decoder
from helpers import OPPOSITES, instructions


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


def test_qlora_on_cpu_and_wrong_task_settings_are_config_errors(tiny_decoder, instructions_jsonl, tmp_path,
                                                               monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the message a machine without CUDA gives
    cfg = ftune.load_config(overrides={"task": "causal-lm", "model.name": tiny_decoder, "data.train": str(instructions_jsonl),
                                       "method.name": "lora", "method.load_in_4bit": True, "tracking.backend": "none",
                                       "output_dir": str(tmp_path / "q")})
    with pytest.raises(ftune.ConfigError, match="QLoRA.*needs a CUDA GPU"):
        ftune.train(cfg, quiet=True)
    assert not (tmp_path / "q").exists()
    with pytest.raises(ftune.ConfigError, match="train.metric=accuracy is not a score of task causal-lm"):
        ftune.load_config(overrides={"task": "causal-lm", "train.metric": "accuracy"})


# --- the loss on learned tokens only ---------------------------------------------------------------------------------

def chats(n: int, seed: int = 0) -> list[list[dict]]:
    """One-turn chats, every third with a system message and every fourth with a second turn: lengths vary."""
    out = []
    for i, r in enumerate(instructions(n, seed)):
        chat = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
        if i % 4 == 3:
            chat += [{"role": "user", "content": "and again ?"}, {"role": "assistant", "content": r["response"]}]
        out.append(([{"role": "system", "content": "answer in one short sentence ."}] if i % 3 == 2 else []) + chat)
    return out


def reference_loss(model, batch):
    """The loss as it was: every position's logits, then an fp32 cross-entropy where the label is not IGNORE."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return cross_entropy_sum(logits[:, :-1], batch["labels"][:, 1:])


def reference_rows(model, batch) -> list[np.ndarray]:
    """Each example's summed negative log-likelihood and count, as they were: from every position's logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    return [np.array([float(s), int(c)]) for s, c in zip(nll.sum(1), (labels != IGNORE).sum(1))]


def causal_task() -> CausalLM:
    return CausalLM(ftune.load_config(overrides={"task": "causal-lm"}))


def close(a, b) -> None:
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("setup", ["full", "lora", "lora+checkpointing"])
def test_the_loss_on_learned_tokens_equals_the_loss_on_every_logit(tiny_decoder, monkeypatch, setup):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(causal_lm, "CHUNK", 7)  # several output-layer calls, the last one short
    tokenizer, task = load_tokenizer(tiny_decoder), causal_task()
    batch = collate(encode_chats(chats(6), tokenizer, 64), list(range(6)), tokenizer.pad_token_id)
    vocab, positions = len(tokenizer), batch["input_ids"].numel()

    def model():
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(tiny_decoder)
        if "checkpointing" in setup:  # as the loop enables it (5.17 has only the older name)
            (getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable)(
                {"use_reentrant": False})
        if "lora" in setup:  # random B as well as A: every adapter weight gets a gradient to compare
            m = get_peft_model(m, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        return m.train()

    def loss_and_grads(m, loss):
        total, count = loss(m)
        (total / count).backward()
        return total, count, {name: p.grad for name, p in m.named_parameters() if p.requires_grad}

    new_model, sizes, saved = model(), [], []
    new_model.get_output_embeddings().register_forward_hook(lambda mod, args, out: sizes.append(out.numel()))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        total, count, grads = loss_and_grads(new_model, lambda m: task.loss(task.forward(m, batch), batch))
    ref_total, ref_count, ref_grads = loss_and_grads(model(), lambda m: reference_loss(m, batch))
    close(total, ref_total)
    assert count == ref_count == (batch["labels"][:, 1:] != IGNORE).sum()
    assert grads.keys() == ref_grads.keys() and len(grads) > 1
    for name in grads:
        close(grads[name], ref_grads[name])
    # The output layer saw at most 7 positions at a time (or one per example: the model's own logits_to_keep=1),
    # never the batch's every position.
    assert max(sizes) <= max(7, len(batch["input_ids"])) * vocab < positions * vocab
    # and no chunk's logits were kept for the backward pass (recomputed there): nothing saved has a vocabulary
    # dimension but the output layer's weight itself (transposed; or expanded over the batch, as a view)
    hidden = new_model.get_output_embeddings().in_features
    assert [shape for shape in saved if shape and shape[-1] == vocab and tuple(shape[-2:]) != (hidden, vocab)] == []

    with torch.no_grad():
        new_model.eval()
        rows = task.rows(task.forward(new_model, batch), batch)
        for row, ref in zip(rows, reference_rows(new_model, batch), strict=True):
            close(row, ref)

    nothing = dict(batch, labels=torch.full_like(batch["labels"], IGNORE))  # no learned token: 0 of 0, still a graph
    new_model.train()
    total, count = task.loss(task.forward(new_model, nothing), nothing)
    assert total.item() == 0.0 and count.item() == 0.0
    total.backward()


@pytest.mark.parametrize("family, scaling", [("gemma2", {"final_logit_softcapping": 2.0, "head_dim": 8}),
                                             ("granite", {"logits_scaling": 4.0}), ("cohere", {"logit_scale": 0.25})])
def test_the_logit_scaling_a_model_applies_after_its_output_layer_is_kept(family, scaling):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family, vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5, **scaling)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(3, 40, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.where(
        torch.arange(12) < 5, IGNORE, ids)}
    with torch.no_grad():
        task = causal_task()
        close(task.loss(task.forward(model, batch), batch), reference_loss(model, batch))


# --- packing: each example attends only to itself ---------------------------------------------------------------------

@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_packed_loss_is_the_sum_of_the_examples_alone(tiny_decoder, attention):
    from transformers import AutoModelForCausalLM

    tokenizer, task = load_tokenizer(tiny_decoder), causal_task()
    model = AutoModelForCausalLM.from_pretrained(tiny_decoder, attn_implementation=attention).eval()
    data = encode_chats(chats(12), tokenizer, 64)
    packed, across = pack(data, 64), pack(data, 64, isolate=False)
    assert len(packed) < len(data) and len(set(packed.lengths)) > 1  # several per row, and padding in the batch
    def loss(d: Encoded, indices: list[int]):
        batch = collate(d, indices, tokenizer.pad_token_id)
        return task.loss(task.forward(model, batch), batch)

    with torch.no_grad():
        alone = [loss(data, [i]) for i in range(len(data))]
        total, count = loss(packed, list(range(len(packed))))
        close(total, sum(t for t, _ in alone))
        assert count == sum(c for _, c in alone)
        across_total, _ = loss(across, list(range(len(across))))
        assert abs(float(across_total) - float(total)) > 1e-2  # the old packing reads the neighbours: the test sees it


def test_a_packed_example_reads_nothing_of_its_neighbour(tiny_decoder):
    from transformers import AutoModelForCausalLM

    tokenizer, task = load_tokenizer(tiny_decoder), causal_task()
    model = AutoModelForCausalLM.from_pretrained(tiny_decoder).eval()
    data = encode_chats(chats(3), tokenizer, 64)
    example, first, second = data.input_ids[0], data.input_ids[1], data.input_ids[2]
    assert len(first) != len(second)

    def logits_beside(neighbour, isolate=True):
        joined = pack(Encoded([neighbour, example], None, [np.full(len(x), IGNORE) for x in (neighbour, example)]),
                      64, isolate)
        batch = collate(joined, [0], tokenizer.pad_token_id)
        return model(**task.inputs(batch), use_cache=False).logits[0, len(neighbour):]

    with torch.no_grad():
        alone = model(input_ids=torch.from_numpy(example.astype(np.int64))[None]).logits[0]
        close(logits_beside(first), alone)
        close(logits_beside(second), alone)
        assert (logits_beside(first, isolate=False) - alone).abs().max() > 1e-2  # attend-across: it does read them


def test_packed_positions_restart_per_example_and_survive_subset_and_collate():
    data = Encoded([np.array([5, 6, 7]), np.array([8, 9]), np.array([4, 4, 4, 4])], None,
                   [np.array([IGNORE, 6, 7]), np.array([IGNORE, 9]), np.array([IGNORE, 4, 4, 4])])
    packed = pack(data, 5)
    assert [p.tolist() for p in packed.position_ids] == [[0, 1, 2, 0, 1], [0, 1, 2, 3]]
    assert pack(data, 5, isolate=False).position_ids is None
    batch = collate(packed.subset(np.array([1, 0])), [0, 1], pad_id=0)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]  # padding: position 0
    assert "position_ids" not in collate(data, [0, 1], pad_id=0)  # unpacked batches are as before
    task = causal_task()
    assert set(task.inputs(batch)) == {"input_ids", "position_ids"}  # no mask: transformers builds it from positions
    assert set(task.inputs(collate(data, [0, 1], pad_id=0))) == {"input_ids", "attention_mask"}


def test_packing_modes_by_name(tiny_decoder):
    assert ftune.load_config(overrides={"task": "causal-lm", "task.packing": True}).task.packing is True
    assert ftune.load_config(overrides={"task": "causal-lm", "task.packing": "attend-across"}).task.packing == \
        "attend-across"
    with pytest.raises(ftune.ConfigError):
        ftune.load_config(overrides={"task": "causal-lm", "task.packing": "sideways"})


# --- the end of a turn is learned -------------------------------------------------------------------------------------

TWO_TURNS = [{"role": "user", "content": "what is the opposite of hot ?"}, {"role": "assistant", "content": "cold"},
             {"role": "user", "content": "and of big ?"}, {"role": "assistant", "content": "small"}]


def learned_spans(tokenizer, chat) -> list[list[str]]:
    """The learned tokens of a chat, as runs of consecutive positions."""
    data = encode_chats([chat], tokenizer, 128)
    ids, labels = data.input_ids[0], data.labels[0]
    spans: list[list[int]] = []
    for i in np.flatnonzero(labels != IGNORE):
        if spans and spans[-1][-1] == i - 1:
            spans[-1].append(i)
        else:
            spans.append([i])
    return [tokenizer.convert_ids_to_tokens(ids[span].tolist()) for span in spans]


def test_the_token_that_ends_an_assistant_turn_is_learned(tiny_decoder):
    tokenizer = load_tokenizer(tiny_decoder)
    assert learned_spans(tokenizer, TWO_TURNS) == [["cold", "<|end|>"], ["small", "<|end|>"]]
    assert end_of_turn_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|end|>")]

    # A ChatML template, whose end of turn is not the end-of-text token
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert learned_spans(tokenizer, TWO_TURNS) == [["cold", "<|im_end|>"], ["small", "<|im_end|>"]]
    assert end_of_turn_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]

    # A template that closes an answer with nothing: the end-of-text token is learned after the last one
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    assert learned_spans(tokenizer, TWO_TURNS) == [["cold"], ["small", "<|end|>"]]
    assert end_of_turn_ids(tokenizer) == [tokenizer.eos_token_id]


def test_data_validate_shows_what_the_model_learns(tiny_decoder, instructions_jsonl):
    from ftune.cli import app

    result = CliRunner().invoke(app, ["data", "validate", "--model", tiny_decoder, "--data", str(instructions_jsonl),
                                      "--set", "task.name=causal-lm"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    shown = result.output.split("nothing else:")[1].split("no errors")[0].replace("\n", " ").strip()
    # the prompt outside the marks; the answer and the token that ends the turn inside them
    word = re.fullmatch(r"<\|user\|> what is the opposite of (\w+) \? <\|assistant\|>"
                        r"\[\[the opposite of (\w+) is (\w+) \. <\|end\|>\]\]", shown)
    both_ways = {**OPPOSITES, **{b: a for a, b in OPPOSITES.items()}}
    assert word and word[1] == word[2] and both_ways[word[2]] == word[3], shown


# --- one render per chat ----------------------------------------------------------------------------------------------

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PIECES = ["hot", "cold", "big", "small", "opposite", "of", "is", "the", "?", ".", ",", "42", "3.5", "café", "naïve",
          "日本", "🙂", "don't", "x-y", "<b>"]


def random_chats(n: int, seed: int = 0) -> list[list[dict]]:
    """Multi-turn chats of random words, punctuation and non-ASCII text, some with a system message, two user
    messages in a row, spaces or newlines at a content's edges, or a last question left unanswered."""
    rng = random.Random(seed)

    def text() -> str:
        words = " ".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
        return rng.choice(["", "", "", " ", "\n"]) + words + rng.choice(["", "", "", " ", "\n"])

    out = []
    for _ in range(n):
        chat = [{"role": "system", "content": text()}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 4)):
            chat += [{"role": "user", "content": text()}] * (2 if rng.random() < 0.1 else 1)
            chat.append({"role": "assistant", "content": text()})
        if rng.random() < 0.3:
            chat.append({"role": "user", "content": text()})  # ends on a question: the per-turn method leaves it out
        out.append(chat)
    return out


def byte_level_tokenizer(template: str = CHATML, trim_offsets: bool = False):
    """A byte-level BPE tokenizer (the Llama 3 / Qwen kind) trained here, with ChatML's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    core.train_from_iterator([m["content"] for chat in random_chats(200, seed=1) for m in chat], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = template
    return tokenizer


def chatml(tokenizer):
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    return tokenizer


def assert_same_encoding(a: Encoded, b: Encoded) -> None:
    assert len(a) == len(b)
    for x, y in zip(a.input_ids, b.input_ids, strict=True):
        assert x.dtype == y.dtype and x.tolist() == y.tolist()
    for x, y in zip(a.labels, b.labels, strict=True):
        assert x.dtype == y.dtype and x.tolist() == y.tolist()


@pytest.fixture
def per_turn_calls(monkeypatch) -> list:
    """The chats that went through the per-turn method."""
    calls, per_turn = [], causal_lm._per_turn
    monkeypatch.setattr(causal_lm, "_per_turn", lambda tokenizer, chat: calls.append(chat) or per_turn(tokenizer, chat))
    return calls


@pytest.mark.parametrize("setup", ["tiny", "tiny+chatml", "byte-level+chatml", "tiny+trim"])
def test_one_render_per_chat_equals_the_per_turn_encoding(tiny_decoder, per_turn_calls, setup):
    if setup.startswith("byte-level"):
        tokenizer = byte_level_tokenizer()
    else:
        tokenizer = load_tokenizer(tiny_decoder)
        if setup == "tiny+chatml":
            chatml(tokenizer)
        elif setup == "tiny+trim":  # a template that alters contents: those chats go one turn at a time
            tokenizer.chat_template = tiny.CHAT_TEMPLATE.replace("m['content'] }}", "m['content'] | trim }}")
    data = random_chats(300)
    for max_length in (24, 512):  # cut or whole
        per_turn_calls.clear()
        reference = encode_chats(data, tokenizer, max_length, per_turn=True)
        assert len(per_turn_calls) == len(data)
        per_turn_calls.clear()
        assert_same_encoding(encode_chats(data, tokenizer, max_length), reference)
        if setup == "tiny+trim":
            assert 0 < len(per_turn_calls) < len(data)
        else:
            assert per_turn_calls == []  # every chat rendered once
    learned = [label for row in reference.labels for label in row.tolist() if label != IGNORE]
    assert tokenizer.eos_token_id in learned or tokenizer.convert_tokens_to_ids("<|im_end|>") in learned


def test_templates_that_rewrite_earlier_turns_go_one_turn_at_a_time(tiny_decoder, per_turn_calls):
    one, two = TWO_TURNS[:2], TWO_TURNS
    # A think block before the last answer only (as Qwen3's template writes): fine for one turn; in two, the first
    # answer loses it once the second is written, so the per-turn method refuses, as before.
    tokenizer = chatml(load_tokenizer(tiny_decoder))
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.chat_template = CHATML.replace(
        "<|im_start|>{{ m['role'] }}\n", "<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}")
    assert_same_encoding(encode_chats([one], tokenizer, 64), encode_chats([one], tokenizer, 64, per_turn=True))
    assert per_turn_calls == [one]  # only the reference: the template's layout held for one turn
    roles = tuple(m["role"] for m in two)
    assert causal_lm._layout(tokenizer, roles[:2]) is not None and causal_lm._layout(tokenizer, roles) is None
    assert learned_spans(tokenizer, one) == [["<think>", "</think>", "cold", "<|im_end|>"]]
    with pytest.raises(ftune.DataError, match="does not extend a conversation by appending"):
        encode_chats([two], tokenizer, 64)
    assert per_turn_calls[-1] == two

    # Spaces after the last message only: the text of a prefix is not the start of the whole chat's, but the
    # tokenizer drops spaces, so the per-turn method encodes it
    tokenizer = load_tokenizer(tiny_decoder)
    tokenizer.chat_template = tiny.CHAT_TEMPLATE.replace(" {% endfor %}",
                                                         " {% if loop.last %}  {% endif %}{% endfor %}")
    assert causal_lm._layout(tokenizer, roles) is None
    per_turn_calls.clear()
    assert_same_encoding(encode_chats([two], tokenizer, 64), encode_chats([two], tokenizer, 64, per_turn=True))
    assert per_turn_calls == [two, two]
    assert learned_spans(tokenizer, two) == [["cold", "<|end|>"], ["small", "<|end|>"]]


@pytest.mark.parametrize("trim_offsets", [False, True])
def test_a_token_across_the_start_of_an_answer_is_refused_as_before(per_turn_calls, trim_offsets):
    """The tiny template's prompt ends in a space that a byte-level tokenizer joins to the answer (' small'): the
    prompt's tokens are not the start of the chat's. A post-processor that trims the spaces off offsets would hide
    that, so such a tokenizer goes one turn at a time."""
    tokenizer = byte_level_tokenizer(tiny.CHAT_TEMPLATE, trim_offsets)
    with pytest.raises(ftune.DataError, match="does not extend a conversation by appending"):
        encode_chats([TWO_TURNS], tokenizer, 64)
    assert per_turn_calls == [TWO_TURNS]


def test_a_second_encode_of_the_same_chats_reads_the_token_cache(tiny_decoder, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import pandas as pd

    monkeypatch.setenv("FTUNE_CACHE", str(tmp_path))
    tokenizer, task = load_tokenizer(tiny_decoder), causal_task()
    data = random_chats(60)
    splits = SimpleNamespace(train=pd.DataFrame({"messages": data[:40]}), validation=pd.DataFrame(
        {"messages": data[40:50]}), test=pd.DataFrame({"messages": data[50:]}))
    encoded, rendered = [], causal_lm._rendered_once
    monkeypatch.setattr(causal_lm, "_rendered_once",
                        lambda chats, tok: encoded.append(len(chats)) or rendered(chats, tok))
    first = task.encode_splits(splits, tokenizer)
    assert encoded == [40, 10, 10] and len(list((tmp_path / "tokens").glob("*.npz"))) == 3
    again = task.encode_splits(splits, tokenizer)
    assert encoded == [40, 10, 10]  # nothing encoded: all three splits came from the cache
    for name in ("train", "validation", "test"):
        assert_same_encoding(again[name], first[name])
        assert_same_encoding(again[name], encode_chats(getattr(splits, name)["messages"].tolist(), tokenizer,
                                                       task.config.data.max_length, per_turn=True))
    # Whatever changes the encoding misses the cache: another length, another word, another template
    encode_chats(data[:40], tokenizer, 32, use_cache=True)
    encode_chats([chat if i else chat[:-1] + [dict(chat[-1], content="x")] for i, chat in enumerate(data[:40])],
                 tokenizer, task.config.data.max_length, use_cache=True)
    chatml(tokenizer)
    encode_chats(data[:40], tokenizer, task.config.data.max_length, use_cache=True)
    assert encoded == [40, 10, 10, 40, 40, 40] and len(list((tmp_path / "tokens").glob("*.npz"))) == 6
