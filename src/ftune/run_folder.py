"""A finished run's folder, read and checked: what every reader of a run starts from (the files: ftune.run).

Below the predictors, which load a run's model from it; ftune.run.Run (ftune.Run) is this plus `predict`, which
loads that model, so it sits above them. Keeping the reading here lets imports go one way.
"""

from __future__ import annotations

import fcntl
import shlex
from pathlib import Path

from ftune import integrity
from ftune.config import validate
from ftune.errors import RunError

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
TASK_FILE = "task.json"


def damaged_run_fix(path: Path) -> str:
    """The fix for a run folder with a missing, cut-short or edited file."""
    return f"copy the run folder {path} again whole, or train the run again"


def live_status(path: Path, manifest: dict) -> str:
    """The run's status as it is now: a run.json that says `running` while no process holds the run's lock was
    killed (SIGKILL, a lost machine) before it could say so: `interrupted`, and `--resume` continues it."""
    status = str(manifest.get("status", "?"))
    if status != "running" or not (path / LOCK_FILE).is_file():
        return status
    try:
        with open(path / LOCK_FILE) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted: nobody trains here
    except OSError:  # held by a training process (BlockingIOError), or not ours to open
        return status
    return "interrupted"


class RunFolder:
    """A finished run directory: its config, labels, metrics and task state, each file checked as it is read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / RUN_FILE).is_file():
            raise RunError(f"{self.path} is not an ftune run directory (no {RUN_FILE}); pass the folder `ftune train` "
                           f"wrote")
        fix = damaged_run_fix(self.path)  # every file below may have been cut short or edited by hand
        self.manifest = integrity.read_json_file(self.path / RUN_FILE, fix)
        if not isinstance(self.manifest, dict):
            raise RunError(f"{self.path / RUN_FILE} is not an ftune run manifest; {fix}")
        if self.manifest.get("status") != "complete":
            raise RunError(f"run {self.path} did not finish (status: {live_status(self.path, self.manifest)}); "
                           f"continue it with `ftune train --output-dir {shlex.quote(str(self.path))} --resume`")
        self.config = validate(integrity.read_yaml_file(self.path / "config.yaml", fix), str(self.path))
        self.labels: list[str] = integrity.read_labels(self.path / "labels.json", fix)
        self.metrics: dict = integrity.read_json_file(self.path / "metrics.json", fix)
        if not isinstance(self.metrics, dict) or not isinstance(self.metrics.get("test"), dict):
            raise RunError(f"{self.path / 'metrics.json'} is not what ftune writes (a mapping with a 'test' section); "
                           f"{fix}")
        state = self.path / TASK_FILE  # what the task calibrated after training (e.g. thresholds), if anything
        self.task_state: dict = integrity.read_json_file(state, fix) if state.is_file() else {}
        if not isinstance(self.task_state, dict):
            raise RunError(f"{state} is not what ftune writes; {fix}")

    def headline(self) -> tuple[str, float | None]:
        """The run's headline score on test, as its task named it (metrics.json): (name, value or None)."""
        name = (self.metrics.get("scores") or {}).get("metrics", ["accuracy"])[0]  # runs before tasks named theirs
        return name, (self.metrics["test"].get("finetuned") or {}).get(name)

    def __repr__(self) -> str:
        name, value = self.headline()
        return f"Run({str(self.path)!r}, test_{name}={'n/a' if value is None else f'{value:.4f}'})"
