"""Batched, length-sorted forward passes shared by evaluation, prediction (PyTorch and ONNX) and training, and
where they run: the device and the precision of inference, and how a batch gets there."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch

from ftune.data.batching import eval_batches
from ftune.data.tokenize import Encoded, collate
from ftune.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

Forward = Callable[[dict[str, torch.Tensor]], np.ndarray]
# What a task keeps of a batch's logits: one result per row (tags per token, a loss sum, ...); the batch has labels.
PerRow = Callable[[torch.Tensor, dict[str, torch.Tensor]], list]


def batched_outputs(forward: Callable[[dict[str, torch.Tensor]], list], data: Encoded, batch_size: int,
                    pad_id: int) -> list:
    """forward's result for every example, in input order; batches are sorted by length to skip padding."""
    out: list = [None] * len(data)
    for indices in eval_batches(data.lengths, batch_size):
        for i, row in zip(indices, forward(collate(data, indices, pad_id))):
            out[i] = row
    return out


def batched_logits(forward: Forward, data: Encoded, batch_size: int, pad_id: int) -> np.ndarray:
    """Logits for every example, in input order (forward gets batches without labels)."""
    rows = batched_outputs(lambda batch: forward({k: v for k, v in batch.items() if k != "labels"}), data, batch_size,
                           pad_id)
    return np.stack(rows).astype(np.float32, copy=False) if rows else np.empty((0, 0), dtype=np.float32)


def logit_rows(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> np.ndarray:
    """PerRow for classification: the logits themselves."""
    return logits.float().cpu().numpy()


def without_labels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def logits_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A model's forward pass as a task's `forward` has it by default: the logits, the labels left out."""
    return model(**without_labels(batch)).logits


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """A host batch on `device`. To a GPU through pinned memory without waiting: the copy overlaps the work
    already queued, and the tensors are only read by kernels queued after it on the same stream."""
    if torch.device(device).type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def resolve_device(name: str) -> torch.device:
    """--device: auto takes the GPU when torch sees one; cuda without one is a one-line error."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"--device {name}: use one of {', '.join(DEVICES)} (or cuda:N)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
    return torch.device(name)


def use_gpu_well(device: torch.device) -> None:
    """Process-wide settings for a CUDA device: without cuDNN's attention, which builds a new plan for every new
    batch shape (measured on an H100 with MiniLM: 106 ms a step at a new length each step against 22 ms without
    it; PyTorch then takes its flash or memory-efficient kernels)."""
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """--precision: the autocast type of inference (None: fp32). fp16 needs a GPU; bf16 also runs on CPUs, slowly
    on those without bf16 instructions."""
    if name not in PRECISIONS:
        raise ConfigError(f"--precision {name}: use one of {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU; use fp32 or bf16 on a CPU")
    return PRECISIONS[name]


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """Mixed precision for inference when asked for (weights stay fp32; matmuls run in `dtype`)."""
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else nullcontext()


@torch.inference_mode()
def predict_outputs(model: torch.nn.Module, data: Encoded, batch_size: int, pad_id: int,
                    device: torch.device | str = "cpu", per_row: PerRow = logit_rows,
                    forward: Callable[[torch.nn.Module, dict], torch.Tensor] = logits_of,
                    dtype: torch.dtype | None = None) -> list:
    """`batched_outputs` through a PyTorch model (what `forward(model, batch)` returns, by default its logits),
    left in the train/eval mode it came in."""
    was_training = model.training
    model.eval()

    def run(batch: dict[str, torch.Tensor]) -> list:
        batch = to_device(batch, device)
        with autocast(device, dtype):
            return per_row(forward(model, batch), batch)

    try:
        return batched_outputs(run, data, batch_size, pad_id)
    finally:
        model.train(was_training)

