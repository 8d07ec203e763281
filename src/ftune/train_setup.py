"""Everything a run trains with, set up once before the loop (ftune.training): the model under its method (and a
distillation teacher's answers), the encoded data, the batch size and the step count, the learning rate (a number,
even where the config says `auto`), the optimizer and schedule, and the state a --resume continues from. Also the
checks a launcher runs before it starts processes (`preflight`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from transformers import get_scheduler

from ftune.checkpoint import TrainState, list_checkpoints, load_checkpoint, repair
from ftune.config import Config
from ftune.data import Encoded, Splits
from ftune.data.batching import train_batches
from ftune.distill import cut_student, distill_loss, load_teacher, teacher_scores, with_teacher
from ftune.distributed import check_strategy, sharded
from ftune.errors import ConfigError, RunError
from ftune.lr_find import choose_learning_rate
from ftune.memory import auto_batch_size, check_fits, estimate, free_bytes, knobs
from ftune.methods import Method, count_parameters, frozen_to, method_for
from ftune.init_from import model_source
from ftune.models import load_tokenizer
from ftune.optim import (STATE_BYTES, check_optimizer, compile_layers, compile_seconds, frozen_dtype, make_optimizer,
                         mixed_precision, param_groups)
from ftune.progress import TrainProgress
from ftune.run import check_run_dir, read_json
from ftune.tasks import Task, task_for


@dataclass
class Setup:
    """What the loop reads; set here once, never replaced while it runs."""
    model: torch.nn.Module
    data: dict[str, Encoded]
    summary: dict  # the data summary of the report, with `warnings`
    loss: Callable  # the task's loss (with a teacher its blend with the soft labels), with the method's term beside
    batch_size: int  # per process
    global_batch: int  # batch_size x processes
    batch_counts: list[int]  # micro-batches of each epoch
    total_steps: int
    learning_rate: float
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: TrainState
    frozen_dtype: torch.dtype | None
    pad_id: int
    pad_multiple: int
    teacher_test: dict | None = None  # the teacher's test scores, a row of the report
    compile_start: float | None = None  # torch.compile seconds of this process before this run


def starting_point(config: Config) -> tuple[str, Any]:
    """(the folder or hub id of the run's first weights, their tokenizer): the base model, or the run that
    model.init_from names (ftune.init_from)."""
    source = model_source(config)
    return source, load_tokenizer(source, config.model.trust_remote_code)


def data_report(config: Config, read: tuple[Task, Splits] | None = None) -> tuple[Task, Splits, Any, dict, list[str]]:
    """What `ftune data validate` (and `ftune ui`) show before any training: the task, its splits (`read`: the task
    and the splits it read already; one task, since reading may fix its state, as regression's scale), the tokenizer
    of the run's first weights (it measures the texts), the data summary and its warnings."""
    if read is None:
        task = task_for(config)
        read = task, task.load_splits(config.train.seed)
    task, splits = read
    tokenizer = starting_point(config)[1]
    summary, warnings = task.summarize(splits, task.encode_splits(splits, tokenizer))
    return task, splits, tokenizer, summary, warnings


def set_up(config: Config, task: Task, splits, source: str, tokenizer, run_dir: Path, resume: bool,
           progress: TrainProgress, accelerator: Accelerator) -> Setup:
    cfg, world = config.train, accelerator.num_processes
    dtype = frozen_dtype(config, accelerator.device, accelerator.mixed_precision)
    method = method_for(config)  # one instance: a method's loss may read what its wrapping of the model records
    model, data, summary, teacher_test, compile_start = _model_and_data(config, task, method, splits, source,
                                                                        tokenizer, accelerator.device, dtype, progress)
    if resume:
        if accelerator.is_main_process:  # a kill during a save, or a damaged file: put back or set aside first
            for line in repair(run_dir):
                progress.note(line)
        accelerator.wait_for_everyone()
    batch_size = _batch_size(config, model, data["train"], accelerator, run_dir if resume else None, progress)
    # Counted from the batches themselves (a pure function of seed and epoch): with train.max_tokens their number
    # changes with each epoch's shuffle, and the schedule must end exactly at the last step.
    counts = [len(epoch_batches(config, data["train"], batch_size * world, world, epoch)) for epoch in range(cfg.epochs)]
    total_steps = sum(math.ceil(n / cfg.gradient_accumulation_steps) for n in counts)
    task.prepare_loss(data["train"], splits.labels, accelerator.device)
    pad_id = tokenizer.pad_token_id or 0
    rate = cfg.learning_rate if cfg.learning_rate != "auto" else choose_learning_rate(
        config, model, data["train"], batch_size, task, pad_id, param_groups(model, cfg.weight_decay), accelerator,
        run_dir, resume, progress, run_steps=total_steps)
    optimizer = make_optimizer(config, rate, param_groups(model, cfg.weight_decay), accelerator.device)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_training_steps=total_steps,
                              num_warmup_steps=round(total_steps * cfg.warmup_ratio))
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler: stepped by the loop
    started = task.before_training(model, data, pad_id, accelerator.device, dtype)  # before a resume's weights load
    if started:
        progress.note(started)
    multiple = cfg.pad_to_multiple_of
    distill = config.distill
    loss = distill_loss(task.loss, distill.temperature, distill.alpha) if distill else task.loss
    setup = Setup(model, data, summary, method.training_loss(loss), batch_size, batch_size * world, counts,
                  total_steps, rate, optimizer, scheduler,
                  _state(run_dir, resume, model, optimizer, scheduler, accelerator, batch_size, progress), dtype, pad_id,
                  (16 if accelerator.device.type == "cuda" else 1) if multiple == "auto" else multiple,
                  teacher_test, compile_start)
    _describe(config, setup, accelerator, progress)
    return setup


def _model_and_data(config: Config, task: Task, method: Method, splits, source: str, tokenizer, device,
                    dtype: torch.dtype | None, progress: TrainProgress):
    """The model under its method (its frozen weights in `dtype`, compiled when asked), the encoded splits with their
    summary, and with a teacher its soft labels on the training texts and its test scores."""
    distill = config.distill
    torch.manual_seed(config.train.seed)  # the new head's initial weights are part of the run's seed
    teacher = load_teacher(config, splits.labels, device) if distill else None
    if distill and distill.layers:  # the student: the teacher cut to fewer layers, from the teacher's weights
        model = cut_student(teacher, distill.layers, distill.pick)
    else:
        model = task.load_model(source, splits.labels, config.model.trust_remote_code, config.method)
    if config.train.gradient_checkpointing:
        # The current v5 name; transformers 5.17 (seen on the GPU machine) has only the older one.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    model = method.wrap(model, task.peft_type)
    if dtype:
        frozen_to(model, dtype)
    compile_start = None
    if config.train.compile:
        compile_start = compile_seconds()  # the process's count so far (another run's, in one process)
        compiled = compile_layers(model, "inductor" if config.train.compile is True else config.train.compile)
        progress.note(f"compile: {compiled} layers compiled in place ({config.train.compile}); each new batch "
                      f"shape compiles once, on its first step")
    data = task.encode_splits(splits, tokenizer)
    summary, warnings = task.summarize(splits, data)
    for line in warnings:
        progress.note(f"data warning: {line}")
    teacher_test = None
    if teacher:  # its answers once, before training; then it is let go (the student's memory)
        theirs = teacher.task.encode_splits(splits, teacher.tokenizer)  # the splits as the teacher reads them
        data["train"] = with_teacher(teacher, theirs["train"], config, data["train"], tokenizer)
        if config.train.evaluate_test and config.train.baselines:
            teacher_test = teacher_scores(teacher, theirs["test"], splits.labels, config.train.seed)
        progress.note(f"distilling {teacher.run_dir} (T={distill.temperature:g}, alpha={distill.alpha:g}) "
                      f"into {distill.layers or 'all'} layers of {config.model.name} over "
                      f"{len(data['train'])} texts")
    return model, data, {**summary, "warnings": warnings}, teacher_test, compile_start


def _state(run_dir: Path, resume: bool, model, optimizer, scheduler, accelerator: Accelerator, batch_size: int,
           progress: TrainProgress) -> TrainState:
    """A new run's state, or the last checkpoint's (weights, optimizer and schedule restored into place)."""
    checkpoints = list_checkpoints(run_dir)
    if not (resume and checkpoints):
        if accelerator.is_main_process:
            (run_dir / "metrics.jsonl").write_text("")
        return TrainState(processes=accelerator.num_processes, batch_size=batch_size)
    _check_checkpoint_fits(checkpoints[-1], accelerator)
    state = load_checkpoint(checkpoints[-1], accelerator.unwrap_model(model), optimizer, scheduler,
                            accelerator.process_index)
    progress.note(f"resuming from {checkpoints[-1].name} (epoch {state.epoch + 1}, batch {state.batch_in_epoch})")
    return state


def _describe(config: Config, setup: Setup, accelerator: Accelerator, progress: TrainProgress) -> None:
    cfg, data = config.train, setup.data
    trainable, total = count_parameters(setup.model)
    precision = f" {accelerator.mixed_precision}" if accelerator.mixed_precision != "no" else ""
    progress.note(
        f"{config.method.name}: {trainable:,} of {total:,} parameters train | train {len(data['train'])}, "
        f"validation {len(data['validation'])}, test {len(data['test'])} | batch {setup.batch_size} x "
        f"{accelerator.num_processes} process(es) x {cfg.gradient_accumulation_steps} accumulation = "
        f"{setup.global_batch * cfg.gradient_accumulation_steps} per step | {setup.total_steps} steps on "
        f"{accelerator.device}{precision}" + (" | frozen base in bf16" if setup.frozen_dtype else ""))
    for key, choice in config._chosen.items():
        progress.note(f"{key} {choice['value']}: chosen from the data ({choice['reason']}; "
                      f"{choice.get('key', 'train.' + key)} sets another)")
    if config._learning_rate_is_default:
        source = method_for(config).learning_rate_source
        progress.note(f"learning rate {cfg.learning_rate:g}: the default for {config.method.name} "
                      f"({source + '; ' if source else ''}train.learning_rate sets another)")


def epoch_batches(config: Config, train: Encoded, global_batch: int, world: int, epoch: int) -> list[list[int]]:
    """The epoch's global batches; each process trains on its slice of each (a token budget is per process)."""
    cfg = config.train
    budget = cfg.max_tokens * world if cfg.max_tokens else None
    batches = train_batches(train.lengths, global_batch, cfg.seed, epoch, cfg.group_by_length, budget)
    return [b for b in batches if len(b) >= world]  # every process needs a slice (drops < `world`)


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


def _check_checkpoint_fits(checkpoint: Path, accelerator: Accelerator) -> None:
    saved = read_json(checkpoint / "state.json").get("processes", 1)
    if saved != accelerator.num_processes:
        raise RunError(f"{checkpoint} was written by {saved} process(es); resume with --nproc {saved} "
                       f"(the batches each process trains on depend on it)")
    if sharded(accelerator):
        raise RunError("--resume is not supported with distributed.strategy fsdp or deepspeed yet (their optimizer "
                       "state is sharded); start a new run, or train with ddp")


def preflight(config: Config, resume: bool, check_output: bool = True) -> Splits:
    """The user errors `train` would meet, met once here, before a launcher starts processes that would each meet them.

    `check_output` is off on machines other than the first of several: the first one's run directory
    may already exist on shared storage by the time they check."""
    check_strategy(config.distributed)
    mixed_precision(config.train.precision)
    check_optimizer(config.train.optimizer)
    splits = task_for(config).load_splits(config.train.seed)  # also fetches built-in data
    check_max_length(config, *starting_point(config))
    if check_output:
        check_run_dir(config, resume, splits.fingerprint())
    return splits  # read once: a caller that needs them (ftune.budget) does not read the data again


def check_max_length(config: Config, source: str, tokenizer) -> None:
    """data.max_length within the positions the model has: past them the forward pass fails mid-run."""
    from transformers import AutoConfig

    positions = getattr(AutoConfig.from_pretrained(source, trust_remote_code=config.model.trust_remote_code),
                        "max_position_embeddings", None)
    # The tokenizer's limit where it has one (RoBERTa: 512 of 514 positions, two are offsets); unset is a huge sentinel.
    limits = [n for n in (positions, tokenizer.model_max_length) if n and n < 1_000_000]
    limit = min(limits, default=None)
    added = method_for(config).added_positions  # what the method puts before each text (prompt tuning's tokens)
    if limit and config.data.max_length + added > limit:
        hint = ", or task.long_text.strategy=chunk to read longer texts in windows" if hasattr(config.task, "long_text") else ""
        taken = f", {added} of them taken by method {config.method.name}" if added else ""
        raise ConfigError(f"data.max_length={config.data.max_length} is more than {config.model.name} reads "
                          f"({limit} tokens{taken}); set data.max_length={limit - added} or less{hint}")
