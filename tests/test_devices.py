"""Where models run: --device and --precision for predict/eval/serve, the GPU-only training settings, and their
CPU twins (what this machine can check of each GPU path)."""

import json
import math

import numpy as np
import pytest
import torch

import ftune
from ftune.data.tokenize import Encoded, collate
from ftune.errors import ConfigError
from ftune.inference import resolve_device, resolve_precision, to_device
from ftune.predictors import Predictor
from ftune.predictors.onnx import onnx_providers
from helpers import ftune_cli

pytestmark = pytest.mark.e2e  # trains whole runs: make test-quick leaves this module out

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def run(tiny_model, reviews_csv, tmp_path_factory):
    from ftune.config import load_config

    cfg = load_config(overrides={
        "model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
        "data.label_column": "stars", "data.max_length": 32, "train.epochs": 3, "train.batch_size": 16,
        "train.learning_rate": 3e-3, "train.warmup_ratio": 0.0, "tracking.backend": "none",
        "output_dir": str(tmp_path_factory.mktemp("devices") / "run")})
    run = ftune.train(cfg, quiet=True)
    assert run.metrics["test"]["finetuned"]["accuracy"] > 0.9  # a model that learned: its labels mean something
    return run


def test_auto_takes_the_gpu_when_there_is_one_and_the_cpu_otherwise():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ConfigError, match="--device tpu: use one of auto, cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="--precision fp8: use one of fp32, bf16, fp16"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="--precision fp16 needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.skipif(CUDA, reason="checks the message of a machine without a GPU")
def test_cuda_asked_for_on_a_cpu_machine_is_one_line_and_exit_2_before_loading(run, monkeypatch, capsys):
    code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(run.path), "--text", "dull", "--device", "cuda")
    assert code == 2 and err.strip().splitlines()[-1].endswith(
        "--device cuda: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
    code, _, err = ftune_cli(monkeypatch, capsys, "predict", str(run.path), "--text", "dull", "--precision", "fp16")
    assert code == 2 and "--precision fp16 needs a CUDA GPU" in err


def test_the_predictor_runs_where_asked_and_bf16_keeps_the_labels_of_the_tiny_run(run, reviews_csv):
    texts = [t for t in __import__("pandas").read_csv(reviews_csv)["review"][:64]]
    fp32 = Predictor(run.path, device="cpu")
    bf16 = Predictor(run.path, device="cpu", precision="bf16")
    assert next(fp32.model.parameters()).device.type == "cpu"
    assert fp32.describe()["device"] == "cpu" and bf16.describe()["precision"] == "bf16"
    a, b = fp32.predict(texts), bf16.predict(texts)
    agree = np.mean([x["label"] == y["label"] for x, y in zip(a, b)])
    assert agree >= 0.95  # bf16 keeps 8 bits of mantissa: the labels of a confident model hardly move
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b)) < 0.05
    if CUDA:  # the GPU twin of the same check
        gpu = Predictor(run.path, device="cuda")
        assert [x["label"] for x in gpu.predict(texts)] == [x["label"] for x in a]


def test_eval_and_serve_take_the_device_flags(run, reviews_csv, monkeypatch, capsys):
    code, out, err = ftune_cli(monkeypatch, capsys, "eval", str(run.path), "--data", str(reviews_csv), "--device", "cpu",
                               "--precision", "bf16", "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] > 0.8
    from ftune.serve import create_app
    from ftune.predictors import load_predictor
    from fastapi.testclient import TestClient

    with TestClient(create_app(load_predictor(run.path, device="cpu"))) as client:
        assert client.get("/v1/model").json()["device"] == "cpu"


def test_onnx_providers_follow_the_device_flag():
    cpu_only = ["CPUExecutionProvider"]
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("auto", cpu_only) == cpu_only and onnx_providers("auto", both) == both
    assert onnx_providers("cpu", both) == cpu_only and onnx_providers("cuda", both) == both
    with pytest.raises(ConfigError, match="this onnxruntime has no CUDA provider .* install onnxruntime-gpu"):
        onnx_providers("cuda", cpu_only)


def test_batches_are_padded_to_a_multiple_without_passing_the_cap():
    data = Encoded([np.arange(5), np.arange(11)], None, np.array([0, 1]))
    assert collate(data, [0, 1], 0)["input_ids"].shape == (2, 11)
    assert collate(data, [0, 1], 0, multiple=8)["input_ids"].shape == (2, 16)
    assert collate(data, [0, 1], 0, multiple=8, cap=12)["input_ids"].shape == (2, 12)
    assert collate(data, [0], 0, multiple=16, cap=32)["attention_mask"].sum() == 5  # the added width is masked
    moved = to_device(collate(data, [0, 1], 0), "cpu")
    assert moved["input_ids"].device.type == "cpu"


def test_padding_to_a_multiple_trains_the_same_model(tiny_config, tmp_path):
    """The GPU default (pad_to_multiple_of 16) on the CPU: padding is masked, so the run is the same run."""
    plain = ftune.train(tiny_config(**{"train.epochs": 1, "train.baselines": False, "train.pad_to_multiple_of": 1,
                                       "output_dir": str(tmp_path / "plain")}), quiet=True)
    padded = ftune.train(tiny_config(**{"train.epochs": 1, "train.baselines": False, "train.pad_to_multiple_of": 16,
                                        "output_dir": str(tmp_path / "padded")}), quiet=True)
    a, b = plain.metrics["test"]["finetuned"]["loss"], padded.metrics["test"]["finetuned"]["loss"]
    assert a == pytest.approx(b, abs=1e-4)


def test_adamw_is_fused_where_torch_has_the_kernel(tiny_config):
    from ftune.optim import fused_adamw

    cfg = tiny_config()
    assert fused_adamw(cfg, torch.device("cpu")) is True  # torch >= 2.4 has a fused CPU AdamW
    sharded = cfg.model_copy(update={"distributed": cfg.distributed.model_copy(update={"strategy": "fsdp"})})
    assert fused_adamw(sharded, torch.device("cuda")) is None


def test_a_token_budget_run_learns_and_its_schedule_ends_at_its_last_step(tiny_config, tmp_path, capsys):
    import re

    run = ftune.train(tiny_config(**{"train.max_tokens": 160, "train.batch_size": 64, "train.baselines": False,
                                     "output_dir": str(tmp_path / "budget")}))
    train = run.metrics["train"]
    planned = int(re.search(r"\| (\d+) steps on cpu", capsys.readouterr().err).group(1))
    assert train["steps"] == planned and train["samples_seen"] == 3 * 288  # 3 epochs of the 288 training reviews
    assert train["steps"] > 3 * 288 / 64  # batches of short reviews within 160 tokens: fewer than 64 texts each
    assert run.metrics["test"]["finetuned"]["accuracy"] > 0.9


def test_a_bf16_frozen_base_under_lora_trains_saves_float32_and_merges(tiny_config, tmp_path, monkeypatch):
    """The GPU's LoRA setting (frozen base in bf16 under bf16 autocast), forced on the CPU."""
    import ftune.train_setup as train_setup
    from ftune.optim import frozen_dtype

    cfg = tiny_config(**{"method.name": "lora", "method.r": 4, "method.merge": True, "train.precision": "bf16",
                         "train.baselines": False, "output_dir": str(tmp_path / "lora-bf16")})
    assert frozen_dtype(cfg, torch.device("cpu"), "bf16") is None  # on a CPU the base stays float32
    assert frozen_dtype(cfg, torch.device("cuda"), "bf16") is torch.bfloat16
    assert frozen_dtype(cfg, torch.device("cuda"), "fp16") is None
    seen = {}
    real = train_setup.frozen_to

    def spy(model, dtype):
        real(model, dtype)
        seen.update({n: p.dtype for n, p in model.named_parameters()}, trainable={n for n, p in
                                                                                  model.named_parameters() if p.requires_grad})
        return model

    monkeypatch.setattr(train_setup, "frozen_dtype", lambda *a: torch.bfloat16)
    monkeypatch.setattr(train_setup, "frozen_to", spy)
    run = ftune.train(cfg, quiet=True)
    trainable = seen.pop("trainable")
    assert trainable and all(seen[n] == torch.float32 for n in trainable)
    assert {seen[n] for n in seen if n not in trainable} == {torch.bfloat16}
    assert math.isfinite(run.metrics["test"]["finetuned"]["loss"])  # (LoRA on the 32-wide random model stays at chance)
    from safetensors.torch import load_file

    adapter = load_file(str(run.path / "adapter" / "adapter_model.safetensors"))
    merged = load_file(str(run.path / "model" / "model.safetensors"))
    assert {t.dtype for t in adapter.values()} == {torch.float32} == {t.dtype for t in merged.values()}


def test_one_process_trains_in_one_precision_then_another(tiny_config, tmp_path):
    """Accelerate keeps one state per process and refused a second precision: each run now starts its own."""
    for precision in ("fp32", "bf16"):
        run = ftune.train(tiny_config(**{"train.epochs": 1, "train.baselines": False, "train.precision": precision,
                                         "output_dir": str(tmp_path / f"{precision}-{len(list(tmp_path.iterdir()))}")}),
                          quiet=True)
        assert run.manifest["status"] == "complete"
