"""Run an ONNX export of a fine-tuned classifier through onnxruntime, with the run's tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftune.config import LongTextConfig
from ftune.errors import RunError
from ftune.inference import batched_logits
from ftune.models import load_tokenizer
from ftune.predict import EXPORT_FILE, Labeler
from ftune.run import read_json


class OnnxPredictor(Labeler):
    """An `ftune export` folder: model.onnx and/or model.int8.onnx, tokenizer files, labels.json, export.json."""

    def __init__(self, export_dir: str | Path, variant: str | None = None, batch_size: int = 128):
        import onnxruntime as ort

        self.export_dir = Path(export_dir)
        self.info = read_json(self.export_dir / EXPORT_FILE)
        files: dict[str, str] = self.info["files"]
        variant = variant or ("int8" if "int8" in files else "fp32")
        if variant not in files:
            hint = "; export it with `ftune export RUN --quantize int8`" if variant == "int8" else ""
            raise RunError(f"{self.export_dir} has no {variant} model (it has: {', '.join(files)}){hint}")
        self.kind = f"onnx-{variant}"
        self.file = self.export_dir / files[variant]
        self.batch_size = batch_size
        self.labels = read_json(self.export_dir / "labels.json")
        self.max_length = self.info["max_length"]
        self.text_column = self.info.get("text_column")
        self.long_text = LongTextConfig(**self.info.get("long_text", {}))
        self.tokenizer = load_tokenizer(str(self.export_dir))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are noise to a user
        self.session = ort.InferenceSession(str(self.file), options, providers=ort.get_available_providers())
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _logits(self, data) -> np.ndarray:
        def forward(batch):
            return self.session.run(["logits"], {name: batch[name].numpy() for name in self.input_names})[0]

        return batched_logits(forward, data, self.batch_size, self.tokenizer.pad_token_id or 0)

    def describe(self) -> dict:
        parity = self.info.get("parity", {})
        accuracy = parity.get(self.kind, {}).get("accuracy")
        return {"kind": self.kind, "labels": self.labels, "base_model": self.info["base_model"],
                "method": self.info["method"], "max_length": self.max_length, "source": str(self.export_dir),
                "file_bytes": self.file.stat().st_size,
                "metrics": {"test_accuracy": accuracy, "pytorch_test_accuracy": parity.get("pytorch", {}).get("accuracy")}}
