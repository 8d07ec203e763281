"""Classification: a label per text (or text pair); texts longer than the window cut or chunked (task.long_text)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from ftune.data import Encoded, encode, load_eval_frame, load_splits
from ftune.data.builtin import check_builtin_task
from ftune.data.summary import SPLITS, data_summary
from ftune.data.validate import data_warnings
from ftune.lazy import lazy
from ftune.schema import LongTextConfig
from ftune.tasks.base import Task, TaskOptions, class_weights, cross_entropy_sum, text_logits, texts_of
from ftune.tasks.baselines import tuned_classifier
from ftune.tasks.scoring import (bootstrap_accuracy, classification_metrics, logits_metrics, metrics_with_interval,
                                 softmax)

pd = lazy("pandas")
torch = lazy("torch")


class ClassificationOptions(TaskOptions):
    name: Literal["classification"] = "classification"
    long_text: LongTextConfig = Field(LongTextConfig(), description="texts longer than data.max_length tokens")


class Prediction(BaseModel):
    label: str
    score: float = Field(description="the label's probability")
    scores: dict[str, float] = Field(description="every label's probability")


class Classification(Task):
    name = "classification"
    description = "a label per text (or text pair): reviews, tickets, topics"
    Options = ClassificationOptions
    Prediction = Prediction
    peft_type = "SEQ_CLS"
    weighs_classes = True
    one_label_per_text = True
    metrics = ("accuracy", "macro_f1", "loss")
    note = "Accuracy with the 95% bootstrap interval for the fine-tuned model."
    titles = {"tfidf": "TF-IDF + linear model (tuned on validation)"}
    exportable = True
    ships_baseline = True  # its baseline answers a class per text, as the model does
    distills = distills_unlabeled = True  # the teacher's logits per text; data.unlabeled is texts

    def load_splits(self, seed: int):
        check_builtin_task(self.config.data.train, self.name)
        return load_splits(self.config.data, seed)

    def encode_splits(self, splits, tokenizer) -> dict[str, Encoded]:
        return {name: encode(getattr(splits, name), tokenizer, self.config.data.max_length,
                             long_text=self.options.long_text) for name in SPLITS}

    def encode_source(self, source: str, data_cfg, labels: list[str], tokenizer) -> Encoded:
        """A labeled file for `ftune eval` and export parity, in the run's columns and label ids."""
        return encode(load_eval_frame(source, data_cfg, labels), tokenizer, self.config.data.max_length,
                      use_cache=False, long_text=self.options.long_text)

    def summarize(self, splits, data: dict[str, Encoded]) -> tuple[dict, list[str]]:
        max_length, long_text = self.config.data.max_length, self.options.long_text
        return (data_summary(splits, data, max_length, long_text), data_warnings(splits, data, max_length, long_text))

    def load_model(self, source: str, labels: list[str], trust_remote_code: bool, method=None):
        from ftune.models import load_classifier

        return load_classifier(source, labels, trust_remote_code, method)

    weight: torch.Tensor | None = None  # class weights (train.class_weights)

    def prepare_loss(self, train: Encoded, labels: list[str], device) -> None:
        self.weight = class_weights(train.labels, len(labels), device) if self.config.train.class_weights else None

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return cross_entropy_sum(logits, batch["labels"], self.weight)

    def score(self, rows: list, data: Encoded, labels: list[str], interval_seed: int | None = None
              ) -> tuple[dict, np.ndarray]:
        """Metrics per text (chunked documents: their windows' logits pooled), and those logits."""
        logits = data.per_document(np.stack(rows), self.options.long_text.pool)
        if interval_seed is None:
            return logits_metrics(logits, data.document_labels, labels), logits
        return metrics_with_interval(logits, data.document_labels, labels, seed=interval_seed), logits

    def baselines(self, splits, seed: int) -> dict:
        """TF-IDF + the linear model with the best validation accuracy (tasks.baselines), with the interval the
        fine-tuned model's accuracy has."""
        choice = tuned_classifier(splits, lambda truth, predicted: np.mean(predicted == truth))
        truth = splits.test["label"].to_numpy()
        hits = (choice.test == truth).astype(np.float64)
        return {"tfidf": {**classification_metrics(truth, choice.test, splits.labels),
                          "accuracy_ci95": bootstrap_accuracy(hits, seed=seed), **choice.fields()}}

    def predictions(self, splits, logits: np.ndarray, labels: list[str]) -> pd.DataFrame:
        """Every test text with its true label, the predicted one and the model's probability for each."""
        probs = softmax(logits.astype(np.float64))
        names = np.asarray(labels, dtype=object)
        truth = splits.test["label"].to_numpy()
        return texts_of(splits.test).assign(label=names[truth], predicted=names[probs.argmax(-1)], score=probs.max(-1),
                                            true_label_score=probs[np.arange(len(truth)), truth])

    def logits(self, predictor, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """Logits per text; a chunked long text gets its windows' logits pooled as in training."""
        return text_logits(predictor, self.rows, texts, pairs, self.options.long_text)

    def predict(self, predictor, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        probs = softmax(self.logits(predictor, texts, pairs).astype(np.float64))
        return [{"label": predictor.labels[int(p.argmax())], "score": float(p.max()),
                 "scores": {name: float(p[i]) for i, name in enumerate(predictor.labels)}} for p in probs]

