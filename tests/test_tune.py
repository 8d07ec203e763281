"""`ftune tune`: trials are runs that never read the test split, pruning, the --space file, a shared study."""

import json
import os
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from ftune.config import DEFAULT_LEARNING_RATES, load_config, to_yaml
from ftune.errors import ConfigError
from ftune.runs import compare_runs, run_row
from ftune.tune import Choices, Range, default_space, load_space, tune
from helpers import ftune_cli

pytestmark = pytest.mark.e2e  # trains whole runs: make test-quick leaves this module out

# Fast trials: one epoch each, a learning rate the tiny model learns with, two batch sizes.
SPACE = {"train.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}, "train.batch_size": {"choices": [32, 64]}}


@pytest.fixture
def tune_files(tiny_config, tmp_path):
    """A config file (one epoch) and a small --space file."""
    config, space = tmp_path / "tiny.yaml", tmp_path / "space.yaml"
    config.write_text(to_yaml(tiny_config(**{"train.epochs": 1, "data.max_train_samples": 96, "output_dir": None})))
    space.write_text(yaml.safe_dump(SPACE))
    return config, space


def test_study_writes_trial_runs_table_plot_and_a_best_config_without_reading_test(tune_files, tmp_path, monkeypatch,
                                                                                   capsys):
    from ftune.tasks import classification

    scored = []  # the size of every split the model is scored on
    score = classification.Classification.score

    def counting(self, rows, data, *args, **kwargs):
        scored.append(len(data))
        return score(self, rows, data, *args, **kwargs)

    def no_baselines(*args, **kwargs):
        raise AssertionError("a trial scored a baseline on the test split")

    monkeypatch.setattr(classification.Classification, "score", counting)
    monkeypatch.setattr(classification.Classification, "baselines", no_baselines)
    config, space = tune_files
    study = tmp_path / "study"
    code, out, err = ftune_cli(monkeypatch, capsys, "tune", str(config), "--trials", "3", "--space", str(space),
                               "--output-dir", str(study))
    assert code == 0, err
    assert "study tiny: 3 trials (3 complete)" in out and f"best config: {study / 'best.yaml'}" in out

    trials = sorted(study.glob("trial-*"))
    assert [t.name for t in trials] == ["trial-000", "trial-001", "trial-002"]
    for trial in trials:
        metrics = json.loads((trial / "metrics.json").read_text())
        assert json.loads((trial / "run.json").read_text())["status"] == "complete"
        assert metrics["test"] == {"evaluated": False, "note": "train.evaluate_test was false: the test split was "
                                                               "not evaluated"}
        assert not (trial / "test_predictions.csv").exists()
        assert "Test split" in (trial / "report.md").read_text()  # the report says so instead of a table
    validation_sizes = {json.loads((t / "metrics.json").read_text())["data"]["validation"] for t in trials}
    assert scored and set(scored) == validation_sizes  # one evaluation per epoch, on validation only
    assert len(scored) == 3

    table = (study / "trials.md").read_text()
    assert table.count("| complete |") == 3 and "learning_rate" in table and "batch_size" in table
    assert (study / "history.png").stat().st_size > 0 and (study / "curves.png").stat().st_size > 0

    best = load_config(study / "best.yaml")
    stored = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study / 'study.db'}")
    assert best.train.evaluate_test and best.output_dir is None
    assert best.train.learning_rate == stored.best_params["train.learning_rate"]
    assert best.train.batch_size == stored.best_params["train.batch_size"]
    assert best.train.epochs == 1 and best.model.name == load_config(config).model.name
    assert "output_dir" not in yaml.safe_load((study / "best.yaml").read_text())

    assert [run_row(t)["test score"] for t in trials] == ["not evaluated"] * 3
    header, rows, _ = compare_runs(trials[:2], tmp_path / "compare")
    assert "best validation metric" in [r[0] for r in rows] and "test accuracy" not in [r[0] for r in rows]


def test_a_trial_worse_than_the_median_is_pruned_and_filed_under_the_study_in_mlflow(tiny_config, tmp_path):
    from mlflow import MlflowClient

    folder, storage = tmp_path / "study", f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="prune", storage=storage, direction="maximize")
    for _ in range(5):  # the median pruner's five finished trials, all perfect at the first evaluation
        study.add_trial(optuna.trial.create_trial(value=1.0, params={}, distributions={}, intermediate_values={0: 1.0}))
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(**{"train.epochs": 2, "output_dir": None, "tracking.backend": "mlflow",
                            "tracking.uri": mlflow_uri})
    space = {"train.learning_rate": Choices(choices=(1e-7,))}  # too small to learn: chance after one epoch

    result = tune(config, trials=6, output_dir=folder, storage=storage, study_name="prune", space=space)

    pruned = result.rows[5]
    assert pruned.state == "PRUNED" and pruned.note.startswith("pruned at evaluation 1: accuracy")
    assert optuna.load_study(study_name="prune", storage=storage).trials[5].state == optuna.trial.TrialState.PRUNED
    manifest = json.loads((folder / "trial-005" / "run.json").read_text())
    assert manifest["status"] == "pruned" and "RunPruned" in manifest["error"]
    history = [json.loads(line) for line in (folder / "trial-005" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in history if e["type"] == "eval"] == [history[-1]["step"]]  # stopped after one of two
    assert not (folder / "trial-005" / "metrics.json").exists()

    client = MlflowClient(mlflow_uri)  # the study is an MLflow run; the trial's run is its child, killed when pruned
    parent = client.get_run(optuna.load_study(study_name="prune", storage=storage).user_attrs["mlflow_run_id"])
    child = client.get_run(manifest["tracking"]["run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "KILLED"
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_validation_accuracy"] == 1.0


@pytest.mark.parametrize("space, message", [
    ({"train.learnig_rate": {"low": 1e-4, "high": 1e-2}}, "unknown key 'train.learnig_rate'; did you mean "
                                                          "'train.learning_rate'?"),
    ({"train.epochs": {"low": 0, "high": 3}}, "train.epochs: Input should be greater than or equal to 1 (got 0)"),
    ({"train.epochs": {"low": 4, "high": 2}}, "train.epochs: low must not be above high (got low 4, high 2)"),
    ({"train.learning_rate": {"low": 0, "high": 1e-3, "log": True}}, "train.learning_rate: log needs low above 0"),
    ({"train.epochs": {"low": 1, "high": 3, "step": 1}}, "train.epochs.step: Extra inputs are not permitted"),
    ({"train.epochs": {"low": 1}}, "train.epochs.high: Field required"),
    ({"train.batch_size": {"choices": []}}, "train.batch_size: choices must list at least one value"),
    ({"train.epochs": 3}, "train.epochs must be {low, high, log} or {choices: [...]} (got 3)"),
    ({"method.r": {"choices": [4, 8]}}, "'method.r' is not an option of method 'full'; it belongs to method 'lora'"),
    (["train.epochs"], "must map dotted config keys to ranges"),
])
def test_space_file_errors_name_the_key(tiny_config, tmp_path, space, message):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError) as e:
        load_space(path, tiny_config())
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_space_file_ranges_and_choices(tiny_config, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("train.learning_rate: {low: 1e-5, high: 1e-3, log: true}\n"  # YAML reads 1e-5 as a string
                    "train.epochs: {low: 1, high: 4}\ntrain.warmup_ratio: {low: 0, high: 0.5}\n"
                    "train.weight_decay: {low: 0, high: 1}\ntrain.batch_size: {choices: [16, 32]}\n")
    space = load_space(path, tiny_config())
    assert space["train.learning_rate"] == Range(low=1e-5, high=1e-3, log=True)
    assert space["train.epochs"] == Range(low=1, high=4)  # whole numbers
    assert space["train.weight_decay"] == Range(low=0.0, high=1.0)  # a key that takes fractions gets them
    assert isinstance(space["train.weight_decay"].low, float) and space["train.batch_size"] == Choices(choices=(16, 32))
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(tmp_path / "missing.yaml", tiny_config())


def test_default_space_follows_the_method(tiny_config):
    full = default_space(tiny_config(**{"train.epochs": 3}))
    assert full["train.learning_rate"] == Range(low=DEFAULT_LEARNING_RATES["full"] / 10,
                                                high=DEFAULT_LEARNING_RATES["full"] * 10, log=True)
    assert full["train.epochs"] == Range(low=1, high=6) and "method.r" not in full
    lora = default_space(tiny_config(**{"method.name": "lora"}))
    assert {"method.r", "method.alpha", "method.dropout"} <= set(lora)
    assert lora["train.learning_rate"].low == pytest.approx(DEFAULT_LEARNING_RATES["lora"] / 10)
    freeze = default_space(tiny_config(**{"method.name": "freeze"}))
    assert freeze["method.layers"] == Range(low=0, high=2)  # the tiny model's two layers


def test_two_processes_share_one_study_and_run_its_trials_once(tune_files, tmp_path):
    """`ftune tune` in a subprocess and `ftune.tune` here, on one SQLite study of 3 trials: the second starts once the
    first is training trial 0, so both run trials at the same time."""
    config, space = tune_files
    study = tmp_path / "shared"
    command = [sys.executable, "-m", "ftune", "tune", str(config), "--trials", "3", "--space", str(space),
               "--output-dir", str(study), "--quiet"]
    other = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # a guard against a hang, not a measurement
        while not (study / "trial-000").exists() and other.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (study / "trial-000").exists(), other.communicate()[1]
        here = tune(load_config(config), 3, output_dir=study, space=load_space(space, load_config(config)),
                    study_name="tiny")
        out, err = other.communicate(timeout=600)
    finally:
        other.kill()
    assert other.returncode == 0, err

    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study / 'study.db'}").trials
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    by_process = {t.number: int(t.user_attrs["process"].rsplit(":", 1)[1]) for t in trials}
    assert by_process[0] == other.pid and set(by_process.values()) <= {other.pid, os.getpid()}
    assert sorted(p.name for p in study.glob("trial-*")) == ["trial-000", "trial-001", "trial-002"]
    for t in trials:  # each folder holds the run of the trial with its number, trained once
        run = study / f"trial-{t.number:03d}"
        assert json.loads((run / "run.json").read_text())["status"] == "complete"
        assert load_config(run / "config.yaml").train.learning_rate == t.params["train.learning_rate"]
    assert [r.number for r in here.rows] == [0, 1, 2]


def test_a_study_started_with_another_config_is_refused(tune_files, tmp_path, monkeypatch, capsys):
    config, space = tune_files
    study = tmp_path / "study"
    storage = f"sqlite:///{study / 'study.db'}"
    study.mkdir()
    optuna.create_study(study_name="tiny", storage=storage, direction="maximize").set_user_attr("config", "other")
    code, _, err = ftune_cli(monkeypatch, capsys, "tune", str(config), "--trials", "1", "--space", str(space),
                             "--output-dir", str(study))
    assert code == 2 and "study tiny in" in err and "was started with another config" in err
