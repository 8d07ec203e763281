"""Experiment tracking: the run's params, metric history and artifacts, also in MLflow, TensorBoard or W&B.

The run directory stays the source of truth (metrics.jsonl, metrics.json, report). A tracker
mirrors it, so a tracking store that breaks mid-run costs a warning, never the run.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

from ftune.config import Config, TrackingConfig, dotted
from ftune.errors import ConfigError
from ftune.run import read_json, update_manifest

LOCAL_STORE = Path("mlruns")  # the default store, in the project directory (where ftune runs)
ARTIFACTS = ("report.html", "report.md", "plots", "config.yaml", "labels.json", "metrics.json", "metrics.jsonl",
             "run.json", "test_predictions.csv", "lr_find.json")


def local_store_uri(store: Path = LOCAL_STORE) -> str:
    return f"sqlite:///{(store / 'mlflow.db').resolve()}"


# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces, prompts); with it, on the table
# of training runs, which is what ftune logs.
EXPERIMENT_KIND = "mlflow.experimentKind"


def runs_table_url(store: str | None, host: str, port: int, experiment: str = "ftune") -> str:
    """The UI's address of the experiment's runs table when the store has it, else the UI's home page."""
    from mlflow.tracking import MlflowClient

    uri = store if store and "://" in store else local_store_uri(Path(store) if store else LOCAL_STORE)
    home = f"http://{host}:{port}"
    try:
        found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001  (an unreadable store: `mlflow ui` says why itself)
        return home
    return f"{home}/#/experiments/{found.experiment_id}/runs" if found else home


def ui_command(store: str | None, host: str, port: int) -> list[str]:
    """`mlflow ui` on a store: a URI, a folder holding mlflow.db, or the default local store."""
    uri = store if store and "://" in store else local_store_uri(Path(store) if store else LOCAL_STORE)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"no MLflow store at {uri.removeprefix('sqlite:///')}: train a run with tracking on first, "
                          f"or pass --store with the folder (or URI) that holds it")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
               "--workers", "1"]
    if uri.startswith("sqlite:///"):  # runs logged through this server keep their artifacts beside the database too
        command += ["--artifacts-destination", str(Path(uri.removeprefix("sqlite:///")).parent / "artifacts")]
    return command


class Tracker:
    """No tracking, and the guard every tracker shares: after the start, a failure warns once and
    tracking stops for the rest of the run, which goes on (a tracking outage must not end training)."""

    name = "none"
    active = False

    def start(self, run_dir: Path, config: Config, resume: bool) -> None:
        self._start(run_dir, config, resume)
        self.active = True

    def log(self, entry: dict) -> None:
        """One metrics.jsonl entry: {"type": "train"|"eval", "step": ..., ...}."""
        self._guarded("logging metrics", self._log, entry)

    def finish(self, run_dir: Path, status: str) -> None:
        """status: complete, failed or interrupted; on complete the run's files are all written."""
        self._guarded("finishing the run", self._finish, run_dir, status)
        self.active = False

    def _start(self, run_dir: Path, config: Config, resume: bool) -> None:
        pass

    def _log(self, entry: dict) -> None:
        pass

    def _finish(self, run_dir: Path, status: str) -> None:
        pass

    def _guarded(self, what: str, action, *args) -> None:
        if not self.active:
            return
        try:
            action(*args)
        except Exception as e:
            self.active = False
            warnings.warn(f"{self.name} tracking: {what} failed ({type(e).__name__}: {e}); tracking stops here, "
                          f"the run goes on and its directory has everything", stacklevel=3)


def flat_params(config: Config) -> dict[str, str]:
    """The resolved config as MLflow params: model.name, train.learning_rate, ..."""
    return {key: str(value) for key, value in dotted(config.model_dump(mode="json")).items()}


def entry_metrics(entry: dict) -> dict[str, float]:
    """A metrics.jsonl entry as flat metric names: train/loss, validation/accuracy, ..."""
    if entry["type"] == "train":
        return {f"train/{k}": entry[k] for k in ("loss", "lr", "samples_per_s", "epoch") if k in entry}
    return {**{f"validation/{k}": v for k, v in entry["validation"].items()}, "validation/epoch": entry["epoch"]}


LEGACY_HEADLINE = ("loss", "accuracy", "macro_f1", "entity_f1", "perplexity")  # runs before metrics.json named them


def final_metrics(metrics: dict) -> dict[str, float]:
    """The headline numbers of metrics.json as flat metric names."""
    test, train = metrics["test"], metrics["train"]
    finetuned = test.get("finetuned") or {}  # none when train.evaluate_test was false
    names = (metrics.get("scores") or {}).get("metrics") or LEGACY_HEADLINE  # the task's, as metrics.json names them
    flat = {f"test/{k}": finetuned[k] for k in names if k in finetuned}
    for k in names:
        if f"{k}_ci95" in finetuned:
            flat[f"test/{k}_ci95_low"], flat[f"test/{k}_ci95_high"] = finetuned[f"{k}_ci95"]
    for model, scores in test.items():
        if model != "finetuned" and isinstance(scores, dict):
            flat.update({f"test/{model}_{k}": scores[k] for k in names if k != "loss" and k in scores})
    flat.update({f"train/{k}_total": train[k] for k in ("seconds", "samples_per_s", "tokens_per_s") if k in train})
    if metrics["validation"]["best"] is not None:
        flat[f"validation/best_{metrics['validation']['metric']}"] = metrics["validation"]["best"]
    return flat


class MlflowTracker(Tracker):
    """One MLflow run per ftune run; --resume continues the same MLflow run (its id is in run.json)."""

    name = "mlflow"

    def __init__(self, cfg: TrackingConfig):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a wrong server URI fails in seconds, not minutes
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no database-migration chatter on first use (after import: it sets its own)

        self.cfg, self.run_id = cfg, None
        uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:
            LOCAL_STORE.mkdir(exist_ok=True)
            uri = local_store_uri()
        self.uri = uri
        artifact_root = None  # MLflow's default: ./mlruns of whoever creates the experiment
        if uri.startswith("sqlite:///"):  # keep a SQLite store's artifacts beside its database instead
            artifact_root = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(cfg.experiment)
            self.experiment_id = found.experiment_id if found else \
                self.client.create_experiment(cfg.experiment, artifact_location=artifact_root,
                                              tags={EXPERIMENT_KIND: "custom_model_development"})
            if found and EXPERIMENT_KIND not in found.tags:  # made by an older ftune, or by hand
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, "custom_model_development")
        except (MlflowException, OSError, ValueError) as e:
            reason = str(e).splitlines()[0][:200]
            raise ConfigError(f"tracking.uri {uri}: cannot open the MLflow store ({reason}); fix tracking.uri "
                              f"or pass --set tracking.backend=none") from None

    def _start(self, run_dir: Path, config: Config, resume: bool) -> None:
        from mlflow.entities import Param, RunTag

        previous = read_json(run_dir / "run.json").get("tracking", {}) if resume else {}
        if previous.get("run_id") and previous.get("uri") == self.uri:
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {"mlflow.runName": run_dir.name, "ftune.run_dir": str(run_dir.resolve()), "ftune.method": config.method.name,
                "ftune.data": config.data.train, "ftune.model": config.model.name}
        run = self.client.create_run(self.experiment_id, run_name=run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in flat_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100], tags=[RunTag("ftune.version", _version())])
        update_manifest(run_dir, tracking={"backend": "mlflow", "uri": self.uri, "experiment_id": self.experiment_id,
                                           "run_id": self.run_id})

    def _log(self, entry: dict) -> None:
        self._log_metrics(entry_metrics(entry), entry["step"])

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def _finish(self, run_dir: Path, status: str) -> None:
        if status == "complete":
            metrics = read_json(run_dir / "metrics.json")
            self._log_metrics(final_metrics(metrics), metrics["train"]["steps"])
            self._upload(run_dir)
        self.client.set_terminated(self.run_id, {"complete": "FINISHED", "interrupted": "KILLED",
                                                 "pruned": "KILLED"}.get(status, "FAILED"))

    def _upload(self, run_dir: Path) -> None:
        for name in ARTIFACTS:
            path = run_dir / name
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        if self.cfg.log_model:
            for folder in ("model", "adapter"):
                if (run_dir / folder).is_dir():
                    self.client.log_artifacts(self.run_id, str(run_dir / folder), folder)


class TensorBoardTracker(Tracker):
    """Event files for TensorBoard: scalars per logging step and evaluation, the config and final table as text."""

    name = "tensorboard"

    def __init__(self, cfg: TrackingConfig):
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
        except ImportError:
            raise ConfigError("tracking.backend=tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.cfg, self.writer = cfg, None

    def _start(self, run_dir: Path, config: Config, resume: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        from ftune.config import to_yaml

        log_dir = Path(self.cfg.uri) / run_dir.name if self.cfg.uri else run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", f"```yaml\n{to_yaml(config)}```")
        update_manifest(run_dir, tracking={"backend": "tensorboard", "log_dir": str(log_dir)})

    def _log(self, entry: dict) -> None:
        for key, value in entry_metrics(entry).items():
            self.writer.add_scalar(key, value, entry["step"])

    def _finish(self, run_dir: Path, status: str) -> None:
        if status == "complete":
            metrics = read_json(run_dir / "metrics.json")
            for key, value in final_metrics(metrics).items():
                self.writer.add_scalar(key, value, metrics["train"]["steps"])
        self.writer.close()


def _version() -> str:
    from ftune import __version__

    return __version__

