"""Memory: the peak estimate, the refusal with the knobs that help, batch_size auto, and out-of-memory mid-run."""

import json

import pytest
import torch

import ftune
import ftune.tasks.base
import ftune.train_setup
from ftune.errors import ConfigError, RunError
from ftune.memory import AUTO_BUDGET, auto_batch_size, estimate
from ftune.models import load_classifier


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_classifier(tiny_model, ["neg", "pos"], False)


def test_the_estimate_grows_with_the_batch_and_shrinks_with_checkpointing(model):
    small, big = estimate(model, 8, 64, False, False), estimate(model, 32, 64, False, False)
    params = sum(p.numel() for p in model.parameters())
    assert small.weights == big.weights == 4 * params and small.optimizer == 8 * params
    assert big.activations > 3 * small.activations
    assert estimate(model, 32, 64, False, True).activations < big.activations
    assert estimate(model, 32, 64, True, False).activations < big.activations  # half precision
    assert estimate(model, 8, 64, False, False, state_bytes=2).optimizer == 2 * params  # 8-bit AdamW's moments


def test_auto_picks_the_largest_power_of_two_that_fits(model):
    free = estimate(model, 16, 64, False, False).total / AUTO_BUDGET + 1  # room for 16, not for 32
    assert auto_batch_size(model, 64, False, False, int(free), "cpu") == 16
    with pytest.raises(ConfigError, match="even one text of 64 tokens does not fit"):
        auto_batch_size(model, 64, False, False, 1000, "cpu")


def test_a_run_that_would_not_fit_stops_with_the_knobs_and_leaves_nothing(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(ftune.train_setup, "free_bytes", lambda device: 10_000_000)
    with pytest.raises(ConfigError, match=r"this run needs about .* at its peak, but 0.01 GB are free on cpu; try "
                                          r"a smaller train.batch_size .*gradient_checkpointing=true.*method.name=lora"):
        ftune.train(tiny_config(), quiet=True)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing kept: the same command can run again


def test_batch_size_auto_chooses_and_resume_keeps_the_choice(tiny_config):
    run = ftune.train(tiny_config(**{"train.batch_size": "auto", "train.epochs": 1}), quiet=True)
    state = json.loads(sorted((run.path / "checkpoints").glob("step-*"))[-1].joinpath("state.json").read_text())
    assert state["batch_size"] == 256  # the cap: the tiny model fits many times over
    assert run.metrics["train"]["steps"] == 2  # 288 training texts in batches of 256


def test_out_of_memory_mid_run_names_the_step_and_the_knobs(tiny_config, monkeypatch):
    calls = {"n": 0}
    real = torch.nn.functional.cross_entropy

    def run_out_at_the_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(ftune.tasks.base.F, "cross_entropy", run_out_at_the_third_batch)  # the tasks' loss
    with pytest.raises(RunError, match=r"out of memory at step \d+ \(CUDA out of memory. Tried to allocate 2.00 GiB\); "
                                       r"try a smaller train.batch_size.*--resume continues"):
        ftune.train(tiny_config(**{"train.log_steps": 1}), quiet=True)


def test_a_decoders_estimate_counts_one_chunk_of_logits_and_the_weights_as_held():
    """A Qwen2.5-0.5B-shaped decoder, built on the meta device (shapes only, no memory)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from ftune.memory import DECODER_KNOBS, LOSS_CHUNK, knobs
    from ftune.methods import frozen_to

    config = Qwen2Config(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
    with torch.device("meta"):
        decoder = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in decoder.parameters())
    full = estimate(decoder, 16, 1024, True, False)
    assert full.weights == 4 * params and 0.4e9 < params < 0.6e9
    logits = 2 * LOSS_CHUNK * 151_936 * 4
    assert logits < 1.3e9 < 16 * 1024 * 151_936 * 4  # one chunk, not the batch's 10 GB of fp32 logits
    assert full.activations > logits
    decoder.requires_grad_(False)
    decoder.get_output_embeddings().requires_grad_(False)
    frozen = estimate(frozen_to(decoder, torch.bfloat16), 16, 1024, True, False)
    assert frozen.weights == 2 * params and frozen.optimizer == 0  # a bf16 frozen base: half the bytes
    # at 2,048 tokens the eager attention maps are three quarters of it; SDPA's fused kernels on a GPU keep one mask instead
    eager, fused = estimate(decoder, 4, 2048, True, False), estimate(decoder, 4, 2048, True, False, fused_attention=True)
    maps = 24 * 4 * 14 * 2048 * 2048 * 5  # layers x batch x heads x seq^2 x (2 maps of 2 bytes + a dropout mask)
    assert eager.activations - fused.activations == maps - 4 * 2048 * 2048 and maps > 0.75 * eager.activations
    assert knobs("causal-lm") == DECODER_KNOBS and "load_in_4bit" in DECODER_KNOBS and knobs("classification") != \
        DECODER_KNOBS
