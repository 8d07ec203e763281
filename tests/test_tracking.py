"""Tracking: a run's params, metric history and artifacts in MLflow (read back with its client) or TensorBoard."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow import MlflowClient

import ftune
from ftune.config import TrackingConfig
from ftune.errors import ConfigError
from ftune.trackers import connect
from ftune.tracking import runs_table_url

pytestmark = pytest.mark.e2e  # trains whole runs: make test-quick leaves this module out


@pytest.fixture(scope="module")
def tracked(tiny_model, reviews_csv, tmp_path_factory):
    """A run tracked in its own SQLite store, logging every 2 steps, with the model uploaded."""
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    (root / "store").mkdir()
    cfg = ftune.load_config(overrides={
        "model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
        "data.label_column": "stars", "data.max_length": 32, "train.epochs": 2, "train.batch_size": 16,
        "train.learning_rate": 3e-3, "train.log_steps": 2, "tracking.uri": uri, "tracking.experiment": "tests",
        "tracking.log_model": True,
        "output_dir": str(root / "run")})
    return ftune.train(cfg, quiet=True), MlflowClient(uri), root


def test_mlflow_has_the_params_metric_history_and_artifacts(tracked):
    run, client, root = tracked
    tracking = run.manifest["tracking"]
    remote = client.get_run(tracking["run_id"])
    assert remote.info.status == "FINISHED" and remote.info.run_name == "run"
    assert client.get_experiment(tracking["experiment_id"]).name == "tests"
    params = remote.data.params
    assert params["model.name"] == run.config.model.name and params["train.learning_rate"] == "0.003"
    assert params["method.name"] == "full" and params["train.epochs"] == "2"

    logged = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    train_loss = client.get_metric_history(remote.info.run_id, "train/loss")
    assert [m.step for m in train_loss] == [e["step"] for e in logged if e["type"] == "train"]
    assert [m.value for m in train_loss] == pytest.approx([e["loss"] for e in logged if e["type"] == "train"])
    accuracy = client.get_metric_history(remote.info.run_id, "validation/accuracy")
    assert [m.value for m in accuracy] == pytest.approx([e["validation"]["accuracy"] for e in logged if e["type"] == "eval"])
    assert remote.data.metrics["test/accuracy"] == pytest.approx(run.metrics["test"]["finetuned"]["accuracy"])
    assert remote.data.metrics["test/tfidf_accuracy"] == pytest.approx(run.metrics["test"]["tfidf"]["accuracy"])

    top = {a.path for a in client.list_artifacts(remote.info.run_id)}
    assert {"report.html", "report.md", "config.yaml", "labels.json", "metrics.json", "plots", "model"} <= top
    assert "model/model.safetensors" in {a.path for a in client.list_artifacts(remote.info.run_id, "model")}
    assert {a.path for a in client.list_artifacts(remote.info.run_id, "plots")} == \
        {"plots/curves.png", "plots/confusion.png", "plots/lengths.png"}
    assert (root / "store" / "artifacts").is_dir()  # a SQLite store keeps its artifacts beside the database


def test_a_store_that_cannot_be_opened_stops_the_run_before_any_file_is_written(tiny_config, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    with pytest.raises(ConfigError, match=rf"tracking.uri {uri}: cannot open the MLflow store .*tracking.backend=none"):
        ftune.train(tiny_config(**{"tracking.backend": "mlflow", "tracking.uri": uri}), quiet=True)
    assert not (tmp_path / "run").exists()


def test_a_tracking_outage_during_training_warns_and_the_run_completes(tiny_config, tmp_path, monkeypatch):
    def refuse_metrics(self, run_id, metrics=(), params=(), tags=()):
        if metrics:
            raise ConnectionError("store went away")
        return original(self, run_id, metrics=metrics, params=params, tags=tags)

    original = MlflowClient.log_batch
    monkeypatch.setattr(MlflowClient, "log_batch", refuse_metrics)
    cfg = tiny_config(**{"tracking.backend": "mlflow", "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                         "train.epochs": 1})
    with pytest.warns(UserWarning, match="mlflow tracking: logging metrics failed .*store went away.*the run goes on"):
        run = ftune.train(cfg, quiet=True)
    assert run.manifest["status"] == "complete" and (run.path / "report.html").is_file()


def test_default_store_is_sqlite_in_the_project_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = connect(TrackingConfig())
    assert tracker.uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (tmp_path / "mlruns" / "artifacts").as_uri()


def test_tensorboard_event_files_hold_the_scalars(tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = ftune.train(tiny_config(**{"tracking.backend": "tensorboard", "train.log_steps": 2, "train.epochs": 2}),
                      quiet=True)
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "validation/accuracy", "test/accuracy"} <= scalars
    assert [e.step for e in events.Scalars("validation/accuracy")] == \
        [h["step"] for h in run.metrics["validation"]["history"]]


def test_runs_ui_serves_the_local_store_and_takes_runs_over_http(tracked, tiny_config):
    _, client, root = tracked
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "ftune", "runs", "ui", "--store", str(root / "store"), "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
                                         data=b'{"max_results": 10}', headers={"Content-Type": "application/json"})
        deadline, names = time.time() + 120, None
        while time.time() < deadline and names is None:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    names = [e["name"] for e in json.load(response)["experiments"]]
            except OSError:
                time.sleep(1)
        assert names is not None and "tests" in names
        # the UI opens on the experiment's table of training runs, not MLflow's GenAI overview
        experiment = client.get_experiment_by_name("tests")
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        assert runs_table_url(str(root / "store"), "127.0.0.1", port, "tests") == \
            f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs"

        # The same server is an MLflow tracking server: a run can log to it by URI, artifacts included.
        uri = f"http://127.0.0.1:{port}"
        run = ftune.train(tiny_config(**{"tracking.backend": "mlflow", "tracking.uri": uri, "train.epochs": 1}), quiet=True)
        remote = MlflowClient(uri).get_run(run.manifest["tracking"]["run_id"])
        assert remote.info.status == "FINISHED"
        assert "report.html" in {a.path for a in MlflowClient(uri).list_artifacts(remote.info.run_id)}
        assert any(remote.info.run_id in str(p) for p in (root / "store" / "artifacts").rglob("report.html"))
    finally:
        os.killpg(ui.pid, signal.SIGTERM)  # the server and any worker it started
        ui.wait(timeout=30)


def test_resume_continues_the_same_mlflow_run(tiny_config, tmp_path, monkeypatch):
    import ftune.training

    def save_then_interrupt(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt  # as if Ctrl-C came right after epoch 1's checkpoint

    original = ftune.training.save_checkpoint
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tiny_config(**{"tracking.backend": "mlflow", "tracking.uri": uri, "train.epochs": 2})
    monkeypatch.setattr(ftune.training, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ftune.train(cfg, quiet=True)
    run_id = json.loads((tmp_path / "run" / "run.json").read_text())["tracking"]["run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"

    monkeypatch.setattr(ftune.training, "save_checkpoint", original)
    run = ftune.train(cfg, resume=True, quiet=True)
    client = MlflowClient(uri)
    assert run.manifest["tracking"]["run_id"] == run_id and client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([run.manifest["tracking"]["experiment_id"]])) == 1
    assert [m.step for m in client.get_metric_history(run_id, "validation/accuracy")] == \
        [h["step"] for h in run.metrics["validation"]["history"]]
