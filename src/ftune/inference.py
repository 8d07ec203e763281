"""Batched, length-sorted forward passes shared by evaluation, prediction (PyTorch and ONNX) and training."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ftune.data.batching import eval_batches
from ftune.data.tokenize import Encoded, collate

Forward = Callable[[dict[str, torch.Tensor]], np.ndarray]


def batched_logits(forward: Forward, data: Encoded, batch_size: int, pad_id: int) -> np.ndarray:
    """Logits for every example, in input order; batches are sorted by length to skip padding."""
    out: np.ndarray | None = None
    for indices in eval_batches(data.lengths, batch_size):
        batch = collate(data, indices, pad_id)
        batch.pop("labels", None)
        logits = forward(batch)
        if out is None:
            out = np.empty((len(data), logits.shape[-1]), dtype=np.float32)
        out[indices] = logits
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, data: Encoded, batch_size: int, pad_id: int,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """`batched_logits` through a PyTorch model, left in the train/eval mode it came in."""
    was_training = model.training
    model.eval()
    try:
        return batched_logits(lambda batch: model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy(),
                              data, batch_size, pad_id)
    finally:
        model.train(was_training)
