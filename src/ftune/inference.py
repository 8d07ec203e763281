"""Batched, length-sorted forward passes shared by evaluation, prediction and training."""

from __future__ import annotations

import numpy as np
import torch

from ftune.data.batching import eval_batches
from ftune.data.tokenize import Encoded, collate


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, data: Encoded, batch_size: int, pad_id: int,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Logits for every example, in input order; batches are sorted by length to skip padding."""
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    for indices in eval_batches(data.lengths, batch_size):
        batch = collate(data, indices, pad_id)
        batch.pop("labels", None)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
        if out is None:
            out = np.empty((len(data), logits.shape[-1]), dtype=np.float32)
        out[indices] = logits
    model.train(was_training)
    return out if out is not None else np.empty((0, 0), dtype=np.float32)
