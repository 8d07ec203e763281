"""Classification: a label per text (or text pair); texts longer than the window cut or chunked (data.long_text)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftune.baseline import tfidf_predictions
from ftune.config import Config
from ftune.data import Encoded, encode, load_splits as _load_splits
from ftune.data.builtin import check_builtin_task
from ftune.data.summary import SPLITS, data_summary
from ftune.data.validate import data_warnings
from ftune.distributed import gathered_logits
from ftune.integrity import atomic_path
from ftune.metrics import classification_metrics, logits_metrics, metrics_with_interval, softmax
from ftune.models import load_classifier

PEFT_TYPE = "SEQ_CLS"  # peft keeps the new classification head trainable and saved
SHIFT = False


def load_splits(config: Config, seed: int):
    check_builtin_task(config.data.train, "classification")
    return _load_splits(config.data, seed)


def encode_splits(splits, tokenizer, config: Config) -> dict[str, Encoded]:
    return {name: encode(getattr(splits, name), tokenizer, config.data.max_length, long_text=config.data.long_text)
            for name in SPLITS}


def load_model(source: str, labels: list[str], trust_remote_code: bool, method=None):
    return load_classifier(source, labels, trust_remote_code, method)


def evaluate(accelerator, model, data: Encoded, config: Config, pad_id: int, labels: list[str],
             interval_seed: int | None = None) -> tuple[dict, np.ndarray]:
    """Metrics per text (chunked documents: their windows' logits pooled), and those logits."""
    logits = gathered_logits(accelerator, model, data, config.train.eval_batch_size, pad_id)
    logits = data.per_document(logits, config.data.long_text.pool)
    if interval_seed is None:
        return logits_metrics(logits, data.document_labels, labels), logits
    return metrics_with_interval(logits, data.document_labels, labels, seed=interval_seed), logits


def baselines(splits, seed: int) -> dict:
    predicted = tfidf_predictions(splits.train, splits.test, seed)
    return {"tfidf": classification_metrics(splits.test["label"].to_numpy(), predicted, splits.labels)}


def summarize(splits, data: dict[str, Encoded], config: Config) -> tuple[dict, list[str]]:
    return (data_summary(splits, data, config.data.max_length, config.data.long_text),
            data_warnings(splits, data, config.data.max_length, config.data.long_text))


def save_predictions(run_dir: Path, splits, data: dict[str, Encoded], logits: np.ndarray, labels: list[str]) -> None:
    """Every test text with its true label, the predicted one and the model's probability for each."""
    probs = softmax(logits.astype(np.float64))
    names = np.asarray(labels, dtype=object)
    truth = splits.test["label"].to_numpy()
    columns = ["text", "text_pair"] if "text_pair" in splits.test else ["text"]
    frame = splits.test[columns].assign(label=names[truth], predicted=names[probs.argmax(-1)], score=probs.max(-1),
                                        true_label_score=probs[np.arange(len(truth)), truth])
    with atomic_path(run_dir / "test_predictions.csv") as tmp:  # a symlink there is replaced, not written through
        frame.to_csv(tmp, index=False)
