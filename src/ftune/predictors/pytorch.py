"""A finished run's PyTorch model as a predictor: its files checked, its model loaded as the task loads it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from ftune.errors import RunError
from ftune.inference import PerRow, predict_outputs, resolve_device, resolve_precision, use_gpu_well
from ftune.integrity import (MANIFEST_KEY, check_label_order, check_tokenizer, check_trust, check_weights_format,
                             config_labels, read_labels, verify, weights_digests)
from ftune.methods import method_for
from ftune.models import load_tokenizer, resolve_model
from ftune.predictors.base import Labeler
from ftune.run_folder import RUN_FILE, RunFolder, damaged_run_fix  # not ftune.run, whose Run predicts with this
from ftune.tasks import task_for


class Predictor(Labeler):
    """The fine-tuned model of a run: merged/full weights from model/, else base model + adapter/."""

    kind = "pytorch"

    def __init__(self, run_dir: str | Path, batch_size: int = 128, trust_remote_code: bool = False,
                 device: str = "auto", precision: str = "fp32"):
        """`trust_remote_code`: run model code from the run's folder when its config asks to (--trust-remote-code).
        `device`: auto (a CUDA GPU when torch sees one), cpu or cuda; `precision`: fp32, or bf16/fp16 autocast."""
        self.device = resolve_device(device)  # before any file is read: a wrong flag costs nothing
        self.dtype = resolve_precision(precision, self.device)
        self.precision = precision
        run = RunFolder(run_dir)  # a missing, unfinished or damaged run folder is refused here, in one line
        self.run_dir = run.path
        self.batch_size = batch_size
        self.labels: list[str] = run.labels
        self.manifest = run.manifest
        self.config = run.config
        self.metrics = run.metrics
        self.max_length = run.config.data.max_length
        self.text_column = run.config.data.text_column
        self.task = task_for(run.config, run.task_state)
        self.tokenizer, self.model, self.is_adapter = self.load(run, trust_remote_code)
        self.model.to(self.device)
        use_gpu_well(self.device)

    def load(self, run: RunFolder, trust_remote_code: bool) -> tuple:
        """(tokenizer, model, whether it is base model + adapter): `load_run_model`; a subclass may share a model."""
        return load_run_model(run, trust_remote_code)

    def outputs(self, data, per_row: PerRow) -> list:
        return predict_outputs(self.model, data, self.batch_size, self.tokenizer.pad_token_id or 0, self.device,
                               per_row, self.task.forward, self.dtype)

    def plain_model(self):
        """The model with any adapter merged into its weights: what an exporter can trace."""
        if self.is_adapter:
            method_for(self.config).refuse_merge(f"{self.run_dir} as one plain model", "use the run directory itself")
        model = self.model.merge_and_unload() if self.is_adapter else self.model
        return model.to("cpu")  # traced on the host: the export runs anywhere

    def describe(self) -> dict:
        metrics = self.metrics["test"].get("finetuned") or {}  # none when train.evaluate_test was false
        return {"kind": self.kind, "task": self.task.name, "labels": self.labels, "base_model": self.config.model.name,
                "method": self.config.method.name, "max_length": self.max_length, "source": str(self.run_dir),
                "device": str(self.device), "precision": self.precision,
                "metrics": {f"test_{name}": metrics.get(name) for name in self.task.metrics}}


def load_run_model(run: RunFolder, trust_remote_code: bool = False) -> tuple:
    """(tokenizer, model in eval mode, whether it is base model + adapter) of a finished run, its files checked
    (`open_run_files`)."""
    tokenizer, folder, is_adapter, trust = open_run_files(run, trust_remote_code)
    load_model = task_for(run.config).load_model
    if not is_adapter:
        return tokenizer, load_model(str(folder), run.labels, trust).eval(), False
    from peft import PeftModel

    base = load_model(base_source(run), run.labels, trust)
    with adapter_errors(folder, damaged_run_fix(run.path)):
        model = PeftModel.from_pretrained(base, str(folder))
    return tokenizer, model.eval(), True


def open_run_files(run: RunFolder, trust_remote_code: bool = False) -> tuple:
    """(tokenizer, weights folder, whether it holds an adapter, whether the model may run code from the run's
    folder) of a finished run, after checking that its files are the ones training wrote, that labels.json is in
    the order the model was trained with, and that the run may run code from its folder."""
    fix = damaged_run_fix(run.path)
    trust = check_trust(run.config.model.trust_remote_code, trust_remote_code, run.path / "config.yaml")
    verify(run.path, run.manifest.get(MANIFEST_KEY), run.path / RUN_FILE, fix)  # each file hashed once, at load
    is_adapter = not (run.path / "model").is_dir()
    folder = run.path / ("adapter" if is_adapter else "model")
    if not folder.is_dir():
        raise RunError(f"{run.path} has neither model/ nor adapter/; {fix}")
    check_weights_format(folder, fix)
    if task_for(run.config).labeled:  # the order the head was trained with, against labels.json
        source_file = folder / ("labels.json" if is_adapter else "config.json")
        if is_adapter:  # the adapter's own copy; adapters written before it existed have none
            trained = read_labels(source_file, fix) if source_file.is_file() else None
        else:
            trained = config_labels(source_file, fix)
        check_label_order(run.labels, run.path / "labels.json", trained, source_file, fix)
    tokenizer = load_tokenizer(str(folder), trust)
    check_tokenizer(tokenizer, folder, fix)
    return tokenizer, folder, is_adapter, trust


def base_source(run: RunFolder) -> str:
    """Where an adapter run's base model is: as found on this machine at training, else (a run copied from
    elsewhere) found by name."""
    source = run.manifest.get("model_source")
    source = source if isinstance(source, str) and Path(source).is_dir() else resolve_model(run.config.model.name)
    expected = run.manifest.get("base_sha256")  # runs from before it was recorded load as they did
    if isinstance(expected, dict) and Path(source).is_dir():
        found = weights_digests(Path(source))
        if found != expected:
            changed = sorted(set(found) ^ set(expected) | {k for k in found if found[k] != expected.get(k)})
            raise RunError(f"{run.path} is a {run.config.method.name} adapter of the base model in {source}, but that "
                           f"base's weights changed since training ({', '.join(changed)} differ from run.json's "
                           f"base_sha256); put the original base back there, or train the adapter again on this base")
    return source


@contextmanager
def adapter_errors(folder: Path, fix: str):
    """An adapter that peft cannot load, as one line naming its folder and the fix."""
    try:
        yield
    except (OSError, ValueError, SafetensorError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise RunError(f"cannot load the adapter in {folder} ({first}); {fix}") from None
