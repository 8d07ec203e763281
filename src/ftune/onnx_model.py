"""Run an ONNX export of a fine-tuned classifier through onnxruntime, with the run's tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import ValidationError

from ftune.config import LongTextConfig
from ftune.errors import RunError
from ftune.inference import batched_logits
from ftune.integrity import MANIFEST_KEY, check_tokenizer, member, read_json_file, read_labels, verify
from ftune.models import load_tokenizer
from ftune.predict import EXPORT_FILE, Labeler

VARIANTS = ("fp32", "int8")


def export_fix(export_dir: Path) -> str:
    """The fix for an export folder with a missing, cut-short or edited file."""
    return f"export the run again (ftune export RUN --output {export_dir})"


def read_export_info(export_dir: Path, fix: str) -> dict:
    """export.json, checked key by key: it names the files a predictor opens, so every name must stay inside the
    folder (an absolute path or ../ is refused before anything is read)."""
    path = export_dir / EXPORT_FILE
    info = read_json_file(path, fix)
    if not isinstance(info, dict):
        raise RunError(f"{path} is not an ftune export description; {fix}")
    for key, kind, what in (("files", dict, "map"), ("max_length", int, "whole number"), ("base_model", str, "string"),
                            ("method", str, "string")):
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise RunError(f"{path}: '{key}' is missing or not a {what}; {fix}")
    files = info["files"]
    if not files or not set(files) <= set(VARIANTS):
        raise RunError(f"{path}: 'files' must map {' and/or '.join(VARIANTS)} to model files; {fix}")
    for name in files.values():
        member(export_dir, name, path, fix)
    if info["max_length"] < 1 or not isinstance(info.get("text_column"), (str, type(None))) \
            or not isinstance(info.get("parity", {}), dict):
        raise RunError(f"{path}: 'max_length', 'text_column' or 'parity' has a value ftune does not write; {fix}")
    try:
        LongTextConfig(**info.get("long_text", {}))
    except (TypeError, ValidationError):
        raise RunError(f"{path}: 'long_text' is not a long-text setting ftune writes; {fix}") from None
    return info


class OnnxPredictor(Labeler):
    """An `ftune export` folder: model.onnx and/or model.int8.onnx, tokenizer files, labels.json, export.json."""

    def __init__(self, export_dir: str | Path, variant: str | None = None, batch_size: int = 128):
        import onnxruntime as ort

        self.export_dir = Path(export_dir)
        fix = export_fix(self.export_dir)
        self.info = read_export_info(self.export_dir, fix)
        verify(self.export_dir, self.info.get(MANIFEST_KEY), self.export_dir / EXPORT_FILE, fix)  # hashed once, here
        files: dict[str, str] = self.info["files"]
        variant = variant or ("int8" if "int8" in files else "fp32")
        if variant not in files:
            hint = "; export it with `ftune export RUN --quantize int8`" if variant == "int8" else ""
            raise RunError(f"{self.export_dir} has no {variant} model (it has: {', '.join(files)}){hint}")
        self.kind = f"onnx-{variant}"
        self.file = member(self.export_dir, files[variant], self.export_dir / EXPORT_FILE, fix)
        if not self.file.is_file():
            raise RunError(f"{self.file} is missing; {fix}")
        self.batch_size = batch_size
        self.labels = read_labels(self.export_dir / "labels.json", fix)
        if len(self.labels) < 2:  # one label would be answered with probability 1 whatever the text
            raise RunError(f"{self.export_dir / 'labels.json'} names {len(self.labels)} label(s); a classifier "
                           f"has at least two; {fix}")
        self.max_length = self.info["max_length"]
        self.text_column = self.info.get("text_column")
        self.long_text = LongTextConfig(**self.info.get("long_text", {}))
        self.tokenizer = load_tokenizer(str(self.export_dir))  # never remote code: an export holds none
        check_tokenizer(self.tokenizer, self.export_dir, fix)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are noise to a user
        try:
            self.session = ort.InferenceSession(str(self.file), options, providers=ort.get_available_providers())
        except Exception as e:  # onnxruntime raises its own classes (Fail, InvalidProtobuf, ...) for a bad graph
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise RunError(f"onnxruntime cannot load {self.file} ({first}); {fix}") from None
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        width = (outputs.get("logits") or [None])[-1]
        if "logits" not in outputs or (isinstance(width, int) and width != len(self.labels)):
            raise RunError(f"{self.export_dir / 'labels.json'} names {len(self.labels)} labels but {self.file.name} "
                           f"gives {width if 'logits' in outputs else 'no'} logits per text; {fix}")
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = [name for name in self.input_names if name not in self.tokenizer.model_input_names]
        if unknown:
            raise RunError(f"{self.file.name} takes inputs the tokenizer in {self.export_dir} does not make "
                           f"({', '.join(unknown)}); {fix}")

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
