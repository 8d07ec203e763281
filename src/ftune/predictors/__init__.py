"""Predictors: a run's PyTorch model or an ONNX export, behind one interface (base.Labeler), and the factory.

    base.py      Labeler: what every predictor shares (the task turns outputs into answers)
    pytorch.py   Predictor: a finished run's model (full weights, or base model + adapter)
    onnx.py      OnnxPredictor: an `ftune export` folder through onnxruntime
    executorch.py ExecutorchPredictor: an `ftune export --format executorch` folder through ExecuTorch's runtime
    classical.py ClassicalPredictor: an `ftune export --baseline` folder (TF-IDF + linear model) through onnxruntime
    many.py      load_many: several runs in one process, adapter runs of one base model sharing it (`ftune serve A B`)

Imports go one way: tasks and the run folder's reader (ftune.run_folder) below, predictors above them, then
ftune.run (whose Run predicts with pytorch.Predictor) and the commands on top.
"""

from __future__ import annotations

from pathlib import Path

from ftune import run as run_dir
from ftune.errors import ConfigError, RunError
from ftune.integrity import read_json_file, restore_aside
from ftune.predictors.base import EXPORT_FILE, Labeler
from ftune.predictors.classical import ClassicalPredictor, is_classical
from ftune.predictors.pytorch import Predictor, load_run_model
from ftune.tasks import task_for

Run = run_dir.Run  # ftune.Run, one class: a finished run that predicts, defined with the run directory it reads


def load_predictor(path: str | Path, variant: str | None = None, trust_remote_code: bool = False,
                   device: str = "auto", precision: str = "fp32") -> Labeler:
    """A run directory gives the PyTorch model; an export directory its ONNX model (int8 if it has one), or the
    baseline it holds (`ftune export --baseline`). `trust_remote_code` lets a run whose config asks for it run model
    code from its folder (never an export). `device`: auto (the GPU when there is one), cpu or cuda; `precision`
    (PyTorch only): fp32, bf16 or fp16."""
    path = Path(path)
    if is_export(path):
        if is_classical(path):
            if variant is not None or precision != "fp32":
                flag = "--variant" if variant is not None else "--precision"
                raise ConfigError(f"{path} is a baseline export, which holds one model; drop {flag}")
            return ClassicalPredictor(path, device=device)
        if precision != "fp32":
            raise ConfigError(f"--precision {precision} applies to a run's PyTorch model; an export's precision is "
                              f"its --variant (fp32 or int8)")
        return export_predictor(path)(path, variant, device=device)
    if variant is not None:
        raise RunError(f"{path} is a run directory, which has only its PyTorch model; "
                       f"--variant applies to an export made by `ftune export`")
    run = run_dir.Run(path)  # refuses a folder that is not a finished run, with the fix in the message
    if task_for(run.config).serves == "chat":
        raise RunError(f"{path} is a {run.config.task.name} run: it writes text rather than labels; use "
                       f"`ftune generate {path} --prompt TEXT`")
    return Predictor(path, trust_remote_code=trust_remote_code, device=device, precision=precision)


def export_predictor(path: Path) -> type:
    """The predictor class of a model export folder by its export.json's "format": ExecuTorch's runtime for
    executorch, onnxruntime for the others (onnx, ort; none named, or a damaged export.json: OnnxPredictor then
    reports it, with the fix)."""
    from ftune.predictors.onnx import OnnxPredictor

    try:
        info = read_json_file(path / EXPORT_FILE, "")
    except RunError:
        info = None
    if isinstance(info, dict) and info.get("format") == "executorch":
        from ftune.predictors.executorch import ExecutorchPredictor

        return ExecutorchPredictor
    return OnnxPredictor


def is_export(path: str | Path) -> bool:
    """Whether `path` is an `ftune export` folder (one a kill left aside mid-swap is put back first)."""
    path = Path(path)
    restore_aside(path.parent, path.name)
    return (path / EXPORT_FILE).is_file()


def evaluate_run(run: run_dir.Run, source: str, trust_remote_code: bool = False, device: str = "auto",
                 precision: str = "fp32", slice_by: str | None = None, **columns: str | None) -> dict:
    """The task's metrics of a finished run on another labeled source, with the run's column names unless given;
    `slice_by`: a column of the source whose groups are scored apart too (ftune.slices), under "slices"."""
    # A damaged or untrusted run, or a device this machine lacks, is refused before the data is read.
    predictor = Predictor(run.path, trust_remote_code=trust_remote_code, device=device, precision=precision)
    return _score_source(predictor, run.config.data, source, columns, slice_by)


def evaluate_export(predictor: Labeler, source: str, slice_by: str | None = None, **columns: str | None) -> dict:
    """The same metrics (and intervals) from an export's model (`load_predictor(EXPORT_DIR, variant)`), with the
    run's column names the export keeps unless given: an export scores wherever its run does."""
    return _score_source(predictor, predictor.data_config, source, columns, slice_by)


def _score_source(predictor: Labeler, data_cfg, source: str, columns: dict, slice_by: str | None = None) -> dict:
    data_cfg = data_cfg.model_copy(update={k: v for k, v in columns.items() if v})
    if isinstance(predictor, ClassicalPredictor):  # raw texts in: nothing to tokenize
        if slice_by:
            raise ConfigError("--slice-by scores a fine-tuned run or its ONNX export; the baseline export has no "
                              "per-example scores to slice")
        return predictor.score_source(source, data_cfg)
    task = predictor.task
    groups = _slice_column(source, slice_by) if slice_by else None  # a missing column: said before the model runs
    data = task.encode_source(source, data_cfg, predictor.labels, predictor.tokenizer)
    rows = predictor.outputs(data, task.rows)
    metrics = task.score(rows, data, predictor.labels, interval_seed=0)[0]
    if slice_by:
        from ftune.slices import slice_scores

        metrics["slices"] = slice_scores(task, rows, data, predictor.labels, groups, slice_by)
    return metrics


def _slice_column(source: str, name: str):
    from ftune.data.prepare import eval_table

    table = eval_table(source)
    if name not in table.columns:
        raise ConfigError(f"--slice-by {name}: {source} has no such column (columns: "
                          f"{', '.join(map(str, table.columns[:12]))}); name the column that holds each row's group")
    if table[name].isna().any():
        row = int(table[name].isna().to_numpy().nonzero()[0][0])
        raise ConfigError(f"--slice-by {name}: {source} row {row + 1} has no group; fill the column or drop the row")
    return table[name].to_numpy()


__all__ = ["EXPORT_FILE", "ClassicalPredictor", "Labeler", "Predictor", "Run", "evaluate_export", "evaluate_run",
           "export_predictor", "is_export", "load_predictor", "load_run_model"]
