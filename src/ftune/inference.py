"""Batched, length-sorted forward passes shared by evaluation, prediction (PyTorch and ONNX) and training."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ftune.data.batching import eval_batches
from ftune.data.tokenize import Encoded, collate

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


@torch.inference_mode()
def predict_outputs(model: torch.nn.Module, data: Encoded, batch_size: int, pad_id: int,
                    device: torch.device | str = "cpu", per_row: PerRow = logit_rows,
                    inputs: Callable[[dict], dict] = without_labels) -> list:
    """`batched_outputs` through a PyTorch model (given `inputs(batch)`), left in the train/eval mode it came in."""
    was_training = model.training
    model.eval()

    def forward(batch: dict[str, torch.Tensor]) -> list:
        batch = {k: v.to(device) for k, v in batch.items()}
        return per_row(model(**inputs(batch)).logits, batch)

    try:
        return batched_outputs(forward, data, batch_size, pad_id)
    finally:
        model.train(was_training)

