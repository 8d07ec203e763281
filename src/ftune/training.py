"""The training loop, on Accelerate, readable top to bottom.

setup (data, model, optimizer) -> for each epoch: batches -> forward/backward -> step -> evaluate,
checkpoint -> finish (best weights, test metrics, baselines, save, report) -> tracker.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import get_scheduler

from ftune.baseline import tfidf_predictions
from ftune.checkpoint import TrainState, list_checkpoints, load_checkpoint, load_weights, save_checkpoint, save_weights
from ftune.config import Config
from ftune.data import Encoded, collate, encode, load_splits
from ftune.data.batching import train_batches
from ftune.data.summary import data_summary
from ftune.errors import ConfigError
from ftune.metrics import classification_metrics, is_better, logits_metrics, metrics_with_interval, softmax
from ftune.inference import predict_logits
from ftune.methods import METHODS, count_parameters
from ftune.models import load_classifier, load_tokenizer, resolve_model
from ftune.progress import TrainProgress
from ftune.report import write_reports
from ftune.run import Run, open_run_dir, update_manifest, write_json
from ftune.tracking import Tracker, connect


def train(config: Config, resume: bool = False, quiet: bool = False) -> Run:
    """Fine-tune as configured and return the finished run; `resume` continues an interrupted one."""
    splits = load_splits(config.data, config.train.seed)  # bad data or a bad model stops us before any file is written
    source = resolve_model(config.model.name)
    tokenizer = load_tokenizer(source, config.model.trust_remote_code)
    _mixed_precision(config.train.precision)  # a precision this machine lacks is a config error, found now
    tracker = connect(config.tracking)  # so is a tracking store we cannot open
    run_dir = open_run_dir(config, resume)
    try:
        tracker.start(run_dir, config, resume)
        _fit(config, splits, source, tokenizer, run_dir, resume, TrainProgress(quiet), tracker)
    except BaseException as e:  # never leave a crashed run looking complete
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        update_manifest(run_dir, status=status, error=f"{type(e).__name__}: {e}"[:500])
        tracker.finish(run_dir, status)
        raise
    tracker.finish(run_dir, "complete")
    return Run(run_dir)


def _fit(config: Config, splits, source: str, tokenizer, run_dir: Path, resume: bool, progress: TrainProgress,
         tracker: Tracker) -> None:
    cfg = config.train
    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg.precision))
    torch.manual_seed(cfg.seed)  # the new head's initial weights are part of the run's seed
    model = load_classifier(source, splits.labels, config.model.trust_remote_code)
    if cfg.gradient_checkpointing:
        # The current v5 name; transformers 5.17 (seen on the GPU machine) has only the older one.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    model = METHODS[config.method.name](model, config.method)
    data = {name: encode(getattr(splits, name), tokenizer, config.data.max_length)
            for name in ("train", "validation", "test")}
    pad_id = tokenizer.pad_token_id or 0

    batches_per_epoch = math.ceil(len(data["train"]) / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=round(total_steps * cfg.warmup_ratio),
                              num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler we step ourselves, once per step
    device = accelerator.device

    state = TrainState()
    checkpoints = list_checkpoints(run_dir)
    if resume and checkpoints:
        state = load_checkpoint(checkpoints[-1], accelerator.unwrap_model(model), optimizer, scheduler)
        progress.note(f"resuming from {checkpoints[-1].name} (epoch {state.epoch + 1}, batch {state.batch_in_epoch})")
    else:
        (run_dir / "metrics.jsonl").write_text("")
    if state.base_model_test is None and cfg.baselines:
        logits = predict_logits(model, data["test"], cfg.eval_batch_size, pad_id, device)
        state.base_model_test = logits_metrics(logits, data["test"].labels, splits.labels)

    trainable, total = count_parameters(model)
    progress.note(f"{config.method.name}: {trainable:,} of {total:,} parameters train | train {len(data['train'])}, "
                  f"validation {len(data['validation'])}, test {len(data['test'])} | batch {cfg.batch_size} x "
                  f"{cfg.gradient_accumulation_steps} accumulation x {accelerator.num_processes} process(es) | "
                  f"{total_steps} steps on {device}{' ' + accelerator.mixed_precision if accelerator.mixed_precision != 'no' else ''}")
    class_weight = _class_weights(data["train"], len(splits.labels), device) if cfg.class_weights else None
    log = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")

    def record(entry: dict) -> None:
        log.write(json.dumps(entry) + "\n")
        log.flush()
        tracker.log(entry)

    def evaluate_and_checkpoint() -> None:
        logits = predict_logits(model, data["validation"], cfg.eval_batch_size, pad_id, device)
        scores = logits_metrics(logits, data["validation"].labels, splits.labels)
        value = scores[cfg.metric]
        result = {"step": state.global_step, "epoch": state.epoch + state.batch_in_epoch / batches_per_epoch,
                  "validation": {k: scores[k] for k in ("loss", "accuracy", "macro_f1")}}
        state.evaluations.append(result)
        record({"type": "eval", **result})
        if is_better(cfg.metric, value, state.best_metric):
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.global_step, 0
            save_weights(accelerator.unwrap_model(model), run_dir / "checkpoints" / "best")
        else:
            state.evals_without_improvement += 1
            state.stopped_early = cfg.early_stopping_patience is not None and \
                state.evals_without_improvement >= cfg.early_stopping_patience
        save_checkpoint(run_dir, accelerator.unwrap_model(model), optimizer, scheduler, state, cfg.save_total_limit)
        progress.evaluated(result, cfg.metric)

    model.train()
    running_loss, running_batches = torch.zeros((), device=device), 0
    progress.start(total_steps, state.global_step)
    lengths = data["train"].lengths
    while state.epoch < cfg.epochs and not state.stopped_early:
        batches = train_batches(lengths, cfg.batch_size, cfg.seed, state.epoch, cfg.group_by_length)
        tick = time.perf_counter()
        for b in range(state.batch_in_epoch, len(batches)):
            batch = {k: v.to(device) for k, v in collate(data["train"], batches[b], pad_id).items()}
            labels = batch.pop("labels")
            group_start = b - b % cfg.gradient_accumulation_steps
            group_size = min(cfg.gradient_accumulation_steps, len(batches) - group_start)
            last_in_group = b == group_start + group_size - 1
            with accelerator.autocast():
                logits = model(**batch).logits
            loss = F.cross_entropy(logits.float(), labels, weight=class_weight)
            accelerator.backward(loss / group_size)  # mean over the whole accumulated group
            running_loss += loss.detach()
            running_batches += 1
            state.samples_seen += len(labels)
            state.tokens_seen += int(lengths[batches[b]].sum())  # from the cached lengths: no device sync
            state.batch_in_epoch = b + 1
            if not last_in_group:
                continue
            if cfg.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            if state.global_step % cfg.log_steps == 0:  # the only host sync in the loop: every log_steps
                elapsed = state.train_seconds + time.perf_counter() - tick
                entry = {"type": "train", "step": state.global_step, "epoch": state.epoch + (b + 1) / len(batches),
                         "loss": float(running_loss) / running_batches, "lr": scheduler.get_last_lr()[0],
                         "samples_per_s": state.samples_seen / max(elapsed, 1e-9)}
                record(entry)
                progress.step(state.global_step, entry)
                running_loss.zero_()
                running_batches = 0
            else:
                progress.step(state.global_step)
            if cfg.eval_steps and state.global_step % cfg.eval_steps == 0:
                state.train_seconds += time.perf_counter() - tick  # evaluation time is not training time
                evaluate_and_checkpoint()
                tick = time.perf_counter()
                model.train()
                if state.stopped_early:
                    break
        state.train_seconds += time.perf_counter() - tick
        if state.stopped_early:
            break
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        last_eval = state.evaluations[-1]["step"] if state.evaluations else None
        if not cfg.eval_steps or (state.epoch == cfg.epochs and last_eval != state.global_step):
            evaluate_and_checkpoint()  # each epoch, or once at the very end when evaluating every N steps
            model.train()
    progress.stop()
    log.close()
    _finish(config, splits, data, run_dir, accelerator.unwrap_model(model), tokenizer, state, pad_id, device, source)
    progress.note(f"report: {run_dir / 'report.html'}")


def _finish(config: Config, splits, data: dict[str, Encoded], run_dir: Path, model, tokenizer,
            state: TrainState, pad_id: int, device, source: str) -> None:
    """Best weights -> test metrics next to the baselines -> model files, metrics, report -> complete."""
    cfg = config.train
    best = run_dir / "checkpoints" / "best"
    if best.is_dir():
        load_weights(model, best)
    logits = predict_logits(model, data["test"], cfg.eval_batch_size, pad_id, device)
    test = {"finetuned": metrics_with_interval(logits, data["test"].labels, splits.labels, seed=cfg.seed)}
    if cfg.baselines:
        test["base_model"] = state.base_model_test
        tfidf = tfidf_predictions(splits.train, splits.test, cfg.seed)
        test["tfidf"] = classification_metrics(splits.test["label"].to_numpy(), tfidf, splits.labels)
    trainable, total = count_parameters(model)
    metrics = {
        "test": test,
        "validation": {"best": state.best_metric, "best_step": state.best_step, "metric": cfg.metric,
                       "history": state.evaluations},
        "train": {"steps": state.global_step, "epochs": state.epoch, "stopped_early": state.stopped_early,
                  "seconds": state.train_seconds, "samples_seen": state.samples_seen, "tokens_seen": state.tokens_seen,
                  "samples_per_s": state.samples_seen / max(state.train_seconds, 1e-9),
                  "tokens_per_s": state.tokens_seen / max(state.train_seconds, 1e-9),
                  "trainable_parameters": trainable, "total_parameters": total},
        "data": data_summary(splits, data, config.data.max_length),
    }
    _save_model(model, tokenizer, run_dir, config)
    write_json(run_dir / "labels.json", splits.labels)
    write_json(run_dir / "metrics.json", metrics)
    _save_test_predictions(run_dir / "test_predictions.csv", splits, logits)
    update_manifest(run_dir, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), data_hash=splits.fingerprint(),
                    model_source=source, device=_device_name(device))
    write_reports(run_dir)
    update_manifest(run_dir, status="complete")  # last: a run is complete only with all of its files


def _save_test_predictions(path: Path, splits, logits: np.ndarray) -> None:
    """Every test text with its true label, the predicted one and the model's probability for each."""
    probs = softmax(logits.astype(np.float64))
    names = np.asarray(splits.labels, dtype=object)
    truth = splits.test["label"].to_numpy()
    columns = ["text", "text_pair"] if "text_pair" in splits.test else ["text"]
    frame = splits.test[columns].assign(label=names[truth], predicted=names[probs.argmax(-1)], score=probs.max(-1),
                                        true_label_score=probs[np.arange(len(truth)), truth])
    frame.to_csv(path, index=False)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _save_model(model, tokenizer, run_dir: Path, config: Config) -> None:
    if config.method.name == "lora":
        model.save_pretrained(run_dir / "adapter")
        tokenizer.save_pretrained(run_dir / "adapter")
        if not config.method.merge:
            return
        model = model.merge_and_unload()
    model.save_pretrained(run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (1-d tensors), as in BERT's recipe."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def _class_weights(train: Encoded, num_labels: int, device) -> torch.Tensor:
    counts = np.bincount(train.labels, minlength=num_labels).astype(np.float64)
    weights = len(train.labels) / (num_labels * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def _mixed_precision(precision: str) -> str:
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if precision == "fp16" and not cuda:
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on this machine")
    return {"fp32": "no"}.get(precision, precision)
