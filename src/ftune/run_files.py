"""What a finished run writes into its directory, the contract every reader of a run relies on (see ftune.run):
metrics.json assembled from the loop's results, the model (or the adapter), labels, the task's calibration,
test predictions, model cards, the files' sha256 in run.json, the reports, and `complete` last. Main process only."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from ftune import recipe
from ftune.card import write_cards
from ftune.checkpoint import TrainState
from ftune.config import Config
from ftune.data import Encoded
from ftune.diagnosis import better_baseline, diagnose
from ftune.integrity import remove_stale, run_manifest, staged_dir, weights_digests
from ftune.methods import count_parameters, method_for
from ftune.models import portable_name
from ftune.report import write_reports
from ftune.run import TASK_FILE, read_history, update_manifest, write_json
from ftune.tasks import Task

# metrics.json's test section when train.evaluate_test is false (tuning trials): no score was taken from the test split
NOT_EVALUATED = {"evaluated": False, "note": "train.evaluate_test was false: the test split was not evaluated"}


def write_run(config: Config, task: Task, splits, data: dict[str, Encoded], data_info: dict, run_dir: Path, model,
              full_state: dict | None, tokenizer, state: TrainState, test_metrics: dict, outputs, device,
              source: str, learning_rate: float, teacher_test: dict | None = None, compile_s: float | None = None) -> None:
    """Test metrics next to the baselines -> model files, metrics, report -> complete (main process only).
    `learning_rate`: the rate trained with (the config may say `auto`); `compile_s`: this process's time in
    torch.compile (train.compile), part of the training and evaluation times."""
    cfg = config.train
    test = {"finetuned": test_metrics} if cfg.evaluate_test else dict(NOT_EVALUATED)
    if cfg.baselines and cfg.evaluate_test:
        test["base_model"] = state.base_model_test
        test.update(task.baselines(splits, cfg.seed))
    if teacher_test:
        test["teacher"] = teacher_test
    trainable, total = count_parameters(model)
    metrics = {
        "task": task.name,
        "scores": {"metrics": list(task.metrics), "lower_is_better": sorted(task.lower_is_better), "note": task.note,
                   "unit": task.unit, "titles": task.titles | teacher_title(config)},
        "test": test,
        "validation": {"best": state.best_metric, "best_step": state.best_step, "metric": cfg.metric,
                       "kept": "best" if recipe.chooses_checkpoint(len(data["validation"])) else "last",
                       "base_model": state.base_model_validation, "history": state.evaluations},
        "train": {"steps": state.global_step, "epochs": state.epoch, "stopped_early": state.stopped_early,
                  "processes": state.processes,
                  "seconds": state.train_seconds, "samples_seen": state.samples_seen, "tokens_seen": state.tokens_seen,
                  "samples_per_s": state.samples_seen / max(state.train_seconds, 1e-9),
                  "tokens_per_s": state.tokens_seen / max(state.train_seconds, 1e-9),
                  "trainable_parameters": trainable, "total_parameters": total,
                  **({"compile_seconds": round(compile_s, 1)} if compile_s is not None else {})},
        "data": data_info,
    }
    settings = config.model_dump(mode="json")
    settings["train"]["learning_rate"] = learning_rate  # what the diagnosis advises from
    metrics["diagnosis"] = diagnose(metrics, read_history(run_dir), settings, str(run_dir)) \
        if cfg.evaluate_test else None  # its findings are read from the test scores
    metrics["better_baseline"] = better_baseline(metrics, str(run_dir), task.ships_baseline)
    save_model(model, full_state, tokenizer, run_dir, config, splits.labels)
    write_json(run_dir / "labels.json", splits.labels)
    if task.state:  # what calibration fixed on validation (e.g. thresholds): prediction needs it too
        write_json(run_dir / TASK_FILE, task.state)
    write_json(run_dir / "metrics.json", metrics)
    if cfg.evaluate_test:
        task.save_predictions(run_dir, splits, data, outputs, splits.labels)
    write_cards(run_dir)  # model/ and adapter/ README.md, from the final metrics; before the sha256 that lists them
    # sha256 (integrity.MANIFEST_KEY): what a predictor loads, checked when it loads (a kill or a partial copy)
    update_manifest(run_dir, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), data_hash=splits.fingerprint(),
                    device=device_name(device), sha256=run_manifest(run_dir), **base_identity(config, source))
    write_reports(run_dir)
    update_manifest(run_dir, status="complete")  # last: a run is complete only with all of its files


def teacher_title(config: Config) -> dict:
    return {"teacher": f"teacher ({Path(config.distill.teacher).name})"} if config.distill else {}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def base_identity(config: Config, source: str) -> dict:
    """Where the base model was (a folder as an absolute path: a relative one would name another base when the run
    is used from another folder) and, for an adapter run, what its weights were, so a changed base is refused."""
    if not Path(source).is_dir():
        return {"model_source": source}  # a hub id
    identity = {"model_source": str(Path(source).resolve())}
    if method_for(config).trains_adapter:
        identity["base_sha256"] = weights_digests(Path(source))
    return identity


def save_model(model, full_state: dict | None, tokenizer, run_dir: Path, config: Config, labels: list[str]) -> None:
    """model/, or adapter/ for a method that trains an adapter (and model/ too when it merges), each built in a
    hidden folder and renamed into place, so a symlink at the name is replaced, never written through; `full_state`
    holds the gathered weights when they were sharded."""
    for name in ("model", "adapter"):  # hidden folders of a save that a kill cut short, before a --resume
        remove_stale(run_dir, name, lambda folder: True)
    method = method_for(config)
    if method.trains_adapter:
        with staged_dir(run_dir / "adapter") as folder:
            save_adapter(model, folder, full_state, portable_name(config.model.name))
            tokenizer.save_pretrained(folder)
            # The class names travel with the adapter. Neither peft nor transformers reads them from an adapter
            # folder (only the base model's config, which has none: LABEL_0...), so this is what to pass as
            # id2label; a config.json here would make transformers look for full weights in the folder.
            if labels:
                write_json(folder / "labels.json", labels)
        if not method.merges:
            return
        if not method.quantized:  # a bf16 frozen base (GPU) merges into float32 weights, as saved
            model = model.float()
        model = model.merge_and_unload()
    with staged_dir(run_dir / "model") as folder:
        model.save_pretrained(folder, state_dict=full_state)
        tokenizer.save_pretrained(folder)


def save_adapter(model, folder: Path, full_state: dict | None, base_name: str) -> None:
    """peft's adapter files, naming the base model as another machine finds it: peft would record the path it was
    loaded from (for `minilm`, this machine's venv), which loads nowhere else."""
    base_config = model.get_base_model().config
    local, base_config._name_or_path = base_config._name_or_path, base_name  # what peft's model card names
    try:
        # The save itself keeps the local path in the adapter config: peft reads the base model's config.json
        # there to see whether the vocabulary grew, and would ask the hub for it under the portable name.
        model.save_pretrained(folder, state_dict=full_state)
    finally:
        base_config._name_or_path = local
    adapter = copy.copy(model.peft_config["default"])  # then adapter_config.json again, by peft, with the name
    adapter.base_model_name_or_path, adapter.inference_mode = base_name, True  # as peft's save writes it
    adapter.save_pretrained(folder)
