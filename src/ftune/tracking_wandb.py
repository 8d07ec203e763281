"""Weights & Biases tracking: one W&B run per ftune run, offline (synced later) when no account is set up.

The same mirror as the other trackers (see tracking.py): the resolved config as W&B config, every
metrics.jsonl entry at its step, the final test metrics in the run summary, the run's report and
metrics as the run's files, and with tracking.log_model the model/ or adapter/ folder as a model artifact.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from ftune.config import Config, TrackingConfig
from ftune.errors import ConfigError
from ftune.run import read_json, update_manifest
from ftune.tracking import ARTIFACTS, Tracker, entry_metrics, final_metrics

NOT_LOGGED_IN = "not logged in to W&B (no WANDB_API_KEY, no `wandb login`)"


def offline_reason() -> str | None:
    """Why a run will be offline (None: online): the user's WANDB_MODE, or no credentials. Never asks the server."""
    import wandb

    mode = os.environ.get("WANDB_MODE")
    if mode:  # the user's explicit choice, which wandb.init reads itself
        return f"WANDB_MODE={mode}" if mode in ("offline", "dryrun") else None
    try:
        logged_in = wandb.login(verify=False, prompt=False)  # env, ~/.netrc or settings; no prompt, no request
    except wandb.errors.Error as e:
        raise ConfigError(f"W&B credentials: {e}; fix WANDB_API_KEY or run `wandb login` again "
                          f"(or unset them to log offline)") from None
    return None if logged_in else NOT_LOGGED_IN


def sync_command(wandb_dir: str, run_id: str) -> str:
    """The command that uploads an offline run later, every part of it (a resumed run has one folder per start)."""
    return f"wandb sync {Path(wandb_dir) / f'offline-run-*-{run_id}'}"


def summary_line(tracking: dict) -> str:
    """One line for the end of `ftune train`: where the W&B run is, and how to upload it if it is offline."""
    if tracking.get("mode") == "disabled":
        return "W&B: WANDB_MODE=disabled, nothing was logged"
    if tracking.get("url"):
        return f"W&B: {tracking['url']}"
    upload = sync_command(tracking["dir"], tracking["run_id"])
    return f"W&B: offline run {tracking['run_id']} in {tracking['dir']}  (upload: {upload})"


class WandbTracker(Tracker):
    """--resume continues the same W&B run: its id is in run.json's tracking entry."""

    name = "wandb"

    def __init__(self, cfg: TrackingConfig):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("tracking.backend=wandb needs the wandb package: pip install 'ftune[wandb]'") from None
        os.environ.setdefault("WANDB_SILENT", "true")  # ftune says where the run went; wandb's lines would cut the bar
        self.cfg, self.run = cfg, None
        self.root = Path(cfg.uri).expanduser().resolve() if cfg.uri else None  # None: the run directory
        if self.root is not None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"tracking.uri {cfg.uri}: cannot create the W&B directory ({e.strerror}); "
                                  f"fix tracking.uri or pass --tracking none") from None
        self.offline = offline_reason()

    def _start(self, run_dir: Path, config: Config, resume: bool) -> None:
        import wandb

        root = self.root or run_dir.resolve()
        previous = read_json(run_dir / "run.json").get("tracking", {}) if resume else {}
        same = previous.get("backend") == "wandb" and previous.get("project") == self.cfg.experiment \
            and bool(previous.get("run_id"))
        try:
            self.run = wandb.init(
                project=self.cfg.experiment, name=run_dir.name, dir=str(root), config=config.model_dump(mode="json"),
                id=previous["run_id"] if same else None, resume="allow" if same else None,
                mode="offline" if self.offline == NOT_LOGGED_IN else None, reinit="create_new",
                settings=wandb.Settings(console="off"))  # the live progress bar would fill the Logs tab with redraws
        except wandb.errors.Error as e:
            raise ConfigError(f"tracking.backend=wandb: W&B could not start the run ({str(e).splitlines()[0][:200]}); "
                              f"check `wandb login` and WANDB_* variables, set WANDB_MODE=offline, "
                              f"or pass --tracking none") from None
        mode = "disabled" if self.run.disabled else "offline" if self.run.offline else "online"
        wandb_dir = self.run.settings.wandb_dir
        update_manifest(run_dir, tracking={"backend": "wandb", "mode": mode, "dir": wandb_dir,
                                           "project": self.cfg.experiment, "run_id": self.run.id, "url": self.run.url})
        if mode == "offline":
            print(f"W&B: {self.offline or 'offline'}, so the run is logged offline in {wandb_dir}; "
                  f"upload it later with: {sync_command(wandb_dir, self.run.id)}", file=sys.stderr)
        elif mode == "online":
            print(f"W&B: {self.run.url}", file=sys.stderr)

    def _log(self, entry: dict) -> None:
        self.run.log(entry_metrics(entry), step=entry["step"])

    def finish(self, run_dir: Path, status: str) -> None:
        super().finish(run_dir, status)
        if self.run is not None:  # tracking stopped after a failure: still close the W&B run, marked failed
            with contextlib.suppress(Exception):  # the guard has warned already
                self._close(1)

    def _finish(self, run_dir: Path, status: str) -> None:
        try:
            if status == "complete":
                self.run.summary.update(final_metrics(read_json(run_dir / "metrics.json")))
                self._save_files(run_dir)
            elif status == "interrupted":
                self.run.mark_preempting()  # W&B's state for a run that will be resumed
        finally:  # a failed upload still closes the W&B run, so it does not linger until the process ends
            self._close(0 if status == "complete" else 1)

    def _close(self, exit_code: int) -> None:
        run, self.run = self.run, None
        run.finish(exit_code=exit_code)

    def _save_files(self, run_dir: Path) -> None:
        import wandb

        for name in ARTIFACTS:
            path = run_dir / name
            for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if file.is_file():  # linked into the W&B run's files/ and uploaded from there: nothing is copied
                    self.run.save(str(file), base_path=str(run_dir), policy="now", glob=False)
        if self.cfg.log_model:
            for folder in ("model", "adapter"):
                if (run_dir / folder).is_dir():
                    artifact = wandb.Artifact(f"run-{self.run.id}-{folder}", type="model")
                    artifact.add_dir(str(run_dir / folder), policy="immutable")  # the run's files stay: no staging copy
                    self.run.log_artifact(artifact)
