"""An ONNX export of a fine-tuned model run through onnxruntime, with the run's tokenizer and task."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

import torch

from ftune.config import validate
from ftune.errors import ConfigError, FtuneError, RunError
from ftune.inference import PerRow, batched_outputs
from ftune.integrity import MANIFEST_KEY, check_tokenizer, member, read_json_file, read_labels, verify
from ftune.models import load_tokenizer
from ftune.predictors.base import EXPORT_FILE, Labeler
from ftune.schema import LongTextConfig
from ftune.tasks import DEFAULT_TASK, task_for

VARIANTS = ("fp32", "int8")
# The run's column names an export keeps, so `ftune eval EXPORT --data FILE` reads a file as `ftune eval RUN` does
# (exports made before the last two were kept: the task's defaults, or the --label-column flags).
COLUMN_KEYS = ("text_column", "text_pair_column", "label_column")


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
    columns = [info.get(key) for key in COLUMN_KEYS]
    if info["max_length"] < 1 or not all(isinstance(c, (str, type(None))) for c in columns) \
            or not isinstance(info.get("parity", {}), dict):
        raise RunError(f"{path}: 'max_length', a column name or 'parity' has a value ftune does not write; {fix}")
    try:
        LongTextConfig(**info.get("long_text", {}))
    except (TypeError, ValidationError):
        raise RunError(f"{path}: 'long_text' is not a long-text setting ftune writes; {fix}") from None
    if not isinstance(info.get("task", {}), dict) or not isinstance(info.get("task_state", {}), dict):
        raise RunError(f"{path}: 'task' or 'task_state' is not what ftune writes; {fix}")
    return info


def export_config(info: dict, path: Path, fix: str):
    """The run's settings an export keeps (its task section and window), as a Config; an export written before
    tasks had sections is a classification export with its long_text setting."""
    task = info.get("task") or {"name": DEFAULT_TASK, "long_text": info.get("long_text", {})}  # older exports
    try:
        return validate({"task": task, "data": {"max_length": info["max_length"]}}, str(path))
    except FtuneError as e:
        raise RunError(f"{e}; {fix}") from None


def onnx_providers(device: str, available: list[str]) -> list[str]:
    """onnxruntime's execution providers for --device: CUDA needs onnxruntime-gpu (its CUDAExecutionProvider);
    auto takes it when installed and otherwise runs on the CPU, as `describe()` then says."""
    gpu = "CUDAExecutionProvider"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda") and gpu not in available:
        raise ConfigError(f"--device {device}: this onnxruntime has no CUDA provider (it has "
                          f"{', '.join(available)}); install onnxruntime-gpu, or use --device cpu")
    if device != "auto" and not device.startswith("cuda"):
        raise ConfigError(f"--device {device}: use auto, cpu or cuda")
    return [p for p in (gpu, "CPUExecutionProvider") if p in available]


class OnnxPredictor(Labeler):
    """An `ftune export` folder: model.onnx and/or model.int8.onnx (or their .ort forms), tokenizer files,
    labels.json, export.json.
    A subclass for another runtime (predictors.executorch) overrides the three methods after __init__'s reading."""

    runtime = "onnx"  # what `kind` starts with (onnx-fp32, onnx-int8) where export.json names no format

    def __init__(self, export_dir: str | Path, variant: str | None = None, batch_size: int = 128,
                 device: str = "auto"):
        self.providers = self.providers_for(device)  # a wrong flag: before any file is read
        self.export_dir = Path(export_dir)
        fix = export_fix(self.export_dir)
        self.info = read_export_info(self.export_dir, fix)
        verify(self.export_dir, self.info.get(MANIFEST_KEY), self.export_dir / EXPORT_FILE, fix)  # hashed once, here
        files: dict[str, str] = self.info["files"]
        variant = variant or ("int8" if "int8" in files else "fp32")
        if variant not in files:
            how = f" --format {self.info['format']}" if self.info.get("format", "onnx") != "onnx" else ""
            hint = f"; export it with `ftune export RUN{how} --quantize int8`" if variant == "int8" else ""
            raise RunError(f"{self.export_dir} has no {variant} model (it has: {', '.join(files)}){hint}")
        self.variant, self.kind = variant, f"{self.info.get('format') or self.runtime}-{variant}"  # onnx, ort, ...
        self.file = member(self.export_dir, files[variant], self.export_dir / EXPORT_FILE, fix)
        if not self.file.is_file():
            raise RunError(f"{self.file} is missing; {fix}")
        self.batch_size = batch_size
        self.labels = read_labels(self.export_dir / "labels.json", fix)
        self.max_length = self.info["max_length"]
        self.text_column = self.info.get("text_column")
        self.task = task_for(export_config(self.info, self.export_dir / EXPORT_FILE, fix), self.info.get("task_state"))
        self.data_config = self.task.config.data.model_copy(update={key: self.info.get(key) for key in COLUMN_KEYS})
        self.tokenizer = load_tokenizer(str(self.export_dir))  # never remote code: an export holds none
        check_tokenizer(self.tokenizer, self.export_dir, fix)
        self.open(fix)

    @staticmethod
    def providers_for(device: str) -> list[str]:
        """The runtime's execution providers for --device (refused in one line where it has none for it)."""
        import onnxruntime as ort

        return onnx_providers(device, ort.get_available_providers())

    def open(self, fix: str) -> None:
        """Load self.file into the runtime, checking its outputs against labels.json and its inputs against the
        tokenizer."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are noise to a user
        try:
            self.session = ort.InferenceSession(str(self.file), options, providers=self.providers)
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

    def outputs(self, data, per_row: PerRow) -> list:
        def forward(batch):
            logits = self.session.run(["logits"], {name: batch[name].numpy() for name in self.input_names})[0]
            return per_row(torch.from_numpy(logits), batch)

        return batched_outputs(forward, data, self.batch_size, self.tokenizer.pad_token_id or 0)

    def runs_on(self) -> str:
        return self.session.get_providers()[0]

    def using(self) -> str:
        """One line saying which model answers: the int8 one, picked by default, may label a few texts otherwise than
        the run does (its parity figure says how often it agreed), so a user must be able to see it and opt out."""
        agreed = self.info.get("parity", {}).get(self.kind, {}).get("same_label_as_pytorch")
        texts = self.info.get("parity", {}).get("texts")
        parity = f": same label as PyTorch on {agreed:.1%} of {texts} held-out texts" \
            if isinstance(agreed, float) and isinstance(texts, int) else ""
        other = "; --variant fp32 for the full-precision model" if self.variant == "int8" else ""
        return f"using {self.kind} (export folder {self.export_dir}{parity}{other})"

    def describe(self) -> dict:
        parity = self.info.get("parity", {})
        metric = parity.get("metric", "accuracy")  # the task's headline; exports before it was named: accuracy
        score = parity.get(self.kind, {}).get(metric)
        return {"kind": self.kind, "variant": self.variant, "variants": list(self.info["files"]),
                "task": self.task.name, "labels": self.labels, "base_model": self.info["base_model"],
                "method": self.info["method"], "max_length": self.max_length, "source": str(self.export_dir),
                "file_bytes": self.file.stat().st_size, "device": self.runs_on(),
                "metrics": {f"test_{metric}": score, f"pytorch_test_{metric}": parity.get("pytorch", {}).get(metric),
                            "same_label_as_pytorch": parity.get(self.kind, {}).get("same_label_as_pytorch")}}
