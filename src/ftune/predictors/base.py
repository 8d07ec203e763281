"""What every predictor shares: a tokenizer, the task's view of the model's outputs, and answers from the task."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ftune.inference import PerRow
from ftune.tasks import Task

EXPORT_FILE = "export.json"


class Labeler(ABC):
    """A fine-tuned model behind `predict`: a run's PyTorch model or an ONNX export. The task turns its outputs
    into answers (a label, a tag per word, a label set, a number)."""

    kind: str
    task: Task
    labels: list[str]
    max_length: int
    text_column: str | None
    tokenizer: object
    batch_size: int

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        """For each text, the task's answer (`task.Prediction`): e.g. the label, its probability, every class's."""
        if not texts:
            return []
        return self.task.predict(self, list(texts), pairs)

    def logits(self, texts: list[str], pairs: list[str] | None = None):
        """Logits per text, for tasks with a logits head (classification-like: what ONNX parity compares)."""
        return self.task.logits(self, list(texts), pairs)

    @abstractmethod
    def outputs(self, data, per_row: PerRow) -> list:
        """per_row(logits, batch) for every encoded example, in input order (a task's view of the logits)."""

    @abstractmethod
    def describe(self) -> dict:
        """What GET /v1/model reports: kind, task, labels, base model, method, metrics."""
