"""The training loop, on Accelerate, readable top to bottom: set up (ftune.train_setup) -> for each epoch: batches ->
forward/backward -> step -> log, evaluate, checkpoint -> finish (best weights, calibration, test scores), then the
run's files (ftune.run_files).

With several processes every one builds the same global batches (batch_size x processes) from the
seed and trains on its own slice of each; only the main process writes files.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from ftune import recipe
from ftune.checkpoint import list_checkpoints, load_weights, rng_state, save_checkpoint, save_weights
from ftune.config import Config
from ftune.data import collate
from ftune.distributed import (gathered, gathered_outputs, make_accelerator, on_main_then_share, sharded, stop_asked,
                               trainable_weights)
from ftune.errors import ConfigError, RunError, RunPruned, TrainingStopped
from ftune.inference import to_device
from ftune.memory import knobs, out_of_memory_message
from ftune.optim import check_optimizer, compile_seconds, mixed_precision
from ftune.predictors import Run
from ftune.progress import TrainProgress
from ftune.run import discard_run, last_step, open_run_dir, release_run_dir, update_manifest
from ftune.run_files import write_run
from ftune.slices import scored
from ftune.stopping import StopFlag, stop_on_signals
from ftune.tasks import Task, task_for
from ftune.train_setup import (Setup, check_max_length, epoch_batches, preflight, set_up,  # noqa: F401 (preflight: the CLI's)
                               starting_point)
from ftune.trackers import connect
from ftune.tracking import Tracker


def train(config: Config, resume: bool = False, quiet: bool = False,
          on_evaluate: Callable[[int, dict], None] | None = None) -> Run:
    """Fine-tune as configured and return the finished run; `resume` continues an interrupted one.

    `on_evaluate(step, scores)` is called after each validation evaluation; raising RunPruned there ends the run
    as `pruned` (ftune.tune prunes trials this way)."""
    cfg = config.train
    # A precision or strategy this machine lacks is a config error, found before anything else.
    accelerator = make_accelerator(config.distributed, mixed_precision(cfg.precision), cfg.batch_size,
                                   cfg.gradient_accumulation_steps, cfg.max_grad_norm)
    check_optimizer(cfg.optimizer)
    with accelerator.main_process_first():  # the first process fetches built-in data and fills the caches
        task = task_for(config)
        splits = task.load_splits(cfg.seed)  # bad data or model: stop before any file
        config = recipe.resolved(config, len(splits.train), accelerator.num_processes, len(splits.labels))
        cfg = config.train
        source, tokenizer = starting_point(config)  # the base model, or the run model.init_from names
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
            progress = TrainProgress(quiet or not main)
            setup = set_up(config, task, splits, source, tokenizer, run_dir, resume, progress, accelerator)
            fit = _Fit(config, task, splits, setup, run_dir, progress, tracker, accelerator, stop, on_evaluate)
            fit.train()
            fit.finish(source, tokenizer)
    except BaseException as e:  # never leave a crashed run looking complete
        status = "interrupted" if isinstance(e, (KeyboardInterrupt, TrainingStopped)) else "failed"
        status = "pruned" if isinstance(e, RunPruned) else status
        tracker.finish(run_dir, status)
        if main and isinstance(e, ConfigError) and not resume and not list_checkpoints(run_dir):
            discard_run(run_dir, keep_folder=existed)  # found before any training (e.g. memory): the command can rerun
            raise
        if main:
            update_manifest(run_dir, status=status, error=f"{type(e).__name__}: {e}"[:500])
        if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
            raise RunError(out_of_memory_message(e, last_step(run_dir), knobs(config.task.name))) from None
        raise
    finally:
        release_run_dir(run_dir)
    tracker.finish(run_dir, "complete")
    accelerator.wait_for_everyone()  # the other processes return the run only once it is complete
    return Run(run_dir, trust_remote_code=config.model.trust_remote_code)  # this config's own choice, this process


class _Fit:
    """One run's training in named phases: train (step, log, evaluate, checkpoint) -> finish, on what ftune.train_setup
    set up. The task supplies the model, the loss and the scores; everything here is the same for every task."""

    def __init__(self, config: Config, task: Task, splits, setup: Setup, run_dir: Path, progress: TrainProgress,
                 tracker: Tracker, accelerator: Accelerator, stop: StopFlag,
                 on_evaluate: Callable[[int, dict], None] | None):
        self.config, self.task, self.splits, self.setup, self.state = config, task, splits, setup, setup.state
        self.model, self.data = setup.model, setup.data
        self.run_dir, self.progress, self.tracker, self.stop = run_dir, progress, tracker, stop
        self.accelerator, self.on_evaluate = accelerator, on_evaluate
        self.main, self.world, self.rank = accelerator.is_main_process, accelerator.num_processes, \
            accelerator.process_index
        self.device = accelerator.device
        self.log = None

    # --- train --------------------------------------------------------------------------------------------------
    def train(self) -> None:
        cfg, state = self.config.train, self.state
        if state.base_model_test is None and cfg.baselines and cfg.evaluate_test:  # the base model, before training
            state.base_model_test = self.evaluate("test")[0]
            state.base_model_validation = self._headline(self.evaluate("validation")[0])
        self.log = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") if self.main else None
        self.model.train()
        self.running_loss, self.running_batches = torch.zeros((), device=self.device), 0
        self.progress.start(self.setup.total_steps, state.global_step)
        while state.epoch < cfg.epochs and not state.stopped_early:
            batches = epoch_batches(self.config, self.data["train"], self.setup.global_batch, self.world, state.epoch)
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

    def step(self, batches: list[np.ndarray], b: int) -> bool:
        """Micro-batch b of the epoch: forward, the task's loss, backward; an optimizer step at the end of each
        accumulation group, then logging, evaluation and checkpoints as due. True: stop the epoch (early stop)."""
        cfg, state, accelerator = self.config.train, self.state, self.accelerator
        mine = np.array_split(batches[b], self.world)[self.rank]
        batch = to_device(collate(self.data["train"], mine, self.setup.pad_id, self.setup.pad_multiple,
                                  self.config.data.max_length), self.device)
        group_start = b - b % cfg.gradient_accumulation_steps
        group_size = min(cfg.gradient_accumulation_steps, len(batches) - group_start)
        last_in_group = b == group_start + group_size - 1
        # Gradients are averaged over processes at the group's last micro-batch only (no_sync before it).
        with accelerator.no_sync(self.model) if not last_in_group else nullcontext():
            with accelerator.autocast():
                out = self.task.forward(self.model, batch)  # the logits, or what the task's loss reads instead
            total, count = self.setup.loss(out, batch)
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
        self.setup.optimizer.step()
        self.setup.scheduler.step()
        self.setup.optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        self.log_step(b + 1, len(batches))
        evaluating = bool(cfg.eval_steps) and state.global_step % cfg.eval_steps == 0
        if evaluating:
            self._add_train_time()  # evaluation time is not training time
            self.evaluate_and_checkpoint()
            self.tick = time.perf_counter()
            if state.stopped_early:
                return True
        asked = stop_asked(self.stop, accelerator)
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
        _check_finite(mean_loss, "training loss", state.global_step, self.setup.learning_rate)
        entry = {"type": "train", "step": state.global_step, "epoch": state.epoch + batches_done / batches,
                 "loss": mean_loss, "lr": self.setup.scheduler.get_last_lr()[0],
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
        return scored(self.task, self._rows(split), self.data[split], self.splits, split, interval_seed)  # + slices

    def _rows(self, split: str) -> list:
        # A bf16 frozen base is read under bf16 autocast here too, as in training.
        return gathered_outputs(self.accelerator, self.model, self.data[split], self.config.train.eval_batch_size,
                                self.setup.pad_id, self.task.rows, self.task.forward, self.setup.frozen_dtype)

    def evaluate_and_checkpoint(self) -> None:
        cfg, state = self.config.train, self.state
        scores = self.evaluate("validation")[0]
        _check_finite(scores["loss"], "validation loss", state.global_step, self.setup.learning_rate)
        in_epoch = self.setup.batch_counts[min(state.epoch, cfg.epochs - 1)]  # after the last epoch, epoch == epochs
        result = {"step": state.global_step, "epoch": state.epoch + state.batch_in_epoch / in_epoch,
                  "validation": self._headline(scores)}
        state.evaluations.append(result)
        self.record({"type": "eval", **result})
        weights = trainable_weights(self.accelerator, self.model)  # every process joins: shards are gathered
        last = not recipe.chooses_checkpoint(len(self.data["validation"]))  # a handful of texts: the last weights
        if last or self.task.is_better(cfg.metric, scores[cfg.metric], state.best_metric):
            state.best_metric, state.best_step = scores[cfg.metric], state.global_step
            state.evals_without_improvement = 0
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
                          self.state.global_step, self.setup.learning_rate)
        weights = weights if weights is not None else trainable_weights(self.accelerator, self.model)
        rng = gathered(self.accelerator, rng_state())  # each process's random state, for exact resume
        folder = save_checkpoint(self.run_dir, weights, self.setup.optimizer, self.setup.scheduler, rng, self.state,
                                 self.config.train.save_total_limit) if self.main else None
        self.accelerator.wait_for_everyone()
        return folder.name if folder else ""

    def _headline(self, scores: dict) -> dict:
        return {k: scores[k] for k in self.task.metrics if k in scores}

    # --- finish -------------------------------------------------------------------------------------------------
    def finish(self, source: str, tokenizer) -> None:
        """The best weights back, the task's calibration on validation, the test scores; then the files (main)."""
        cfg, accelerator, setup = self.config.train, self.accelerator, self.setup
        best = self.run_dir / "checkpoints" / "best"
        if best.is_dir():
            load_weights(accelerator.unwrap_model(self.model), best)
        if self.task.calibrates:  # e.g. decision thresholds, fixed on validation before test is read
            self.task.state = self.task.calibrate(self._rows("validation"), self.data["validation"], self.splits.labels)
        test_metrics, outputs = self.evaluate("test", interval_seed=cfg.seed) if cfg.evaluate_test else (None, None)
        full_state = accelerator.get_state_dict(self.model) if sharded(accelerator) else None  # every process joins
        if self.main:
            write_run(self.config, self.task, self.splits, self.data, setup.summary, self.run_dir,
                      accelerator.unwrap_model(self.model), full_state, tokenizer, self.state, test_metrics, outputs,
                      self.device, source, setup.learning_rate, setup.teacher_test,
                      compile_seconds() - setup.compile_start if setup.compile_start is not None else None)
            self.progress.note(f"report: {self.run_dir / 'report.html'}")


def _check_finite(value: float, what: str, step: int, learning_rate: float) -> None:
    """Stop a diverged run before its NaN weights become a checkpoint or a model that answers with confidence."""
    if math.isfinite(value):
        return
    raise RunError(f"training diverged: the {what} became {value} at step {step} (learning rate {learning_rate:g}); "
                   f"the checkpoints saved before it are intact, but resuming would diverge again: start a new run "
                   f"with a smaller train.learning_rate (e.g. {learning_rate / 10:g})")
