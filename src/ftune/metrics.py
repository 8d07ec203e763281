"""Classification metrics: pure functions of labels and predictions."""

from __future__ import annotations

import numpy as np

from ftune.lazy import lazy

sk_metrics = lazy("sklearn.metrics")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    probs = softmax(logits.astype(np.float64))
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def classification_metrics(labels: np.ndarray, preds: np.ndarray, names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    ids = list(range(len(names)))
    p, r, f, s = sk_metrics.precision_recall_fscore_support(labels, preds, labels=ids, zero_division=0)
    return {
        "accuracy": float(sk_metrics.accuracy_score(labels, preds)),
        "macro_f1": float(sk_metrics.f1_score(labels, preds, labels=ids, average="macro", zero_division=0)),
        "per_class": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, n in enumerate(names)},
        "confusion": sk_metrics.confusion_matrix(labels, preds, labels=ids).tolist(),
        "n": int(len(labels)),
    }


def logits_metrics(logits: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    """Metrics plus the mean cross-entropy loss, from raw logits."""
    return {"loss": cross_entropy(logits, labels), **classification_metrics(labels, logits.argmax(-1), names)}


def metrics_with_interval(logits: np.ndarray, labels: np.ndarray, names: list[str], seed: int = 0) -> dict:
    """`logits_metrics` plus the 95% bootstrap interval of the accuracy: how a final score is reported."""
    metrics = logits_metrics(logits, labels, names)
    hits = (logits.argmax(-1) == labels).astype(np.float64)
    metrics["accuracy_ci95"] = bootstrap_accuracy(hits, seed=seed)
    return metrics


def bootstrap_accuracy(correct: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval for accuracy, from a 0/1 array of per-example hits."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(correct), size=(resamples, len(correct)))
    means = correct[draws].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
