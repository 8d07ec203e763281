"""The tracking backends by name (tracking.backend), above their modules so neither imports the other."""

from __future__ import annotations

from ftune.schema import TrackingConfig
from ftune.tracking import MlflowTracker, TensorBoardTracker, Tracker
from ftune.tracking_wandb import WandbTracker


def connect(cfg: TrackingConfig) -> Tracker:
    """The configured tracker, its store checked now: a bad URI stops us before any run file is written."""
    backends = {"mlflow": MlflowTracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker}
    return backends[cfg.backend](cfg) if cfg.backend in backends else Tracker()
