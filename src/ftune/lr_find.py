"""`train.learning_rate: auto`: a learning-rate range test before the run (Leslie Smith, "Cyclical Learning
Rates for Training Neural Networks", 2015; as fastai's `lr_find` and Lightning's `Tuner.lr_find` do it).

AdamW, as the run uses it, takes 60 steps on random batches of the training split (a small split is reused)
while the rate grows exponentially from 1e-6 to 0.1; the loss is smoothed, and the test stops once the smoothed
loss passes 4x its minimum. The rate chosen is one third of the rate at the smoothed minimum, clamped to
1e-6..1e-2. The test costs those 60 steps whatever the run's length; a run of under 16 steps skips it and takes
the method's default rate.
Then the weights (LoRA adapters and new heads too), the random state and train/eval mode are put back
exactly, so the run starts as it would with that rate written in the config.

    RUN/lr_find.json        the curve (rates, losses, smoothed losses) and the choice
    RUN/plots/lr_find.png   the curve, drawn again by the report
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from accelerate import Accelerator

from ftune import plots
from ftune.config import Config, default_learning_rate
from ftune.data import Encoded, collate
from ftune.distributed import on_main_then_share
from ftune.errors import RunError
from ftune.inference import to_device
from ftune.progress import TrainProgress
from ftune.run import read_json, update_manifest, write_json
from ftune.tasks import Task

FILE = "lr_find.json"
# Measured with MiniLM on 960 `mr` sentences (100 steps from 1e-7 to 1): below 1e-6 no method's loss moves, and by
# 0.1 full fine-tuning has diverged while LoRA's loss is back at ln 2. 60 steps over those 5 decades give 12 points a
# decade, about the density of fastai's 100 steps over 7; 30 steps over 7 decades (one pass over that split) showed
# no descent at all: their minimum sat at the first rate.
START, END = 1e-6, 0.1
STEPS = 60
BETA = 0.975        # smoothing: fastai's 0.98 per step at 14 points a decade, the same per decade at 12
DIVERGED = 4.0      # stop once the smoothed loss is this many times its minimum
LOWEST, HIGHEST = 1e-6, 1e-2  # below: a few epochs learn next to nothing; above: AdamW on transformers is unstable
FRACTION = 3
# A run shorter than this gets the method's default rate, untested: the test's STEPS would cost several times the
# run (5 rows: 186 s of test for a 1-step run), and a handful of steps learns little at any rate.
MIN_RUN_STEPS = 16
RULE = "one third of the rate at the smoothed loss minimum"


def choose_learning_rate(config: Config, model: torch.nn.Module, train: Encoded, batch_size: int, task: Task,
                         pad_id: int, param_groups: list[dict],
                         accelerator: Accelerator, run_dir: Path, resume: bool, progress: TrainProgress,
                         run_steps: int | None = None) -> float:
    """The rate to train with where the config says `train.learning_rate: auto`: the one the range test chooses (or
    chose, before an interruption: --resume reuses it). The config itself is left as it is. Every process runs the same test and takes the main process's choice, so no
    process waits in a collective meanwhile and all train with one rate; only the main process writes. A run of
    under MIN_RUN_STEPS optimizer steps (`run_steps`) gets the method's default instead."""
    saved = on_main_then_share(accelerator, lambda: saved_choice(run_dir) if resume else None)
    if saved is None and run_steps is not None and run_steps < MIN_RUN_STEPS:
        rate = default_learning_rate(config.task.name, config.method.name)
        source = (f"default for {config.method.name}: the run has {run_steps} optimizer steps, under "
                  f"{MIN_RUN_STEPS}, and a range test takes {STEPS}")
        on_main_then_share(accelerator, lambda: update_manifest(run_dir, learning_rate={"value": rate,
                                                                                        "source": source}))
        progress.note(f"learning rate {rate:.1e}: the {source}, so none was run (train.learning_rate=auto)")
        return rate
    if saved is not None:
        rate = saved
        line = f"learning rate {rate:.1e}: chosen by this run's range test before it was interrupted ({FILE})"
    else:
        micro = accelerator.num_processes * config.train.gradient_accumulation_steps  # the run's step, on one process
        curve = range_test(model, _batches(train, batch_size, micro, config.train.seed, pad_id), STEPS, param_groups,
                           accelerator, config.train.max_grad_norm, task)
        curve["examples_per_step"] = batch_size * micro
        found = curve["chosen"] is not None
        if not found:
            curve["chosen"] = default_learning_rate(config.task.name, config.method.name)
            curve["rule"] = f"no clear descent in the range test: the default for {config.method.name}"
        rate = on_main_then_share(accelerator, lambda: _save(run_dir, curve))
        how = "chosen by" if found else f"the default for {config.method.name}: no clear descent in"
        line = (f"learning rate {rate:.1e}: {how} a range test over {len(curve['rates'])} steps "
                f"({curve['seconds']:.1f} s), lr_find.png in the run")
    progress.note(line)
    return rate


def range_test(model: torch.nn.Module, batches: Iterator[list[dict[str, torch.Tensor]]], steps: int,
               param_groups: list[dict], accelerator: Accelerator, max_grad_norm: float | None, task: Task) -> dict:
    """Train `steps` AdamW steps at exponentially growing rates and return the curve and the chosen rate; the
    model, its mode and the random state are as before afterwards. Each item of `batches` is one step's
    micro-batches."""
    rates = [START * (END / START) ** (i / max(steps - 1, 1)) for i in range(steps)]
    beta = BETA ** (STEPS / steps)  # the same smoothing per decade of rate when a test takes another number of steps
    losses, smoothed, average, stopped = [], [], 0.0, False
    device = accelerator.device
    start = time.perf_counter()
    with restored(model):
        if not getattr(model, "hf_device_map", None):  # placed at load (4-bit): prepare() leaves it there too
            model.to(device)  # where prepare() would put it
        model.train()
        optimizer = torch.optim.AdamW(param_groups, lr=START)
        scaler = torch.amp.GradScaler(device.type, enabled=accelerator.mixed_precision == "fp16")
        for i, rate in enumerate(rates):
            for group in optimizer.param_groups:
                group["lr"] = rate
            micro = next(batches)
            loss = 0.0
            for batch in micro:
                with accelerator.autocast():
                    part = _loss(model, to_device(batch, device), task) / len(micro)
                scaler.scale(part).backward()
                loss += part.item()
            if max_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for g in param_groups for p in g["params"]], max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(loss):
                stopped = True
                break
            average = beta * average + (1 - beta) * loss
            losses.append(loss)
            smoothed.append(average / (1 - beta ** (i + 1)))  # without the bias toward the 0 it started from
            if smoothed[-1] > DIVERGED * min(smoothed):
                stopped = True
                break
    rates = rates[:len(losses)]
    chosen, at_minimum = suggest(rates, smoothed)
    return {"chosen": chosen, "rule": RULE, "minimum_at": at_minimum, "clamped_to": [LOWEST, HIGHEST],
            "start": START, "end": END, "planned_steps": steps, "stopped_early": stopped,
            "seconds": time.perf_counter() - start, "rates": rates, "losses": losses, "smoothed": smoothed}


def suggest(rates: list[float], smoothed: list[float]) -> tuple[float, float]:
    """The chosen rate and the rate at the smoothed minimum.

    A fraction of the rate at the minimum (fastai v1's rule), not the steepest descent: the minimum of a
    smoothed curve is one clear point even on a short or noisy curve, where the slope between neighbouring
    points is mostly noise. The smoothing lags, so the minimum sits a little past the best rate. fastai takes a
    tenth; on MiniLM's curves (`mr`) a tenth gave full fine-tuning 4e-5 and LoRA 1e-3 where the grid's best were
    2e-4 and 3e-3, and a third lands on those (1.3e-4 and 3.5e-3), still below where the loss turned up."""
    if not smoothed:  # the very first step's loss was not finite
        return LOWEST, START
    lowest = int(np.argmin(smoothed))
    at_minimum = rates[lowest]
    # A minimum among the first rates is noise, not a descent (seen: MiniLM on 960 `mr` sentences, 30 steps: the
    # minimum at 1e-7, and a tenth of it learned nothing). None: the caller falls back to the method's default
    # rather than pass that off as a choice. (A size test on the descent would also refuse the tiny test model's
    # curve, which falls 1% before it turns up and yet points at a rate that trains it well.)
    if lowest < max(2, len(smoothed) // 10):
        return None, at_minimum
    return float(min(HIGHEST, max(LOWEST, at_minimum / FRACTION))), at_minimum


@contextmanager
def restored(model: torch.nn.Module) -> Iterator[None]:
    """Put back the trainable weights, buffers, gradients, train/eval mode and every random state on leaving:
    what a range test changes. Copies are kept in CPU memory, and written back into the same tensors, so
    parameter groups built before still point at the model's weights."""
    saved = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach().to("cpu", copy=True) for n, b in model.named_buffers()}
    modes, rng = {m: m.training for m in model.modules()}, _random_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in saved:
                    p.copy_(saved[name])
                    p.grad = None
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        for module, training in modes.items():
            module.training = training
        _set_random_state(rng)


def saved_choice(run_dir: Path) -> float | None:
    """The rate this run's range test chose, when it has one (an interrupted run being resumed)."""
    path = run_dir / FILE
    if not path.is_file():
        return None
    saved = read_json(path)
    chosen = saved.get("chosen") if isinstance(saved, dict) else None
    if not isinstance(chosen, (int, float)) or not math.isfinite(chosen) or chosen <= 0:
        raise RunError(f"{path} holds no usable learning rate ('chosen'); restore it from a whole copy of the run, "
                       f"or start a new run")
    return float(chosen)


def _save(run_dir: Path, curve: dict) -> float:
    """lr_find.json, plots/lr_find.png and run.json's learning_rate entry (main process); the chosen rate."""
    write_json(run_dir / FILE, curve)
    plots.lr_range_test(curve, run_dir / "plots" / "lr_find.png")
    update_manifest(run_dir, learning_rate={"value": curve["chosen"], "source": describe(curve)})
    return curve["chosen"]


def describe(curve: dict) -> str:
    """run.json's `source` of an automatic rate, in one line."""
    clamped = " (clamped)" if curve["chosen"] != curve["minimum_at"] / FRACTION else ""
    return (f"auto (range test: {len(curve['rates'])} steps of {curve['examples_per_step']} examples from "
            f"{curve['start']:g} to {curve['end']:g}, {curve['seconds']:.1f} s; {RULE} {curve['minimum_at']:.1e}"
            f"{clamped}; {FILE})")


def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], task: Task) -> torch.Tensor:
    """The training loop's loss for one batch: the task's, as the mean over what it counts."""
    total, count = task.loss(task.forward(model, batch), batch)
    return total / max(float(count), 1e-9)  # a batch with no label taken adds nothing (not NaN)


def _batches(train: Encoded, batch_size: int, per_step: int, seed: int, pad_id: int
             ) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Each step's `per_step` random micro-batches, from successive shuffles of the split on a stream of their own."""
    rng = np.random.default_rng([seed, 1033])  # not the run's shuffles: those stay a function of (seed, epoch)
    pending = np.empty(0, dtype=np.int64)
    while True:
        step = []
        for _ in range(per_step):
            while len(pending) < batch_size:
                pending = np.concatenate([pending, rng.permutation(len(train))])
            step.append(collate(train, pending[:batch_size].tolist(), pad_id))
            pending = pending[batch_size:]
        yield step


def _random_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
