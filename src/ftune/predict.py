"""Label new texts with a finished run (PyTorch) or an ONNX export, batched and sorted by length: a label per
text (classification, long texts pooled over their windows as in training) or a tag per word (token classification)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd

from ftune.config import LongTextConfig
from ftune.data.tokenize import encode
from ftune.errors import RunError
from ftune.inference import PerRow, logit_rows, predict_outputs
from ftune.metrics import softmax
from ftune.models import load_tokenizer, resolve_model
from ftune.run import RUN_FILE, read_json
from ftune.tasks import task_module

EXPORT_FILE = "export.json"


class Labeler(ABC):
    """What every predictor shares: tokenize, get logits, turn them into labels and scores."""

    kind: str
    labels: list[str]
    max_length: int
    text_column: str | None
    tokenizer: object
    batch_size: int
    task: str = "classification"
    long_text: LongTextConfig | None = None

    def logits(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """Logits per text; a chunked long text gets its windows' logits pooled as in training."""
        frame = pd.DataFrame({"text": texts} | ({"text_pair": pairs} if pairs is not None else {}))
        data = encode(frame, self.tokenizer, self.max_length, use_cache=False, long_text=self.long_text)
        return data.per_document(self._logits(data), self.long_text.pool if self.long_text else "mean")

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        """For each text: the label, its probability, and every class's probability; for token classification
        the words (split at whitespace), each with its tag and the tag's probability."""
        if not texts:
            return []
        if self.task == "token-classification":
            return task_module(self.task).tag_texts(self, list(texts))
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
        self.task = self.config.get("task", "classification")
        self.long_text = LongTextConfig(**self.config["data"].get("long_text", {}))
        trust = self.config["model"]["trust_remote_code"]
        load_model = task_module(self.task).load_model
        self.is_adapter = not (self.run_dir / "model").is_dir()
        if not self.is_adapter:
            self.tokenizer = load_tokenizer(str(self.run_dir / "model"), trust)
            self.model = load_model(str(self.run_dir / "model"), self.labels, trust)
        else:
            from peft import PeftModel

            source = self.manifest.get("model_source") or resolve_model(self.config["model"]["name"])
            self.tokenizer = load_tokenizer(str(self.run_dir / "adapter"), trust)
            self.model = PeftModel.from_pretrained(load_model(source, self.labels, trust), str(self.run_dir / "adapter"))
        self.model.eval()

    def outputs(self, data, per_row: PerRow) -> list:
        """per_row's result for every encoded example (a task's view of the logits)."""
        return predict_outputs(self.model, data, self.batch_size, self.tokenizer.pad_token_id or 0, per_row=per_row)

    def _logits(self, data) -> np.ndarray:
        return np.stack(self.outputs(data, logit_rows))

    def plain_model(self):
        """The model with any LoRA adapter merged into its weights: what an exporter can trace."""
        return self.model.merge_and_unload() if self.is_adapter else self.model

    def describe(self) -> dict:
        metrics = read_json(self.run_dir / "metrics.json")["test"]["finetuned"]
        return {"kind": self.kind, "task": self.task, "labels": self.labels, "base_model": self.config["model"]["name"],
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

    run = Run(path)  # refuses a folder that is not a finished run, with the fix in the message
    if run.config.task == "causal-lm":
        raise RunError(f"{path} is a causal-lm run: it writes text rather than labels; use "
                       f"`ftune generate {path} --prompt TEXT`")
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
