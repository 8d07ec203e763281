"""`ftune export`: a run's model as ONNX (and int8), checked against PyTorch on held-out texts.

torch.onnx (the dynamo exporter) writes the graph; onnxruntime's dynamic quantizer makes the
int8 copy. optimum's ONNX exporter would do both, but its current release requires
transformers < 4.58, and ftune is on transformers 5.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ftune.export_card import export_readme
from ftune.errors import ConfigError, RunError
from ftune.integrity import (MANIFEST_KEY, TMP_SUFFIX, manifest, read_json_file, remove_stale, staged_dir, write_json,
                             write_text)
from ftune.data import Encoded
from ftune.methods import method_for
from ftune.predictors import EXPORT_FILE, Predictor
from ftune.predictors.onnx import COLUMN_KEYS
from ftune.tasks import TASKS, task_for
from ftune.run import Run

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
README = "README.md"  # what the folder holds and how to run it without ftune (ftune.export_card)
# Every name an export writes, whatever its tokenizer (transformers' file names): a folder that holds only these
# is an earlier export, safe to replace; any other file there is the user's.
EXPORT_NAMES = {EXPORT_FILE, FP32_FILE, INT8_FILE, README, "config.json", "labels.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
                "chat_template.json"}
PARITY_TOLERANCE = 1e-3  # max |logit difference| between PyTorch and fp32 ONNX; float reordering stays ~1e-5


def export_onnx(run_dir: str | Path, output_dir: str | Path | None = None, quantize: str | None = None,
                data: str | None = None, parity_samples: int = 1000, opset: int = 18,
                trust_remote_code: bool = False) -> Path:
    """Write EXPORT_DIR with model.onnx [+ model.int8.onnx], tokenizer, labels.json and export.json (with the sha256
    of every other file). An earlier export there is replaced only when its folder holds nothing else."""
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize {quantize!r} is not supported; use --quantize int8 or leave it out")
    run = Run(run_dir)
    task = task_for(run.config, run.task_state)
    if not task.exportable:
        raise ConfigError(f"{run.path} is a {task.name} run; ONNX export covers tasks with one output row per text "
                          f"({', '.join(n for n, t in TASKS.items() if t.exportable)}); use `ftune predict` / "
                          f"`ftune serve` on the run directory")
    method_for(run.config).refuse_merge(f"ONNX export of {run.path}", f"serve or predict the run directory itself "
                                        f"(ftune serve {run.path}, ftune predict {run.path})")
    out = Path(output_dir) if output_dir else run.path / "onnx"
    _check_output(out)  # before the minutes of work, so a refusal comes at once
    predictor = Predictor(run.path, trust_remote_code=trust_remote_code)
    held_out = _parity_data(task, run, data, parity_samples, predictor.tokenizer)
    reference = predictor.outputs(held_out, task.rows)  # before any adapter merge, so parity also checks the merge

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent, out.name, lambda folder: not _foreign(folder))  # what a killed export left behind
    with staged_dir(out) as staging:
        model = predictor.plain_model().eval()  # an adapter merged
        inputs = _export_graph(model, predictor.tokenizer, staging / FP32_FILE, opset)
        predictor.tokenizer.save_pretrained(str(staging))
        write_json(staging / "labels.json", predictor.labels)
        _save_config(model, staging)
        files = {"fp32": FP32_FILE}
        if quantize == "int8":
            quantize_int8(staging / FP32_FILE, staging / INT8_FILE)
            files["int8"] = INT8_FILE
        info = {"format": "onnx", "files": files, "inputs": inputs, "outputs": ["logits"], "opset": opset,
                "source_run": str(run.path.resolve()), "base_model": run.config.model.name,
                "method": run.config.method.name, "max_length": run.config.data.max_length,
                **{key: getattr(run.config.data, key) for key in COLUMN_KEYS}, "task": run.config.task.model_dump(),
                "task_state": task.state,
                "created_at": datetime.now(timezone.utc).isoformat(), "versions": _versions(),
                MANIFEST_KEY: _manifest(staging)}
        write_json(staging / EXPORT_FILE, info)  # OnnxPredictor reads it; the parity figures follow
        info["parity"] = _parity(staging, files, task, held_out, run.labels, reference)
        info["parity"]["data"] = Path(data).name if data else "the run's test split"  # a name: the README shows it
        write_text(staging / README, export_readme(run, info, task, predictor.tokenizer))  # with the parity figures
        info[MANIFEST_KEY] = _manifest(staging)  # the README too: every file but export.json is listed
        write_json(staging / EXPORT_FILE, info)
        _check_output(out, also=[p.name for p in staging.iterdir()])  # nothing of the user's appeared meanwhile
    return out


def _manifest(folder: Path) -> dict[str, str]:
    return manifest(folder, (p.name for p in folder.iterdir() if p.name != EXPORT_FILE))


def _save_config(model: torch.nn.Module, folder: Path) -> None:
    """config.json: the model's transformers config (id2label, label2id, architecture), which onnxruntime users
    and optimum's ORTModel classes read beside the graph."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]  # set by a model's save_pretrained, not by the config's own
    config.save_pretrained(str(folder))


def _check_output(out: Path, also: list[str] = ()) -> None:
    """Refuse an --output folder that holds anything an export does not write: replacing it would delete it."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"{out} is a {'symbolic link' if out.is_symlink() else 'file'}; pass a folder (new, empty, "
                          f"or an earlier export) with --output")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / EXPORT_FILE).is_file():
        raise ConfigError(f"{out} exists and is not an ftune export; pick an empty or new --output folder")
    foreign = _foreign(out, also)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(f"{out} holds files an export does not write ({shown}); an earlier export is replaced only "
                          f"when nothing else is in its folder: move them out, or pick another --output folder")


def _foreign(folder: Path, also: list[str] = ()) -> list[str]:
    """What in `folder` an export did not write: anything but its own file names, those its export.json lists, and
    temp files of a write cut short. Sub-folders are always foreign."""
    listed: set = set()
    try:
        if not (folder / EXPORT_FILE).is_symlink():  # a link could lead anywhere: not read (and is itself foreign)
            old = read_json_file(folder / EXPORT_FILE, "")  # within the size limit of every json read from a folder
            listed = {name for name in old.get(MANIFEST_KEY, {}) if isinstance(name, str) and "/" not in name}
    except (RunError, AttributeError, TypeError):
        pass  # missing or damaged: only the names every export writes count as its own
    ours = EXPORT_NAMES | listed | set(also)
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                  if p.is_dir() or p.is_symlink() or not (p.name in ours or p.name.endswith(TMP_SUFFIX)))


def _parity_data(task, run: Run, data: str | None, limit: int, tokenizer) -> Encoded:
    """Held-out examples with labels, encoded as the task encodes them: the first `limit` of the run's own test
    split, or of a labeled file given with --data."""
    if data:
        encoded = task.encode_source(data, run.config.data, run.labels, tokenizer)
    else:
        encoded = task.encode_splits(task.load_splits(run.config.train.seed), tokenizer)["test"]
    documents = np.arange(len(encoded)) if encoded.groups is None else encoded.groups  # chunked: whole documents
    return encoded.subset(np.flatnonzero(documents < limit))


def _export_graph(model: torch.nn.Module, tokenizer, path: Path, opset: int) -> list[str]:
    """Trace the (merged) model with dynamic batch and sequence axes; input names come from the tokenizer."""
    sample = tokenizer(["a short text to trace", "and a second, longer one, so the batch holds padding"],
                       return_tensors="pt", padding=True)
    names = list(sample.keys())
    model = _LogitsOnly(model, names)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _quiet():
        torch.onnx.export(model, tuple(sample[n] for n in names), str(path), input_names=names,
                          output_names=["logits"], opset_version=opset, dynamo=True, external_data=False,
                          dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in names),))
    return names


class _LogitsOnly(torch.nn.Module):
    """Positional tensors in, logits out: the plain signature an ONNX graph has."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors))).logits


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8: weights quantized once, activations per batch; no calibration data needed.

    Per-channel weight scales: on mr, per-tensor scales cost the LoRA model 2.5 points, per-channel 0.9.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Shape hints from the trace: some exporter releases (torch 2.11) leave ones that contradict
    # the dynamic axes, and the quantizer's shape inference then refuses the graph. Drop them.
    graph = onnx.load(str(source))
    del graph.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        onnx.save(graph, f"{tmp}/model.onnx")
        quantize_dynamic(f"{tmp}/model.onnx", str(target), weight_type=QuantType.QInt8, per_channel=True)


def _parity(folder: Path, files: dict, task, data: Encoded, labels: list[str], reference: list) -> dict:
    """Each ONNX model's outputs against PyTorch's, and every model's headline score on the same examples."""
    from ftune.predictors.onnx import OnnxPredictor

    report = {"texts": len(data), "metric": task.headline(), "pytorch": _scores(task, data, labels, reference, None)}
    for variant, name in files.items():
        rows = OnnxPredictor(folder, variant).outputs(data, task.rows)
        report[f"onnx-{variant}"] = _scores(task, data, labels, rows, reference) | {"bytes": (folder / name).stat().st_size}
    fp32_diff = report["onnx-fp32"]["max_abs_diff"]
    if not fp32_diff <= PARITY_TOLERANCE:
        raise RunError(f"the ONNX graph disagrees with PyTorch (max |logit diff| {fp32_diff:.3g} > {PARITY_TOLERANCE}); "
                       f"nothing was written. Please report it with the model name")
    return report


def _scores(task, data: Encoded, labels: list[str], rows: list, reference: list | None) -> dict:
    """The task's headline score of these outputs; against the reference, the largest logit difference and how often
    the top output agrees."""
    scores = {task.headline(): task.score(rows, data, labels)[0][task.headline()] if len(data) else None}
    if reference is not None:
        logits, expected = np.stack(rows), np.stack(reference)
        scores["max_abs_diff"] = float(np.abs(logits - expected).max()) if len(data) else 0.0
        if logits.shape[-1] > 1:  # one output (regression): no top output to agree on
            scores["same_label_as_pytorch"] = float((logits.argmax(1) == expected.argmax(1)).mean()) if len(data) else None
    return scores


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


@contextlib.contextmanager
def _quiet():
    """The exporter and quantizer print progress and advice meant for their developers, not our users."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
