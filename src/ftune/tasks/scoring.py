"""Scores the tasks share: pure functions of the truth and the predictions (a class, a label set or a number per
example), and the one bootstrap interval every final headline score is reported with."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ftune.lazy import lazy

sk_metrics = lazy("sklearn.metrics")
stats = lazy("scipy.stats")

RESAMPLES = 1000  # bootstrap resamples of the test split


# --- probabilities and losses -----------------------------------------------------------------------------------

def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))  # no overflow for large |logit|


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    probs = softmax(logits.astype(np.float64))
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def bce(logits: np.ndarray, truth: np.ndarray) -> float:
    """Mean binary cross-entropy over every (text, label) cell, from logits (the stable form)."""
    x, y = np.asarray(logits, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    return float((np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))).mean())


# --- the bootstrap interval -------------------------------------------------------------------------------------

def bootstrap_interval(statistic: Callable[[np.ndarray], np.ndarray], n: int, resamples: int = RESAMPLES,
                       seed: int = 0, chunk: int | None = None) -> tuple[float, float]:
    """95% percentile bootstrap interval over `n` examples: `statistic` maps an (r, n) array of resampled example
    indices to the r resamples' scores. Indices are drawn `chunk` resamples at a time (None: all at once), which
    bounds memory where the statistic gathers several arrays; the chunking is part of the seed's stream."""
    rng = np.random.default_rng(seed)
    step = chunk or resamples
    scores = np.concatenate([statistic(rng.integers(0, n, size=(min(step, resamples - start), n)))
                             for start in range(0, resamples, step)])
    return float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))


def bootstrap_accuracy(correct: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The interval of accuracy, from a 0/1 array of per-example hits."""
    return bootstrap_interval(lambda draws: correct[draws].mean(axis=1), len(correct), resamples, seed)


def bootstrap_rmse(errors: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The interval of the RMSE, from the per-example errors."""
    squared = np.asarray(errors, dtype=np.float64) ** 2
    return bootstrap_interval(lambda draws: np.sqrt(squared[draws].mean(axis=1)), len(squared), resamples, seed)


def bootstrap_micro_f1(truth: np.ndarray, predicted: np.ndarray, resamples: int = RESAMPLES, seed: int = 0
                       ) -> tuple[float, float]:
    """The interval of micro-F1, resampling texts (their label decisions together)."""
    tp, fp, fn = (c.astype(np.float64) for c in f1_counts(np.asarray(truth, bool), np.asarray(predicted, bool), axis=1))
    return bootstrap_interval(lambda draws: f1(tp[draws].sum(1), fp[draws].sum(1), fn[draws].sum(1)), len(tp),
                              resamples, seed, chunk=100)  # 100 x n indices at a time, 3 gathers of each


# --- a class per example ----------------------------------------------------------------------------------------

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


# --- a set of labels per example: F1 from counts ----------------------------------------------------------------

def f1_counts(truth: np.ndarray, predicted: np.ndarray, axis=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, false positives, false negatives) of boolean decision matrices, summed along `axis`."""
    return (truth & predicted).sum(axis), (~truth & predicted).sum(axis), (truth & ~predicted).sum(axis)


def f1(tp, fp, fn) -> np.ndarray:
    """F1 from counts, elementwise; 0 where there is nothing to count (sklearn's zero_division=0)."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def micro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    tp, fp, fn = (int(c.sum()) for c in f1_counts(np.asarray(truth, bool), np.asarray(predicted, bool)))
    return float(f1(tp, fp, fn))


def multilabel_metrics(truth: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict:
    """Micro- and macro-F1 (a label with no true and no predicted text scores 0, as sklearn's zero_division=0),
    subset accuracy (the whole set right), per-label precision/recall/F1/support, and how many texts got no label."""
    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
    tp, fp, fn = f1_counts(truth, predicted)
    per_label = f1(tp, fp, fn)
    precision = np.divide(tp, tp + fp, out=np.zeros(len(names)), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros(len(names)), where=(tp + fn) > 0)
    return {
        "micro_f1": float(f1(tp.sum(), fp.sum(), fn.sum())),
        "macro_f1": float(per_label.mean()) if len(names) else 0.0,
        "subset_accuracy": float((truth == predicted).all(1).mean()) if len(truth) else 0.0,
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(per_label[i]),
                             "support": int(tp[i] + fn[i])} for i, name in enumerate(names)},
        "no_label": int((~predicted.any(1)).sum()),  # texts given an empty set
        "n": int(len(truth)),
    }


# --- a number per example ---------------------------------------------------------------------------------------

def regression_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """RMSE, MAE, Pearson and Spearman correlation, and n. A correlation with a constant side (the mean baseline)
    is undefined; it is reported as 0, no association."""
    truth, predicted = np.asarray(truth, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    errors = predicted - truth
    return {"rmse": float(np.sqrt(np.mean(errors ** 2))) if len(errors) else math.nan,
            "mae": float(np.mean(np.abs(errors))) if len(errors) else math.nan,
            "pearson": pearson(truth, predicted), "spearman": spearman(truth, predicted), "n": int(len(truth))}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return 0.0
    a, b = np.asarray(a, dtype=np.float64) - np.mean(a), np.asarray(b, dtype=np.float64) - np.mean(b)
    denominator = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    if denominator == 0 or not math.isfinite(denominator):
        return 0.0
    return float(np.clip(np.dot(a, b) / denominator, -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the ranks (ties share their mean rank)."""
    if len(a) < 2:
        return 0.0
    return pearson(stats.rankdata(a), stats.rankdata(b))
