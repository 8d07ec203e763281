"""Label new texts with a finished run (PyTorch) or an ONNX export, batched and sorted by length: a label per
text (classification, long texts pooled over their windows as in training) or a tag per word (token classification)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import SafetensorError

from ftune.config import LongTextConfig
from ftune.data.tokenize import encode
from ftune.errors import RunError
from ftune.inference import PerRow, logit_rows, predict_outputs
from ftune.integrity import (MANIFEST_KEY, check_label_order, check_tokenizer, check_trust, check_weights_format,
                             config_labels, read_labels, verify)
from ftune.metrics import softmax
from ftune.models import load_tokenizer, resolve_model
from ftune.run import RUN_FILE
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

    def __init__(self, run_dir: str | Path, batch_size: int = 128, trust_remote_code: bool = False):
        """`trust_remote_code`: run model code from the run's folder when its config asks to (--trust-remote-code)."""
        from ftune.run import Run

        run = Run(run_dir)  # a missing, unfinished or damaged run folder is refused here, in one line
        self.run_dir = run.path
        self.batch_size = batch_size
        self.labels: list[str] = run.labels
        self.manifest = run.manifest
        self.config = run.config
        self.metrics = run.metrics
        self.max_length = run.config.data.max_length
        self.text_column = run.config.data.text_column
        self.task = run.config.task
        self.long_text = run.config.data.long_text
        self.tokenizer, self.model, self.is_adapter = load_run_model(run, trust_remote_code)

    def outputs(self, data, per_row: PerRow) -> list:
        """per_row's result for every encoded example (a task's view of the logits)."""
        return predict_outputs(self.model, data, self.batch_size, self.tokenizer.pad_token_id or 0, per_row=per_row)

    def _logits(self, data) -> np.ndarray:
        return np.stack(self.outputs(data, logit_rows))

    def plain_model(self):
        """The model with any LoRA adapter merged into its weights: what an exporter can trace."""
        return self.model.merge_and_unload() if self.is_adapter else self.model

    def describe(self) -> dict:
        metrics = self.metrics["test"].get("finetuned") or {}  # none when train.evaluate_test was false
        return {"kind": self.kind, "task": self.task, "labels": self.labels, "base_model": self.config.model.name,
                "method": self.config.method.name, "max_length": self.max_length, "source": str(self.run_dir),
                "metrics": {"test_accuracy": metrics.get("accuracy"), "test_macro_f1": metrics.get("macro_f1")}}


def load_run_model(run, trust_remote_code: bool = False) -> tuple:
    """(tokenizer, model in eval mode, whether it is base model + adapter) of a finished run, after checking that
    its files are the ones training wrote, that labels.json is in the order the model was trained with, and
    that the run may run code from its folder."""
    from ftune.run import damaged_run_fix

    fix = damaged_run_fix(run.path)
    trust = check_trust(run.config.model.trust_remote_code, trust_remote_code, run.path / "config.yaml")
    verify(run.path, run.manifest.get(MANIFEST_KEY), run.path / RUN_FILE, fix)  # each file hashed once, at load
    is_adapter = not (run.path / "model").is_dir()
    folder = run.path / ("adapter" if is_adapter else "model")
    if not folder.is_dir():
        raise RunError(f"{run.path} has neither model/ nor adapter/; {fix}")
    check_weights_format(folder, fix)
    if run.config.task != "causal-lm":  # the order the head was trained with, against labels.json
        source_file = folder / ("labels.json" if is_adapter else "config.json")
        if is_adapter:  # the adapter's own copy; adapters written before it existed have none
            trained = read_labels(source_file, fix) if source_file.is_file() else None
        else:
            trained = config_labels(source_file, fix)
        check_label_order(run.labels, run.path / "labels.json", trained, source_file, fix)
    tokenizer = load_tokenizer(str(folder), trust)
    check_tokenizer(tokenizer, folder, fix)
    load_model = task_module(run.config.task).load_model
    if not is_adapter:
        model = load_model(str(folder), run.labels, trust)
    else:
        from peft import PeftModel

        # The base model as found on this machine at training; a run copied from elsewhere finds it by name.
        source = run.manifest.get("model_source")
        if not (isinstance(source, str) and Path(source).is_dir()):
            source = resolve_model(run.config.model.name)
        base = load_model(source, run.labels, trust)
        try:
            model = PeftModel.from_pretrained(base, str(folder))
        except (OSError, ValueError, SafetensorError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise RunError(f"cannot load the adapter in {folder} ({first}); {fix}") from None
    return tokenizer, model.eval(), is_adapter


def load_predictor(path: str | Path, variant: str | None = None, trust_remote_code: bool = False) -> Labeler:
    """A run directory gives the PyTorch model; an export directory its ONNX model (int8 if it has one).
    `trust_remote_code` lets a run whose config asks for it run model code from its folder (never an export)."""
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
    return Predictor(path, trust_remote_code=trust_remote_code)


def evaluate_run(run, source: str, trust_remote_code: bool = False, **columns: str | None) -> dict:
    """Metrics of a finished run on another labeled source, with the run's column names unless given."""
    from ftune.data import load_eval_frame
    from ftune.metrics import metrics_with_interval

    predictor = Predictor(run.path, trust_remote_code=trust_remote_code)  # a damaged or untrusted run: before the data
    data_cfg = run.config.data.model_copy(update={k: v for k, v in columns.items() if v})
    frame = load_eval_frame(source, data_cfg, run.labels)
    logits = predictor.logits(frame["text"].tolist(), frame["text_pair"].tolist() if "text_pair" in frame else None)
    return metrics_with_interval(logits, frame["label"].to_numpy(), run.labels)
