"""Contrastive fine-tuning for few labeled texts, in SetFit's style: every weight trains, and beside the task's loss
each batch's pairs of texts are pulled together (same label) or pushed apart (different labels).

SetFit (Tunstall et al. 2022) trains a sentence encoder on pairs drawn from the labeled texts, with a cosine-similarity
loss, then fits a classifier on the embeddings. Here the pairs are the batch's own: a batch of 32 texts holds 496
pairs from one forward pass, where SetFit encodes both texts of every pair. The embedding is what the model's
classification layer reads (BERT's pooled output, RoBERTa's dense CLS layer), so the head learns on the space the
pairs shape, in the same steps, and the run directory stays an ordinary transformers classifier: no second model, no
separate head file, and export, serving and --resume as for full fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field

from ftune.errors import ConfigError
from ftune.lazy import lazy
from ftune.methods.base import Method, MethodOptions

torch = lazy("torch")


class ContrastiveOptions(MethodOptions):
    name: Literal["contrastive"] = Field("contrastive", description="few labeled texts: every weight trains, and "
                                                                    "each batch's pairs of texts are pulled together "
                                                                    "or apart by label (SetFit's pairs)")
    weight: float = Field(1.0, ge=0, description="the pairs' loss beside the task's, per text (0: full fine-tuning)")


class Contrastive(Method):
    name = "contrastive"
    Options = ContrastiveOptions
    learning_rate = 5e-5
    learning_rate_source = "full fine-tuning's; measured on mr few-shot splits: bench/fewshot.py"

    def __init__(self, options: MethodOptions):
        super().__init__(options)
        self._features: dict = {}  # the classification layer's input from the last forward pass

    def check(self, task, config) -> None:
        if not task.one_label_per_text:
            raise ValueError(f"method contrastive does not apply to task {task.name}: its pairs are texts of one "
                             f"label or of two; use method full")

    def wrap(self, model, task_type: str):
        head = _classification_layer(model)
        head.register_forward_pre_hook(lambda _, args: self._features.__setitem__("x", args[0]))
        return model

    def training_loss(self, task_loss: Callable) -> Callable:
        """The task's loss plus the pairs' (weighted per text: the task's loss is a sum over the batch's texts)."""
        def loss(out, batch):
            total, count = task_loss(out, batch)
            features = self._features.pop("x", None)
            if features is None or not torch.is_grad_enabled() or not self.options.weight:
                return total, count
            return total + self.options.weight * pair_loss(features, batch["labels"]) * count, count
        return loss


def pair_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SetFit's cosine-similarity loss over every pair of the batch: (cos - 1)^2 for texts of one label, cos^2 for
    texts of two; the two kinds weigh half each, as SetFit balances them by oversampling the rarer kind (a batch of one
    label has one kind only). Texts without a label (IGNORE: a distillation's unlabeled texts) take no part. Masks,
    not boolean indexing, so nothing here waits for the device."""
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    cosine = x @ x.T
    known = labels >= 0
    pairs = known.unsqueeze(0) & known.unsqueeze(1) & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)) & pairs
    kinds = (same, pairs & ~same)
    error = (cosine - same.float()) ** 2
    means = sum((error * kind).sum() / kind.sum().clamp(min=1) for kind in kinds)
    present = sum(kind.any().float() for kind in kinds)
    return means / present.clamp(min=1)  # no pair (one text, or none labeled): 0


def _classification_layer(model):
    """The last linear layer that answers one score per label: its input is the model's text embedding."""
    labels = model.config.num_labels
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == labels]
    if not layers:
        raise ConfigError(f"method contrastive cannot find the classification layer of {type(model).__name__} "
                          f"(a linear layer with {labels} outputs); use method full")
    return layers[-1]
