"""Label new texts with a finished run (PyTorch) or an ONNX export, batched and sorted by length."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd

from ftune.data.tokenize import encode
from ftune.errors import RunError
from ftune.inference import predict_logits
from ftune.metrics import softmax
from ftune.models import load_classifier, load_tokenizer, resolve_model
from ftune.run import RUN_FILE, read_json

EXPORT_FILE = "export.json"


class Labeler(ABC):
    """What every predictor shares: tokenize, get logits, turn them into labels and scores."""

    kind: str
    labels: list[str]
    max_length: int
    text_column: str | None
    tokenizer: object
    batch_size: int

    def logits(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        frame = pd.DataFrame({"text": texts} | ({"text_pair": pairs} if pairs is not None else {}))
        data = encode(frame, self.tokenizer, self.max_length, use_cache=False)
        return self._logits(data)

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        """For each text: the label, its probability, and every class's probability."""
        if not texts:
            return []
        probs = softmax(self.logits(list(texts), pairs))
        return [{"label": self.labels[int(p.argmax())], "score": float(p.max()),
                 "scores": {name: float(p[i]) for i, name in enumerate(self.labels)}} for p in probs]

    @abstractmethod
    def _logits(self, data) -> np.ndarray:
        """Logits for encoded texts, in their order."""

    @abstractmethod
    def describe(self) -> dict:
        """What GET /v1/model reports: kind, labels, base model, method, metrics."""


class Predictor(Labeler):
    """The fine-tuned model of a run: merged/full weights from model/, else base model + adapter/."""

    kind = "pytorch"

    def __init__(self, run_dir: str | Path, batch_size: int = 128):
        self.run_dir = Path(run_dir)
        self.batch_size = batch_size
        self.labels: list[str] = read_json(self.run_dir / "labels.json")
        self.manifest = read_json(self.run_dir / RUN_FILE)
        self.config = _read_yaml(self.run_dir / "config.yaml")
        self.max_length = self.config["data"]["max_length"]
        self.text_column = self.config["data"]["text_column"]
        trust = self.config["model"]["trust_remote_code"]
        self.is_adapter = not (self.run_dir / "model").is_dir()
        if not self.is_adapter:
            self.tokenizer = load_tokenizer(str(self.run_dir / "model"), trust)
            self.model = load_classifier(str(self.run_dir / "model"), self.labels, trust)
        else:
            from peft import PeftModel

            source = self.manifest.get("model_source") or resolve_model(self.config["model"]["name"])
            self.tokenizer = load_tokenizer(str(self.run_dir / "adapter"), trust)
            base = load_classifier(source, self.labels, trust)
            self.model = PeftModel.from_pretrained(base, str(self.run_dir / "adapter"))
        self.model.eval()

    def _logits(self, data) -> np.ndarray:
        return predict_logits(self.model, data, self.batch_size, self.tokenizer.pad_token_id or 0)

    def plain_model(self):
        """The model with any LoRA adapter merged into its weights: what an exporter can trace."""
        return self.model.merge_and_unload() if self.is_adapter else self.model

    def describe(self) -> dict:
        metrics = read_json(self.run_dir / "metrics.json")["test"]["finetuned"]
        return {"kind": self.kind, "labels": self.labels, "base_model": self.config["model"]["name"],
                "method": self.config["method"]["name"], "max_length": self.max_length, "source": str(self.run_dir),
                "metrics": {"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"]}}


def load_predictor(path: str | Path, variant: str | None = None) -> Labeler:
    """A run directory gives the PyTorch model; an export directory its ONNX model (int8 if it has one)."""
    path = Path(path)
    if (path / EXPORT_FILE).is_file():
        from ftune.onnx_model import OnnxPredictor

        return OnnxPredictor(path, variant)
    if variant is not None:
        raise RunError(f"{path} is a run directory, which has only its PyTorch model; "
                       f"--variant applies to an export made by `ftune export`")
    from ftune.run import Run

    Run(path)  # refuses a folder that is not a finished run, with the fix in the message
    return Predictor(path)


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def evaluate_run(run, source: str, **columns: str | None) -> dict:
    """Metrics of a finished run on another labeled source, with the run's column names unless given."""
    from ftune.data import load_eval_frame
    from ftune.metrics import metrics_with_interval

    data_cfg = run.config.data.model_copy(update={k: v for k, v in columns.items() if v})
    frame = load_eval_frame(source, data_cfg, run.labels)
    predictor = Predictor(run.path)
    logits = predictor.logits(frame["text"].tolist(), frame["text_pair"].tolist() if "text_pair" in frame else None)
    return metrics_with_interval(logits, frame["label"].to_numpy(), run.labels)
