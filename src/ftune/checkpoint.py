"""Training checkpoints for exact resume: trainable weights, optimizer, scheduler, RNG, loop position.

Only trainable tensors are saved: frozen ones are reloaded unchanged from the base model, which
keeps LoRA and freeze checkpoints small. Each checkpoint is written to a temporary folder and
renamed into place, so a crash leaves the previous checkpoint whole.
"""

from __future__ import annotations

import re
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file

from ftune.errors import RunError
from ftune.run import read_json, write_json


@dataclass
class TrainState:
    """Where the loop is, and what it has seen; saved as JSON in every checkpoint."""

    epoch: int = 0             # current epoch (0-based)
    batch_in_epoch: int = 0    # micro-batches of this epoch already trained
    global_step: int = 0       # optimizer steps taken
    samples_seen: int = 0
    tokens_seen: int = 0       # real (unpadded) tokens trained on
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    evaluations: list[dict] = field(default_factory=list)
    base_model_test: dict | None = None  # test metrics of the model before fine-tuning
    base_model_validation: dict | None = None  # its validation loss (and metric): the start of the curve
    processes: int = 1                   # the batches each process trains on depend on it
    batch_size: int | None = None        # per process; what `batch_size: auto` chose, kept for --resume


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_weights(weights: dict[str, torch.Tensor], folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    with _writing(tmp):
        save_file(weights, str(tmp / "trainable.safetensors"))
    _replace_dir(tmp, folder)


def rng_state() -> dict:
    """This process's random state (dropout masks depend on it)."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    state = load_file(str(folder / "trainable.safetensors"))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in state]
    if missing:
        raise RuntimeError(f"checkpoint {folder} lacks trainable weights such as {missing[0]}")
    model.load_state_dict(state, strict=False)


def save_checkpoint(run_dir: Path, weights: dict[str, torch.Tensor], optimizer, scheduler, rng: list[dict],
                    state: TrainState, keep: int) -> Path:
    """Write checkpoints/step-N atomically, then drop the oldest beyond `keep`; `rng` has one state per process."""
    root = run_dir / "checkpoints"
    folder = root / f"step-{state.global_step:07d}"
    tmp = root / f"{folder.name}.tmp"
    with _writing(tmp):
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng, tmp / "rng.pt")
        write_json(tmp / "state.json", asdict(state))
    _replace_dir(tmp, folder)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return folder


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of a crashed save are ignored)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if re.fullmatch(r"step-\d+", p.name))  # not .tmp, .old or .damaged


def load_checkpoint(folder: Path, model, optimizer, scheduler, rank: int = 0) -> TrainState:
    """Restore everything `save_checkpoint` wrote; the loop then continues where it stopped."""
    load_weights(model, folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    saved = torch.load(folder / "rng.pt", weights_only=True)
    rng = saved[rank] if isinstance(saved, list) else saved  # one state per process (older runs: a single one)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainState(**read_json(folder / "state.json"))


def repair(run_dir: Path) -> list[str]:
    """Undo what a kill during a save left behind (a folder renamed aside but not yet replaced is put back),
    then set aside the newest checkpoints that cannot be read, so that --resume falls back to the last
    intact one. Returns a line for each one set aside."""
    root = run_dir / "checkpoints"
    for old in root.glob("*.old") if root.is_dir() else []:
        final = old.with_name(old.name.removesuffix(".old"))
        if final.exists():
            shutil.rmtree(old)
        else:
            old.rename(final)
    notes = []
    for folder in reversed(list_checkpoints(run_dir)):
        problem = _damage(folder)
        if problem is None:
            break
        folder.rename(folder.with_name(folder.name + ".damaged"))  # kept, not deleted: the user may want to look
        notes.append(f"checkpoint {folder.name} cannot be read ({problem}); set aside as {folder.name}.damaged")
    if notes:
        left = list_checkpoints(run_dir)
        notes.append(f"resuming from {left[-1].name}" if left else "no intact checkpoint is left: training starts over")
    return notes


def _damage(folder: Path) -> str | None:
    """What is wrong with a checkpoint, read whole as `load_checkpoint` would read it; None when it is intact."""
    try:
        load_file(str(folder / "trainable.safetensors"))
        for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
            torch.load(folder / name, weights_only=True)
        TrainState(**read_json(folder / "state.json"))
    except Exception as e:  # truncated, missing or garbled files fail in many ways; each means "not usable"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"{type(e).__name__}: {first[:120]}"
    return None


@contextmanager
def _writing(tmp: Path) -> Iterator[None]:
    """A fresh temporary folder to fill; a full or unwritable disk becomes one clear error, the old files untouched."""
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = [p.name for p in list_checkpoints(tmp.parent.parent)] if tmp.parent.name == "checkpoints" else []
        intact = f"; the earlier checkpoints ({', '.join(kept)}) are intact" if kept else ""
        raise RunError(f"cannot write {tmp.name.removesuffix('.tmp')} in {tmp.parent} ({e.strerror or e}){intact}: "
                       f"free space or fix permissions, then continue with --resume") from None


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():  # rename the old one aside first so a crash here still leaves one whole copy
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
