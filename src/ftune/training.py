"""The training loop, on Accelerate, readable top to bottom.

setup (data, model, optimizer) -> for each epoch: batches -> forward/backward -> step -> evaluate,
checkpoint -> finish (best weights, test metrics, baselines, save, report) -> tracker.

With several processes every one builds the same global batches (batch_size x processes) from the
seed and trains on its own slice of each; only the main process writes files.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import shlex
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from transformers import get_scheduler

from ftune.card import write_cards
from ftune.checkpoint import (TrainState, list_checkpoints, load_checkpoint, load_weights, repair, rng_state,
                              save_checkpoint, save_weights, trainable_state)
from ftune.config import Config
from ftune.data import Encoded, collate
from ftune.data.batching import train_batches
from ftune.diagnosis import diagnose
from ftune.distill import cut_student, distill_loss, load_teacher, teacher_scores, with_teacher
from ftune.distributed import check_strategy, gathered, gathered_outputs, make_accelerator, on_main_then_share
from ftune.errors import ConfigError, RunError, RunPruned, TrainingStopped
from ftune.inference import to_device
from ftune.integrity import remove_stale, run_manifest, staged_dir, weights_digests
from ftune.lr_find import choose_learning_rate
from ftune.memory import auto_batch_size, check_fits, estimate, free_bytes, knobs, out_of_memory_message
from ftune.methods import METHODS, count_parameters, frozen_to
from ftune.models import load_tokenizer, portable_name, resolve_model
from ftune.progress import TrainProgress
from ftune.report import write_reports
from ftune.predictors import Run
from ftune.run import (TASK_FILE, check_run_dir, open_run_dir, read_history, read_json, release_run_dir, update_manifest,
                       write_json)
from ftune.stopping import StopFlag, stop_on_signals
from ftune.tasks import Task, task_for
from ftune.trackers import connect
from ftune.tracking import Tracker


def train(config: Config, resume: bool = False, quiet: bool = False,
          on_evaluate: Callable[[int, dict], None] | None = None) -> Run:
    """Fine-tune as configured and return the finished run; `resume` continues an interrupted one.

    `on_evaluate(step, scores)` is called after each validation evaluation; raising RunPruned there ends the run
    as `pruned` (ftune.tune prunes trials this way)."""
    cfg = config.train
    # A precision or strategy this machine lacks is a config error, found before anything else.
    accelerator = make_accelerator(config.distributed, _mixed_precision(cfg.precision), cfg.batch_size,
                                   cfg.gradient_accumulation_steps, cfg.max_grad_norm)
    check_optimizer(cfg.optimizer)
    with accelerator.main_process_first():  # the first process fetches built-in data and fills the caches
        task = task_for(config)
        splits = task.load_splits(cfg.seed)  # bad data or model: stop before any file
        source = resolve_model(config.model.name)
        tokenizer = load_tokenizer(source, config.model.trust_remote_code)
        check_max_length(config, source, tokenizer)
    main = accelerator.is_main_process
    tracker = Tracker()
    existed = bool(config.output_dir) and Path(config.output_dir).is_dir()  # a folder the user made: never removed

    def open_run() -> Path:
        nonlocal tracker
        tracker = connect(config.tracking)  # a tracking store we cannot open stops us here too
        return open_run_dir(config, resume, splits.fingerprint())

    run_dir = on_main_then_share(accelerator, open_run)
    try:
        tracker.start(run_dir, config, resume)
        with stop_on_signals() as stop:
            fit = _Fit(config, task, splits, source, tokenizer, run_dir, resume, TrainProgress(quiet or not main),
                       tracker, accelerator, stop, on_evaluate)
            fit.setup()
            fit.train()
            fit.finish()
    except BaseException as e:  # never leave a crashed run looking complete
        status = "interrupted" if isinstance(e, (KeyboardInterrupt, TrainingStopped)) else "failed"
        status = "pruned" if isinstance(e, RunPruned) else status
        tracker.finish(run_dir, status)
        if main and isinstance(e, ConfigError) and not resume and not list_checkpoints(run_dir):
            _discard(run_dir, keep_folder=existed)  # found before any training (e.g. memory): the command can rerun
            raise
        if main:
            update_manifest(run_dir, status=status, error=f"{type(e).__name__}: {e}"[:500])
        if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
            raise RunError(out_of_memory_message(e, _last_step(run_dir), knobs(config.task.name))) from None
        raise
    finally:
        release_run_dir(run_dir)
    tracker.finish(run_dir, "complete")
    accelerator.wait_for_everyone()  # the other processes return the run only once it is complete
    return Run(run_dir, trust_remote_code=config.model.trust_remote_code)  # this config's own choice, this process


def preflight(config: Config, resume: bool, check_output: bool = True) -> None:
    """The user errors `train` would meet, met once here, before a launcher starts processes that would each meet them.

    `check_output` is off on machines other than the first of several: the first one's run directory
    may already exist on shared storage by the time they check."""
    check_strategy(config.distributed)
    _mixed_precision(config.train.precision)
    check_optimizer(config.train.optimizer)
    splits = task_for(config).load_splits(config.train.seed)  # also fetches built-in data
    source = resolve_model(config.model.name)
    check_max_length(config, source, load_tokenizer(source, config.model.trust_remote_code))
    if check_output:
        check_run_dir(config, resume, splits.fingerprint())


def check_max_length(config: Config, source: str, tokenizer) -> None:
    """data.max_length within the positions the model has: past them the forward pass fails mid-run."""
    from transformers import AutoConfig

    positions = getattr(AutoConfig.from_pretrained(source, trust_remote_code=config.model.trust_remote_code),
                        "max_position_embeddings", None)
    # The tokenizer's limit where it has one (RoBERTa: 512 of 514 positions, two are offsets); unset is a huge sentinel.
    limits = [n for n in (positions, tokenizer.model_max_length) if n and n < 1_000_000]
    limit = min(limits, default=None)
    if limit and config.data.max_length > limit:
        hint = ", or task.long_text.strategy=chunk to read longer texts in windows" if hasattr(config.task, "long_text") else ""
        raise ConfigError(f"data.max_length={config.data.max_length} is more than {config.model.name} reads "
                          f"({limit} tokens); set data.max_length={limit} or less{hint}")


def _discard(run_dir: Path, keep_folder: bool) -> None:
    """Remove what this run wrote; a folder the user created beforehand stays, empty, as it was."""
    if not keep_folder:
        shutil.rmtree(run_dir)
        return
    for child in run_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


class _Fit:
    """One run's training in named phases: setup -> train (step, log, evaluate, checkpoint) -> finish.

    The task supplies the model, the loss and the scores; everything here is the same for every task."""

    def __init__(self, config: Config, task: Task, splits, source: str, tokenizer, run_dir: Path, resume: bool,
                 progress: TrainProgress, tracker: Tracker, accelerator: Accelerator, stop: StopFlag,
                 on_evaluate: Callable[[int, dict], None] | None):
        self.config, self.task, self.splits, self.source, self.tokenizer = config, task, splits, source, tokenizer
        self.run_dir, self.resume, self.progress, self.tracker, self.stop = run_dir, resume, progress, tracker, stop
        self.accelerator, self.on_evaluate = accelerator, on_evaluate
        self.main, self.world, self.rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
        self.device = accelerator.device
        self.pad_id = tokenizer.pad_token_id or 0
        multiple = config.train.pad_to_multiple_of
        self.pad_multiple = (16 if self.device.type == "cuda" else 1) if multiple == "auto" else multiple
        distill = config.distill  # with a teacher, its soft labels join the task's loss in training
        self.loss = distill_loss(task.loss, distill.temperature, distill.alpha) if distill else task.loss
        self.log = None

    # --- setup --------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        config, task, cfg = self.config, self.task, self.config.train
        self._setup_model_and_data()
        if self.resume:
            if self.main:  # a kill during a save, or a damaged file: put back or set aside, before reading a checkpoint
                for line in repair(self.run_dir):
                    self.progress.note(line)
            self.accelerator.wait_for_everyone()
        self.batch_size = _batch_size(config, self.model, self.data["train"], self.accelerator,
                                      self.run_dir if self.resume else None, self.progress)
        self.global_batch = self.batch_size * self.world  # each process takes batch_size of it
        # Counted from the batches themselves (a pure function of seed and epoch): with train.max_tokens their number
        # changes with each epoch's shuffle, and the schedule must end exactly at the last step.
        self.batch_counts = [len(self._epoch_batches(epoch)) for epoch in range(cfg.epochs)]
        self.total_steps = sum(math.ceil(n / cfg.gradient_accumulation_steps) for n in self.batch_counts)
        task.prepare_loss(self.data["train"], self.splits.labels, self.device)
        if cfg.learning_rate == "auto":  # the optimizer below is built with the rate a range test chooses
            self.config = config = choose_learning_rate(
                config, self.model, self.data["train"], self.batch_size, task, self.pad_id,
                _param_groups(self.model, cfg.weight_decay), self.accelerator, self.run_dir, self.resume, self.progress,
                run_steps=self.total_steps)
            cfg = config.train
        optimizer = _optimizer(config, _param_groups(self.model, cfg.weight_decay), self.device)
        self.scheduler = get_scheduler(cfg.scheduler, optimizer, num_training_steps=self.total_steps,
                                       num_warmup_steps=round(self.total_steps * cfg.warmup_ratio))
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)  # the scheduler: stepped by us
        self._setup_state()
        self._describe()

    def _setup_model_and_data(self) -> None:
        config, task, distill = self.config, self.task, self.config.distill
        torch.manual_seed(config.train.seed)  # the new head's initial weights are part of the run's seed
        teacher = load_teacher(config, self.splits.labels, self.device) if distill else None
        if distill and distill.layers:  # the student: the teacher cut to fewer layers, from the teacher's weights
            model = cut_student(teacher, distill.layers, distill.pick)
        else:
            model = task.load_model(self.source, self.splits.labels, config.model.trust_remote_code, config.method)
        if config.train.gradient_checkpointing:
            # The current v5 name; transformers 5.17 (seen on the GPU machine) has only the older one.
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        self.model = METHODS[config.method.name](model, config.method, task.peft_type)
        self.frozen_dtype = _frozen_dtype(config, self.device, self.accelerator.mixed_precision)
        if self.frozen_dtype:
            frozen_to(self.model, self.frozen_dtype)
        if config.train.compile:
            self.compile_start = compile_seconds()  # the process's count so far (another run's, in one process)
            compiled = compile_layers(self.model, "inductor" if config.train.compile is True else config.train.compile)
            self.progress.note(f"compile: {compiled} layers compiled in place ({config.train.compile}); each new batch "
                               f"shape compiles once, on its first step")
        self.data = task.encode_splits(self.splits, self.tokenizer)
        self.summary, self.warnings = task.summarize(self.splits, self.data)
        for line in self.warnings:
            self.progress.note(f"data warning: {line}")
        self.teacher_test = None
        if teacher:  # its answers once, before training; then it is let go (the student's memory)
            theirs = teacher.task.encode_splits(self.splits, teacher.tokenizer)  # the splits as the teacher reads them
            self.data["train"] = with_teacher(teacher, theirs["train"], config, self.data["train"], self.tokenizer)
            if config.train.evaluate_test and config.train.baselines:
                self.teacher_test = teacher_scores(teacher, theirs["test"], self.splits.labels, config.train.seed)
            self.progress.note(f"distilling {teacher.run_dir} (T={distill.temperature:g}, alpha={distill.alpha:g}) "
                               f"into {distill.layers or 'all'} layers of {config.model.name} over "
                               f"{len(self.data['train'])} texts")

    def _setup_state(self) -> None:
        cfg = self.config.train
        self.state = TrainState(processes=self.world, batch_size=self.batch_size)
        checkpoints = list_checkpoints(self.run_dir)
        if self.resume and checkpoints:
            _check_checkpoint_fits(checkpoints[-1], self.world, self.accelerator)
            self.state = load_checkpoint(checkpoints[-1], self.accelerator.unwrap_model(self.model), self.optimizer,
                                         self.scheduler, self.rank)
            self.progress.note(f"resuming from {checkpoints[-1].name} (epoch {self.state.epoch + 1}, "
                               f"batch {self.state.batch_in_epoch})")
        elif self.main:
            (self.run_dir / "metrics.jsonl").write_text("")
        if self.state.base_model_test is None and cfg.baselines and cfg.evaluate_test:
            self.state.base_model_test = self.evaluate("test")[0]
            self.state.base_model_validation = self._headline(self.evaluate("validation")[0])

    def _describe(self) -> None:
        cfg, data, accelerator = self.config.train, self.data, self.accelerator
        trainable, total = count_parameters(self.model)
        precision = f" {accelerator.mixed_precision}" if accelerator.mixed_precision != "no" else ""
        self.progress.note(
            f"{self.config.method.name}: {trainable:,} of {total:,} parameters train | train {len(data['train'])}, "
            f"validation {len(data['validation'])}, test {len(data['test'])} | batch {self.batch_size} x {self.world} "
            f"process(es) x {cfg.gradient_accumulation_steps} accumulation = "
            f"{self.global_batch * cfg.gradient_accumulation_steps} per step | {self.total_steps} steps on "
            f"{self.device}{precision}" + (" | frozen base in bf16" if self.frozen_dtype else ""))
        if self.config._learning_rate_is_default:
            self.progress.note(f"learning rate {cfg.learning_rate:g}: the default for {self.config.method.name} "
                               f"(train.learning_rate sets another; bench/lr_grid.py measured the defaults)")

    # --- train --------------------------------------------------------------------------------------------------
    def train(self) -> None:
        cfg, state = self.config.train, self.state
        self.log = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") if self.main else None
        self.model.train()
        self.running_loss, self.running_batches = torch.zeros((), device=self.device), 0
        self.progress.start(self.total_steps, state.global_step)
        while state.epoch < cfg.epochs and not state.stopped_early:
            batches = self._epoch_batches(state.epoch)
            self.tick = time.perf_counter()
            for b in range(state.batch_in_epoch, len(batches)):
                if self.step(batches, b):
                    break
            self._add_train_time()
            if state.stopped_early:
                break
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            last_eval = state.evaluations[-1]["step"] if state.evaluations else None
            if not cfg.eval_steps or (state.epoch == cfg.epochs and last_eval != state.global_step):
                self.evaluate_and_checkpoint()  # each epoch, or once at the very end when evaluating every N steps
        self.progress.stop()
        if self.log:
            self.log.close()

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches; each process trains on its slice of each (a token budget is per process)."""
        cfg = self.config.train
        budget = cfg.max_tokens * self.world if cfg.max_tokens else None
        batches = train_batches(self.data["train"].lengths, self.global_batch, cfg.seed, epoch, cfg.group_by_length,
                                budget)
        return [b for b in batches if len(b) >= self.world]  # every process needs a slice (drops < `world`)

    def step(self, batches: list[np.ndarray], b: int) -> bool:
        """Micro-batch b of the epoch: forward, the task's loss, backward; an optimizer step at the end of each
        accumulation group, then logging, evaluation and checkpoints as due. True: stop the epoch (early stop)."""
        cfg, state, accelerator = self.config.train, self.state, self.accelerator
        mine = np.array_split(batches[b], self.world)[self.rank]
        batch = to_device(collate(self.data["train"], mine, self.pad_id, self.pad_multiple, self.config.data.max_length),
                          self.device)
        group_start = b - b % cfg.gradient_accumulation_steps
        group_size = min(cfg.gradient_accumulation_steps, len(batches) - group_start)
        last_in_group = b == group_start + group_size - 1
        # Gradients are averaged over processes at the group's last micro-batch only (no_sync before it).
        with accelerator.no_sync(self.model) if not last_in_group else nullcontext():
            with accelerator.autocast():
                out = self.task.forward(self.model, batch)  # the logits, or what the task's loss reads instead
            total, count = self.loss(out, batch)
            if self.world > 1:  # slices differ in what they count (tokens): divide by the whole global batch's count
                count = accelerator.reduce(count, "sum")  # a collective on the device; the host does not wait
            loss = total * self.world / count.clamp(min=1e-9)  # DDP averages over processes: the global mean exactly
            accelerator.backward(loss / group_size)  # mean over the whole accumulated group
        self.running_loss += loss.detach()
        self.running_batches += 1
        state.samples_seen += len(batches[b])
        state.tokens_seen += int(self.data["train"].lengths[batches[b]].sum())  # cached lengths: no device sync
        state.batch_in_epoch = b + 1
        if not last_in_group:
            return False
        if cfg.max_grad_norm is not None:
            accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        self.log_step(b + 1, len(batches))
        evaluating = bool(cfg.eval_steps) and state.global_step % cfg.eval_steps == 0
        if evaluating:
            self._add_train_time()  # evaluation time is not training time
            self.evaluate_and_checkpoint()
            self.tick = time.perf_counter()
            if state.stopped_early:
                return True
        asked = _stop_asked(self.stop, accelerator)
        if asked or (cfg.save_steps and state.global_step % cfg.save_steps == 0 and not evaluating):
            self._add_train_time()
            saved = self.checkpoint()
            self.tick = time.perf_counter()
            if asked:
                self.progress.stop()
                raise TrainingStopped(f"stopped by {self.stop.signal.name} at step {state.global_step}: checkpoint "
                                      f"{saved} saved; continue with `ftune train --output-dir "
                                      f"{shlex.quote(str(self.run_dir))} --resume`", 128 + self.stop.signal.value)
        return False

    def log_step(self, batches_done: int, batches: int) -> None:
        """Every train.log_steps steps, the mean training loss since the last line: the loop's one routine host sync
        (reading the loss back); in between only the progress bar moves."""
        cfg, state = self.config.train, self.state
        if state.global_step % cfg.log_steps:
            self.progress.step(state.global_step)
            return
        elapsed = state.train_seconds + time.perf_counter() - self.tick
        mean_loss = float(self.accelerator.reduce(self.running_loss, "mean")) / self.running_batches
        _check_finite(mean_loss, "training loss", state.global_step, cfg.learning_rate)
        entry = {"type": "train", "step": state.global_step, "epoch": state.epoch + batches_done / batches,
                 "loss": mean_loss, "lr": self.scheduler.get_last_lr()[0],
                 "samples_per_s": state.samples_seen / max(elapsed, 1e-9)}
        self.record(entry)
        self.progress.step(state.global_step, entry)
        self.running_loss.zero_()
        self.running_batches = 0

    def _add_train_time(self) -> None:
        self.state.train_seconds += time.perf_counter() - self.tick
        self.tick = time.perf_counter()

    def record(self, entry: dict) -> None:
        if self.main:
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()
            self.tracker.log(entry)

    # --- evaluate and checkpoint --------------------------------------------------------------------------------
    def evaluate(self, split: str, interval_seed: int | None = None) -> tuple[dict, object]:
        """The task's scores of a split, from rows every process computes a share of (task-neutral gather)."""
        return self.task.score(self._rows(split), self.data[split], self.splits.labels, interval_seed)

    def _rows(self, split: str) -> list:
        # A bf16 frozen base is read under bf16 autocast here too, as in training.
        return gathered_outputs(self.accelerator, self.model, self.data[split], self.config.train.eval_batch_size,
                                self.pad_id, self.task.rows, self.task.forward, self.frozen_dtype)

    def evaluate_and_checkpoint(self) -> None:
        cfg, state = self.config.train, self.state
        scores = self.evaluate("validation")[0]
        _check_finite(scores["loss"], "validation loss", state.global_step, cfg.learning_rate)
        in_epoch = self.batch_counts[min(state.epoch, cfg.epochs - 1)]  # after the last epoch: state.epoch == epochs
        result = {"step": state.global_step, "epoch": state.epoch + state.batch_in_epoch / in_epoch,
                  "validation": self._headline(scores)}
        state.evaluations.append(result)
        self.record({"type": "eval", **result})
        weights = _trainable_weights(self.accelerator, self.model)  # every process joins: shards are gathered
        if self.task.is_better(cfg.metric, scores[cfg.metric], state.best_metric):
            state.best_metric, state.best_step, state.evals_without_improvement = scores[cfg.metric], state.global_step, 0
            if self.main:
                save_weights(weights, self.run_dir / "checkpoints" / "best")
        else:
            state.evals_without_improvement += 1
            state.stopped_early = cfg.early_stopping_patience is not None and \
                state.evals_without_improvement >= cfg.early_stopping_patience
        self.checkpoint(weights)
        self.progress.evaluated(result, cfg.metric)
        if self.on_evaluate:
            self.on_evaluate(state.global_step, scores)
        self.model.train()

    def checkpoint(self, weights: dict | None = None) -> str:
        """checkpoints/step-N for --resume; every process joins (its random state is saved too)."""
        if weights is None:  # between evaluations: the training loss since the last log line must still be a number
            _check_finite(float(self.accelerator.reduce(self.running_loss, "sum")), "training loss",
                          self.state.global_step, self.config.train.learning_rate)
        weights = weights if weights is not None else _trainable_weights(self.accelerator, self.model)
        rng = gathered(self.accelerator, rng_state())  # each process's random state, for exact resume
        folder = save_checkpoint(self.run_dir, weights, self.optimizer, self.scheduler, rng, self.state,
                                 self.config.train.save_total_limit) if self.main else None
        self.accelerator.wait_for_everyone()
        return folder.name if folder else ""

    def _headline(self, scores: dict) -> dict:
        return {k: scores[k] for k in self.task.metrics if k in scores}

    # --- finish -------------------------------------------------------------------------------------------------
    def finish(self) -> None:
        """The best weights back, the task's calibration on validation, the test scores; then the files (main)."""
        cfg, accelerator = self.config.train, self.accelerator
        best = self.run_dir / "checkpoints" / "best"
        if best.is_dir():
            load_weights(accelerator.unwrap_model(self.model), best)
        if self.task.calibrates:  # e.g. decision thresholds, fixed on validation before test is read
            self.task.state = self.task.calibrate(self._rows("validation"), self.data["validation"], self.splits.labels)
        test_metrics, outputs = self.evaluate("test", interval_seed=cfg.seed) if cfg.evaluate_test else (None, None)
        full_state = accelerator.get_state_dict(self.model) if _sharded(accelerator) else None  # every process joins
        if self.main:
            _finish(self.config, self.task, self.splits, self.data, {**self.summary, "warnings": self.warnings},
                    self.run_dir, accelerator.unwrap_model(self.model), full_state, self.tokenizer, self.state,
                    test_metrics, outputs, self.device, self.source, self.teacher_test,
                    compile_seconds() - self.compile_start if self.config.train.compile else None)
            self.progress.note(f"report: {self.run_dir / 'report.html'}")


def _finish(config: Config, task: Task, splits, data: dict[str, Encoded], data_info: dict, run_dir: Path, model,
            full_state: dict | None, tokenizer, state: TrainState, test_metrics: dict, outputs, device,
            source: str, teacher_test: dict | None = None, compile_s: float | None = None) -> None:
    """Test metrics next to the baselines -> model files, metrics, report -> complete (main process only).
    `compile_s`: this process's time in torch.compile (train.compile), part of the training and evaluation times."""
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
                   "unit": task.unit, "titles": task.titles | _teacher_title(config)},
        "test": test,
        "validation": {"best": state.best_metric, "best_step": state.best_step, "metric": cfg.metric,
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
    metrics["diagnosis"] = diagnose(metrics, read_history(run_dir), config.model_dump(mode="json"), str(run_dir)) \
        if cfg.evaluate_test else None  # its findings are read from the test scores
    _save_model(model, full_state, tokenizer, run_dir, config, splits.labels)
    write_json(run_dir / "labels.json", splits.labels)
    if task.state:  # what calibration fixed on validation (e.g. thresholds): prediction needs it too
        write_json(run_dir / TASK_FILE, task.state)
    write_json(run_dir / "metrics.json", metrics)
    if cfg.evaluate_test:
        task.save_predictions(run_dir, splits, data, outputs, splits.labels)
    write_cards(run_dir)  # model/ and adapter/ README.md, from the final metrics; before the sha256 that lists them
    # sha256 (integrity.MANIFEST_KEY): what a predictor loads, checked when it loads (a kill or a partial copy)
    update_manifest(run_dir, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), data_hash=splits.fingerprint(),
                    device=_device_name(device), sha256=run_manifest(run_dir), **base_identity(config, source))
    write_reports(run_dir)
    update_manifest(run_dir, status="complete")  # last: a run is complete only with all of its files


def _teacher_title(config: Config) -> dict:
    return {"teacher": f"teacher ({Path(config.distill.teacher).name})"} if config.distill else {}


# metrics.json's test section when train.evaluate_test is false (tuning trials): no score was taken from the test split
NOT_EVALUATED = {"evaluated": False, "note": "train.evaluate_test was false: the test split was not evaluated"}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def base_identity(config: Config, source: str) -> dict:
    """Where the base model was (a folder as an absolute path: a relative one would name another base when the run
    is used from another folder) and, for an adapter run, what its weights were, so a changed base is refused."""
    if not Path(source).is_dir():
        return {"model_source": source}  # a hub id
    identity = {"model_source": str(Path(source).resolve())}
    if config.method.name == "lora":
        identity["base_sha256"] = weights_digests(Path(source))
    return identity


def _save_model(model, full_state: dict | None, tokenizer, run_dir: Path, config: Config, labels: list[str]) -> None:
    """model/ (and adapter/ for LoRA), each built in a hidden folder and renamed into place, so a symlink at the
    name is replaced, never written through; `full_state` holds the gathered weights when they were sharded."""
    for name in ("model", "adapter"):  # hidden folders of a save that a kill cut short, before a --resume
        remove_stale(run_dir, name, lambda folder: True)
    if config.method.name == "lora":
        with staged_dir(run_dir / "adapter") as folder:
            _save_adapter(model, folder, full_state, portable_name(config.model.name))
            tokenizer.save_pretrained(folder)
            # The class names travel with the adapter. Neither peft nor transformers reads them from an adapter
            # folder (only the base model's config, which has none: LABEL_0...), so this is what to pass as
            # id2label; a config.json here would make transformers look for full weights in the folder.
            if labels:
                write_json(folder / "labels.json", labels)
        if not config.method.merge:
            return
        if not config.method.load_in_4bit:  # a bf16 frozen base (GPU) merges into float32 weights, as saved
            model = model.float()
        model = model.merge_and_unload()
    with staged_dir(run_dir / "model") as folder:
        model.save_pretrained(folder, state_dict=full_state)
        tokenizer.save_pretrained(folder)


def _save_adapter(model, folder: Path, full_state: dict | None, base_name: str) -> None:
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


def _sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _trainable_weights(accelerator: Accelerator, model) -> dict[str, torch.Tensor]:
    """The trainable tensors, whole: gathered from the shards under FSDP / DeepSpeed (a collective call)."""
    if not _sharded(accelerator):
        return trainable_state(accelerator.unwrap_model(model))
    names = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
    return {n: t.contiguous() for n, t in accelerator.get_state_dict(model).items() if n in names}


def _batch_size(config: Config, model, train: Encoded, accelerator: Accelerator, resuming: Path | None,
                progress: TrainProgress) -> int:
    """The per-process batch (resolving `auto`), after checking its estimated peak memory fits the device."""
    cfg = config.train
    seq = int(min(config.data.max_length, train.lengths.max()))  # the longest batch is the peak
    half = accelerator.mixed_precision != "no"
    free = free_bytes(accelerator.device)
    where = str(accelerator.device)
    # SDPA on a GPU keeps no attention maps (on a CPU it may fall back to the math kernel, which does)
    fused = accelerator.device.type == "cuda" and \
        getattr(model.config, "_attn_implementation", None) in ("sdpa", "flash_attention_2")
    saved = list_checkpoints(resuming) if resuming else []
    if saved:  # a resumed run keeps its batches, whatever `auto` would choose today
        batch = read_json(saved[-1] / "state.json").get("batch_size") or cfg.batch_size
    elif cfg.batch_size == "auto":
        batch = auto_batch_size(model, seq, half, cfg.gradient_checkpointing, free, where, knobs(config.task.name),
                                STATE_BYTES[cfg.optimizer], fused)
    else:
        batch = cfg.batch_size
    need = estimate(model, batch, seq, half, cfg.gradient_checkpointing, STATE_BYTES[cfg.optimizer], fused)
    check_fits(need, free, where, knobs(config.task.name))
    chosen = " (auto)" if cfg.batch_size == "auto" else ""
    free_text = f" of {free / 1e9:.1f} GB free" if free else ""
    progress.note(f"memory: batch {batch}{chosen} x {seq} tokens, estimated peak {need.describe()}{free_text}")
    return batch


def _last_step(run_dir: Path) -> int:
    steps = [e["step"] for e in read_history(run_dir) if e["type"] == "train"]
    return steps[-1] if steps else 0


def _check_finite(value: float, what: str, step: int, learning_rate: float) -> None:
    """Stop a diverged run before its NaN weights become a checkpoint or a model that answers with confidence."""
    if math.isfinite(value):
        return
    raise RunError(f"training diverged: the {what} became {value} at step {step} (learning rate {learning_rate:g}); "
                   f"the checkpoints saved before it are intact, but resuming would diverge again: start a new run "
                   f"with a smaller train.learning_rate (e.g. {learning_rate / 10:g})")


def _stop_asked(stop: StopFlag, accelerator: Accelerator) -> bool:
    """Whether any process was asked to stop; all processes must agree, so they stop at the same step."""
    if accelerator.num_processes == 1:
        return bool(stop)
    return bool(accelerator.reduce(torch.tensor(float(bool(stop)), device=accelerator.device), "sum") > 0)


def _check_checkpoint_fits(checkpoint: Path, world: int, accelerator: Accelerator) -> None:
    saved = read_json(checkpoint / "state.json").get("processes", 1)
    if saved != world:
        raise RunError(f"{checkpoint} was written by {saved} process(es); resume with --nproc {saved} "
                       f"(the batches each process trains on depend on it)")
    if _sharded(accelerator):
        raise RunError("--resume is not supported with distributed.strategy fsdp or deepspeed yet (their optimizer "
                       "state is sharded); start a new run, or train with ddp")


def _frozen_dtype(config: Config, device: torch.device, mixed_precision: str) -> torch.dtype | None:
    """bf16 for the frozen base under LoRA on a bf16 GPU, else None (float32). The base is only ever read under bf16
    autocast there, so bf16 halves its memory (an 8B model: 16 GB, not 32) as the anchors do; what trains stays
    float32 (the master weights). QLoRA's base is 4-bit already."""
    lora = config.method.name == "lora" and not config.method.load_in_4bit
    return torch.bfloat16 if lora and device.type == "cuda" and mixed_precision == "bf16" else None


def compile_layers(model: torch.nn.Module, backend: str) -> int:
    """torch.compile, in place, every layer of the model's stacks of identical layers (regional compilation): one
    layer's compiled code serves all of its copies, so compiling costs one layer, not the model. In place
    (`Module.compile`), so weights keep their names for saving, peft and hooks. Shapes may vary: after a first
    recompile torch marks the changing sizes dynamic rather than compiling each batch length anew."""
    layers = []
    for name, stack in model.named_modules():
        inside = any(name.startswith(f"{outer}.") for outer, _ in layers)
        if isinstance(stack, torch.nn.ModuleList) and len(stack) > 1 and len({type(m) for m in stack}) == 1 and not inside:
            layers += [(f"{name}.{i}", layer) for i, layer in enumerate(stack)]
    for _, layer in layers:
        layer.compile(backend=backend)
    return len(layers)


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process (forward and backward graphs): the compile warm-up."""
    from torch._dynamo.utils import calculate_time_spent

    return calculate_time_spent().get("total_wall_time", 0.0)


STATE_BYTES = {"adamw": 8, "adamw-8bit": 2, "paged-adamw-8bit": 2}  # optimizer state per trained weight


def check_optimizer(name: str) -> None:
    """An 8-bit optimizer needs bitsandbytes, and its paged variant CUDA: said before any file is written."""
    if name == "adamw":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"train.optimizer={name} needs the bitsandbytes package: pip install bitsandbytes "
                          f"(or train.optimizer=adamw)")
    if name.startswith("paged") and not torch.cuda.is_available():
        raise ConfigError(f"train.optimizer={name} pages its state between GPU and CPU memory and needs a CUDA GPU; "
                          f"on CPU use train.optimizer=adamw-8bit or adamw")


def _optimizer(config: Config, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """torch's AdamW, or bitsandbytes' 8-bit AdamW (paged or not), with the same groups and rate."""
    cfg = config.train
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=_fused_adamw(config, device))
    import bitsandbytes as bnb

    kind = bnb.optim.PagedAdamW8bit if cfg.optimizer == "paged-adamw-8bit" else bnb.optim.AdamW8bit
    return kind(groups, lr=cfg.learning_rate)


def _fused_adamw(config: Config, device: torch.device) -> bool | None:
    """AdamW's fused kernel (one pass over all weights) where torch has one for the device: measured on 2 CPU cores,
    a MiniLM-sized step took 152-178 ms against 251-273 ms for the default. Sharded strategies keep torch's default:
    their weights are DTensors or DeepSpeed's, which this was not measured with. None: torch's default."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return True if config.distributed.strategy == "ddp" and \
        device.type in _get_fused_kernels_supported_devices() else None


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (1-d tensors), as in BERT's recipe."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def _mixed_precision(precision: str) -> str:
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if precision == "fp16" and not cuda:
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on this machine")
    return {"fp32": "no"}.get(precision, precision)
