"""The managed clouds' contracts, played here as the platforms play them: SageMaker's /opt/ml (a tmp_path, through
FTUNE_SAGEMAKER_ROOT) and Vertex AI's AIP_ variables with gs:// read through /gcs (a tmp_path, FTUNE_GCS_ROOT).
`ftune cloud-train` trains as each starts a training container; `ftune serve --platform` answers as each calls a
prediction container. No real account: what the platforms do around the container is not exercised."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from ftune.cloud import serving
from ftune.predictors import Predictor
from ftune.serve import ServeSettings, create_app, load
from helpers import KEY, chat_run, ftune_cli, instructions

AUTH = {"Authorization": f"Bearer {KEY}"}
# what the tiny model trains with in a few seconds, as a SageMaker job's hyperparameters (every value a string)
FAST = {"data.text_column": "review", "data.label_column": "stars", "data.max_length": "32", "train.epochs": "1",
        "train.batch_size": "16", "train.learning_rate": "0.003", "train.baselines": "false",
        "tracking.backend": "none"}
VERTEX_ROUTES = {"AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2",
                 "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict"}


def sagemaker(root: Path, hyperparameters: dict, channels: dict[str, list[Path]]) -> Path:
    """/opt/ml as SageMaker lays it out before it starts a training container: the hyperparameters file and a
    folder per input channel (File mode: the channel's S3 objects copied in)."""
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    for name, files in channels.items():
        (root / "input" / "data" / name).mkdir(parents=True)
        for file in files:
            shutil.copy(file, root / "input" / "data" / name / file.name)
    (root / "model").mkdir()
    return root


def failure_line(root: Path) -> str:
    lines = (root / "output" / "failure").read_text().splitlines()
    assert len(lines) == 1
    return lines[0]


@pytest.fixture(scope="module")
def sagemaker_run(tiny_model, reviews_csv, tmp_path_factory) -> Path:
    """A run trained by `ftune cloud-train` as SageMaker starts it: data from the train channel, settings from the
    hyperparameters, the run in /opt/ml/model."""
    root = sagemaker(tmp_path_factory.mktemp("sagemaker") / "ml", FAST | {
        "model.name": tiny_model, "sagemaker_program": json.dumps("train.py")}, {"train": [reviews_csv]})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTUNE_SAGEMAKER_ROOT", str(root))
        mp.setattr(sys, "argv", ["ftune", "cloud-train"])
        from ftune.cli import main

        with pytest.raises(SystemExit) as done:
            main()
            sys.exit(0)
    assert done.value.code in (0, None)
    return root


@pytest.mark.e2e
def test_sagemaker_training_writes_the_run_where_sagemaker_collects_the_model(sagemaker_run, reviews_csv):
    model = sagemaker_run / "model"
    assert json.loads((model / "run.json").read_text())["status"] == "complete"
    assert (model / "model" / "model.safetensors").is_file() and not (model / "checkpoints").exists()
    assert not (model / ".lock").exists()  # model.tar.gz holds the run's files only
    config = yaml.safe_load((model / "config.yaml").read_text())
    assert config["data"]["train"] == str(sagemaker_run / "input/data/train/reviews.csv")
    assert config["train"]["epochs"] == 1 and config["data"]["max_length"] == 32  # the strings read as numbers
    assert {p.name for p in (sagemaker_run / "output" / "data").iterdir()} == {"report.html", "report.md",
                                                                               "metrics.json"}
    assert not (sagemaker_run / "output" / "failure").exists()
    texts = ["a superb film", "dull and dreadful"]
    assert [p["label"] for p in Predictor(model).predict(texts)]  # the folder is a run any ftune command reads


def _bad_hyperparameter(root, csv):
    sagemaker(root, FAST | {"train.epochz": "2"}, {"train": [csv]})


def _bad_value(root, csv):
    sagemaker(root, FAST | {"train.epochs": "two"}, {"train": [csv]})


def _no_channel(root, csv):
    sagemaker(root, FAST, {"validation": [csv]})


def _two_files(root, csv):
    sagemaker(root, FAST, {"train": [csv]})
    shutil.copy(csv, root / "input" / "data" / "train" / "more.csv")


def _pipe_mode(root, csv):
    sagemaker(root, FAST, {})
    (root / "input" / "config" / "inputdataconfig.json").write_text(json.dumps({"train": {
        "TrainingInputMode": "Pipe", "ContentType": "text/csv"}}))


def _missing_config(root, csv):
    sagemaker(root, FAST | {"config": "ftune.yaml"}, {"train": [csv]})


@pytest.mark.parametrize("setup, reason", [
    (_bad_hyperparameter, "hyperparameters.json): unknown key 'train.epochz'; did you mean 'train.epochs'"),
    (_bad_value, "hyperparameters.json): train.epochs: Input should be a valid integer"),
    (_no_channel, "no training data: add an input channel named 'train'"),
    (_two_files, "holds 2 files (more.csv, reviews.csv); ftune reads one file per split"),
    (_pipe_mode, "SageMaker channel 'train' is in Pipe mode"),
    (_missing_config, "hyperparameter config=ftune.yaml: no such file in the image"),
])
def test_a_sagemaker_job_that_cannot_run_says_why_in_the_failure_file(setup, reason, reviews_csv, tmp_path,
                                                                      monkeypatch, capsys):
    setup(tmp_path / "ml", reviews_csv)
    monkeypatch.setenv("FTUNE_SAGEMAKER_ROOT", str(tmp_path / "ml"))
    code, _, err = ftune_cli(monkeypatch, capsys, "cloud-train")
    assert code == 2 and reason in failure_line(tmp_path / "ml")
    assert failure_line(tmp_path / "ml") in " ".join(err.split())  # the same line the log shows
    assert not any((tmp_path / "ml" / "model").iterdir())


def test_the_sagemaker_variables_win_over_the_opt_ml_paths(reviews_csv, tmp_path, monkeypatch, capsys):
    """The sagemaker-training toolkit sets SM_CHANNEL_<NAME>, SM_MODEL_DIR and SM_OUTPUT_DIR; they name the places."""
    sagemaker(tmp_path / "ml", FAST | {"train.epochs": "0"}, {})
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(reviews_csv, tmp_path / "elsewhere" / "reviews.csv")
    monkeypatch.setenv("FTUNE_SAGEMAKER_ROOT", str(tmp_path / "ml"))
    monkeypatch.setenv("SM_CHANNEL_TRAINING", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path / "out"))
    code, _, err = ftune_cli(monkeypatch, capsys, "cloud-train")  # epochs 0: refused once the data is found
    assert code == 2 and "train.epochs" in (tmp_path / "out" / "failure").read_text()


def test_cloud_train_names_the_platform_it_could_not_find(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("FTUNE_SAGEMAKER_ROOT", str(tmp_path / "none"))
    for name in ("AIP_MODEL_DIR", "SM_MODEL_DIR", "SM_INPUT_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = ftune_cli(monkeypatch, capsys, "cloud-train")
    assert code == 2 and "no platform found" in err and "--platform sagemaker or vertex" in err


@pytest.fixture
def gcs(tmp_path, monkeypatch) -> Path:
    """Cloud Storage as a Vertex AI training container sees it: gs://BUCKET/PATH at /gcs/BUCKET/PATH."""
    monkeypatch.setenv("FTUNE_GCS_ROOT", str(tmp_path / "gcs"))
    for name in ("AIP_TRAINING_DATA_URI", "AIP_VALIDATION_DATA_URI", "AIP_TEST_DATA_URI", "AIP_DATA_FORMAT",
                 "AIP_TENSORBOARD_LOG_DIR"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "gcs" / "bucket" / "data").mkdir(parents=True)
    return tmp_path / "gcs" / "bucket"


@pytest.mark.e2e
def test_vertex_training_writes_the_run_to_aip_model_dir(gcs, tiny_model, reviews_csv, monkeypatch, capsys):
    """Vertex AI's variables as custom training sets them for a managed dataset (a wildcard data URI), the config
    and overrides as the container's arguments."""
    shutil.copy(reviews_csv, gcs / "data" / "training-00000-of-00001.csv")
    config = {"model": {"name": tiny_model}, "data": {"text_column": "review", "label_column": "stars",
                                                      "max_length": 32}, "train": {"batch_size": 16}}
    (gcs / "ftune.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("AIP_MODEL_DIR", "gs://bucket/job/model/")
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", "gs://bucket/job/checkpoints/")
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", "gs://bucket/job/logs/")
    monkeypatch.setenv("AIP_DATA_FORMAT", "csv")
    monkeypatch.setenv("AIP_TRAINING_DATA_URI", "gs://bucket/data/training-*")
    code, out, err = ftune_cli(monkeypatch, capsys, "cloud-train", "gs://bucket/ftune.yaml", "--set",
                               "train.epochs=1", "--set", "train.baselines=false")
    assert code == 0, err
    model = gcs / "job" / "model"
    assert json.loads((model / "run.json").read_text())["status"] == "complete" and not (model / "checkpoints").exists()
    assert yaml.safe_load((model / "config.yaml").read_text())["data"]["train"] == str(
        gcs / "data" / "training-00000-of-00001.csv")
    assert list((gcs / "job" / "logs").rglob("events.out.tfevents.*"))  # Vertex AI TensorBoard reads these
    assert f"vertex: the run is in {model}" in " ".join(out.split())
    Predictor(model).predict(["a superb film"])


def test_vertex_training_refuses_what_it_cannot_read(gcs, reviews_csv, monkeypatch, capsys):
    monkeypatch.setenv("AIP_MODEL_DIR", "gs://bucket/job/model/")
    cases = [({"AIP_DATA_FORMAT": "bigquery"}, "AIP_DATA_FORMAT=bigquery: ftune reads files"),
             ({"AIP_TRAINING_DATA_URI": "gs://bucket/data/part-*.csv"},
              "matches 2 files; ftune reads one file per split"),
             ({"AIP_TRAINING_DATA_URI": "s3://bucket/data.csv"}, "ftune reads local paths and gs:// (through /gcs)")]
    for name in ("part-0.csv", "part-1.csv"):
        shutil.copy(reviews_csv, gcs / "data" / name)
    for env, reason in cases:
        with monkeypatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            code, _, err = ftune_cli(mp, capsys, "cloud-train")
        assert code == 2 and reason in " ".join(err.split()), err
    (gcs / "job" / "model").mkdir(parents=True)
    (gcs / "job" / "model" / "run.json").write_text("{}")
    code, _, err = ftune_cli(monkeypatch, capsys, "cloud-train", "--platform", "vertex")
    assert code == 2 and "already holds files; give the job a new base output directory" in " ".join(err.split())


@pytest.fixture(scope="module")
def served(sagemaker_run):
    return load([sagemaker_run / "model"])


@pytest.mark.e2e
def test_sagemaker_serving_answers_ping_and_invocations(served, sagemaker_run, monkeypatch):
    monkeypatch.setenv("FTUNE_SAGEMAKER_ROOT", str(sagemaker_run))
    cloud = serving("sagemaker")
    assert (cloud.model, cloud.port) == (sagemaker_run / "model", 8080)
    texts = ["a superb film", "dull and dreadful"]
    with TestClient(create_app(served, ServeSettings(api_key=KEY, max_texts=4), cloud)) as client:
        assert client.get("/ping").status_code == 200  # SageMaker probes it without a key
        expected = client.post("/v1/predict", json={"texts": texts}, headers=AUTH).json()
        assert client.post("/invocations", json={"texts": texts}, headers=AUTH).json() == expected
        assert client.post("/invocations", json={"instances": texts}, headers=AUTH).json() == {
            "predictions": expected["predictions"]}
        for kind, body in [("text/csv", "a superb film\r\n\"dull, and dreadful\"\r\n"),
                           ("text/plain; charset=utf-8", "a superb film\n\ndull and dreadful\n")]:
            answer = client.post("/invocations", content=body, headers=AUTH | {"Content-Type": kind})
            assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2
        # the same guards as /v1/predict: the key, the limits, strict JSON
        assert client.post("/invocations", json={"texts": texts}).status_code == 401
        assert client.post("/invocations", json={"texts": ["x"] * 5}, headers=AUTH).status_code == 413
        assert client.post("/invocations", content=b'{"texts": [NaN]}', headers=AUTH).status_code == 422
        wide = client.post("/invocations", content="a,b\n", headers=AUTH | {"Content-Type": "text/csv"})
        assert wide.status_code == 400 and "row 1 has 2 fields; send one column" in wide.json()["detail"]


@pytest.mark.e2e
def test_vertex_serving_answers_its_routes_with_predictions(served, sagemaker_run, tmp_path, monkeypatch):
    """Vertex AI's variables, with the model's artifact URI on gs:// read through /gcs."""
    (tmp_path / "gcs" / "bucket").mkdir(parents=True)
    shutil.copytree(sagemaker_run / "model", tmp_path / "gcs" / "bucket" / "model")
    monkeypatch.setenv("FTUNE_GCS_ROOT", str(tmp_path / "gcs"))
    for key, value in VERTEX_ROUTES.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AIP_HTTP_PORT", "8081")
    monkeypatch.setenv("AIP_STORAGE_URI", "gs://bucket/model")
    cloud = serving(None)  # chosen by the variables
    assert (cloud.platform, cloud.model, cloud.port) == ("vertex", tmp_path / "gcs" / "bucket" / "model", 8081)
    predict = VERTEX_ROUTES["AIP_PREDICT_ROUTE"]
    with TestClient(create_app(served, ServeSettings(api_key=KEY), cloud)) as client:
        assert client.get(VERTEX_ROUTES["AIP_HEALTH_ROUTE"]).status_code == 200
        answer = client.post(predict, json={"instances": ["a superb film", {"text": "dull"}]}, headers=AUTH)
        assert answer.status_code == 200 and list(answer.json()) == ["predictions"]
        assert [set(p) for p in answer.json()["predictions"]] == [{"label", "score", "scores"}] * 2
        assert client.post(predict, json={"instances": ["x"]}).status_code == 401
        refused = client.post(predict, json={"instances": ["x"], "parameters": {"top_k": 2}}, headers=AUTH)
        assert refused.status_code == 400 and "parameters: this model takes none" in refused.json()["detail"]
        assert client.post(predict, json={"instances": []}, headers=AUTH).status_code == 422


def test_vertex_serving_cannot_download_from_cloud_storage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FTUNE_GCS_ROOT", str(tmp_path / "gcs"))
    monkeypatch.setenv("AIP_STORAGE_URI", "gs://bucket/model")
    code, _, err = ftune_cli(monkeypatch, capsys, "serve", "--platform", "vertex")
    assert code == 2 and "does not download from Cloud Storage" in " ".join(err.split())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_ftune_serve_platform_sagemaker_serves_opt_ml_model(sagemaker_run, tmp_path):
    """The command the image's entrypoint runs for `docker run IMAGE serve`: no path, no port, no address given."""
    port = _free_port()
    env = {**os.environ, "FTUNE_SAGEMAKER_ROOT": str(sagemaker_run), "SAGEMAKER_BIND_TO_PORT": str(port),
           "HF_HUB_OFFLINE": "1"}
    with (tmp_path / "log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "ftune", "serve", "--platform", "sagemaker"], env=env,
                                  stdout=log, stderr=log)
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            answer = httpx.post(f"http://127.0.0.1:{port}/invocations", content="a superb film",
                                headers={"Content-Type": "text/plain"}, timeout=30)
            assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in ("pos", "neg")
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert f"on http://0.0.0.0:{port}" in (tmp_path / "log").read_text()


@pytest.mark.e2e
def test_a_causal_lm_run_answers_openai_requests_on_the_platform_route(tmp_path, monkeypatch):
    rows = instructions(64)
    run = chat_run(tmp_path, rows, [f"{r['prompt']} {r['response']}" for r in rows], max_length=32, epochs=1)
    cloud = serving("sagemaker")
    with TestClient(create_app(load([Path(run)]), ServeSettings(), cloud)) as client:
        asked = {"model": "run", "messages": [{"role": "user", "content": rows[0]["prompt"]}], "max_tokens": 4}
        answer = client.post("/invocations", json=asked)
        assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
        refused = client.post("/invocations", json={"instances": ["hello"]})
        assert refused.status_code == 400 and "takes OpenAI's chat completion request" in refused.json()["detail"]
