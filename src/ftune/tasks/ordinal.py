"""Ordinal classification: ordered classes (1-5 stars, severity levels), where predicting 4 for a 5 is a smaller
mistake than predicting 1. The model and its head are classification's; what changes is the loss and the scores.

The loss is soft-label cross-entropy (SORD, Diaz & Marathe 2019): the target puts most of its weight on the true
class and the rest on its neighbours, falling off with the squared distance, so the model learns the order. The
headline score is the mean absolute error in classes (MAE), with accuracy and the quadratic weighted kappa beside it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ftune.data.builtin import check_builtin_task
from ftune.errors import ConfigError
from ftune.lazy import lazy
from ftune.tasks.baselines import tuned_classifier
from ftune.tasks.classification import Classification, ClassificationOptions
from ftune.tasks.scoring import bootstrap_interval, classification_metrics, logits_metrics

torch = lazy("torch")
sk_metrics = lazy("sklearn.metrics")


class OrdinalOptions(ClassificationOptions):
    name: Literal["ordinal"] = "ordinal"
    order: list[str] | None = Field(None, description="the labels from lowest to highest; unset: numbers in numeric "
                                                      "order, else alphabetical (set it for words: [bad, ok, good])")


class Ordinal(Classification):
    name = "ordinal"
    description = "ordered classes (star ratings, severity): a class per text, scored by how far off it is"
    Options = OrdinalOptions
    weighs_classes = False  # the soft targets already spread weight over neighbouring classes
    distills = distills_unlabeled = False
    ships_baseline = False  # its baseline is chosen by MAE: not the classifier the export path refits
    metrics = ("mae", "accuracy", "qwk", "macro_f1", "loss")
    lower_is_better = frozenset({"mae", "loss"})
    note = ("MAE: the mean distance in classes between the predicted and the true class, with its 95% bootstrap "
            "interval; QWK: the quadratic weighted kappa (1: perfect order, 0: chance).")
    titles = {"mae": "MAE (classes)", "qwk": "QWK", "tfidf": "TF-IDF + linear model (tuned on validation)"}

    def load_splits(self, seed: int):
        check_builtin_task(self.config.data.train, self.name)
        splits = super().load_splits(seed)
        order = self.options.order
        if order is None:
            return splits
        if sorted(order) != sorted(splits.labels):
            raise ConfigError(f"task.order lists {', '.join(order)} but the data's labels are "
                              f"{', '.join(splits.labels)}; list each label once, lowest first")
        new_id = np.asarray([order.index(name) for name in splits.labels])  # old id -> its place in the order
        for frame in (splits.train, splits.validation, splits.test):
            frame["label"] = new_id[frame["label"].to_numpy()]
        splits.labels = list(order)
        return splits

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        classes = torch.arange(logits.shape[-1], device=logits.device, dtype=torch.float32)
        distance = (classes[None, :] - batch["labels"].float()[:, None]) ** 2
        target = torch.softmax(-distance, dim=-1)  # SORD: the true class most, its neighbours less
        total = -(target * torch.log_softmax(logits.float(), dim=-1)).sum()
        return total, torch.tensor(float(len(logits)), device=logits.device)

    def score(self, rows: list, data, labels: list[str], interval_seed: int | None = None) -> tuple[dict, np.ndarray]:
        logits = data.per_document(np.stack(rows), self.options.long_text.pool)
        truth = data.document_labels
        metrics = {**logits_metrics(logits, truth, labels), **ordinal_metrics(truth, logits.argmax(-1))}
        if interval_seed is not None:
            errors = np.abs(logits.argmax(-1) - truth).astype(np.float64)
            metrics["mae_ci95"] = bootstrap_interval(lambda draws: errors[draws].mean(axis=1), len(errors),
                                                     seed=interval_seed)
        return metrics, logits

    def baselines(self, splits, seed: int) -> dict:
        """TF-IDF + the linear model with the best validation MAE (tasks.baselines), with the interval the fine-tuned
        model's MAE has."""
        choice = tuned_classifier(splits, lambda truth, predicted: np.abs(predicted - truth).mean(),
                                  lower_is_better=True)
        truth = splits.test["label"].to_numpy()
        errors = np.abs(choice.test - truth).astype(np.float64)
        interval = bootstrap_interval(lambda draws: errors[draws].mean(axis=1), len(errors), seed=seed)
        return {"tfidf": {**classification_metrics(truth, choice.test, splits.labels),
                          **ordinal_metrics(truth, choice.test), "mae_ci95": interval, **choice.fields()}}


def ordinal_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """The mean distance in classes and the quadratic weighted kappa (Cohen's, as scikit-learn computes it)."""
    kappa = sk_metrics.cohen_kappa_score(truth, predicted, weights="quadratic")
    return {"mae": float(np.abs(predicted - truth).mean()), "qwk": 0.0 if np.isnan(kappa) else float(kappa)}
