"""task: regression: parsing the target (and the one-line errors for bad ones), the metrics against scipy/sklearn,
the baselines, the target's normalization, the one-output head, and a tiny run trained and used through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error

from ftune.config import load_config
from ftune.errors import ConfigError, DataError
from ftune.tasks import task_for
from ftune.tasks.baselines import tuned_ridge
from ftune.tasks.regression import OUTPUT, Regression, bootstrap_rmse, loss_value, parse_targets, regression_metrics
from helpers import counted_reviews, ftune_cli


@pytest.fixture(scope="module")
def stars_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("regression") / "stars.csv"
    counted_reviews(240).to_csv(path, index=False)
    return path


def regression_config(train: str, **overrides):
    return load_config(overrides={"task": "regression", "data.train": str(train), "data.text_column": "review",
                                  "data.label_column": "stars", "tracking.backend": "none", **overrides})


def write_csv(tmp_path, stars: list, name: str = "bad.csv"):
    path = tmp_path / name
    texts = [f"text number {i}" for i in range(len(stars))]
    pd.DataFrame({"review": texts, "stars": stars}).to_csv(path, index=False)
    return path


# --- the target -------------------------------------------------------------------------------------------------
def test_targets_parse_as_numbers():
    values = pd.Series([" 3 ", "4.5", "-2", "+1", "1e3", ".5", "7.", 2, 2.25, np.int64(4)])
    assert parse_targets(values, "f.csv", "stars").tolist() == [3, 4.5, -2, 1, 1000, 0.5, 7, 2, 2.25, 4]


@pytest.mark.parametrize("values, message", [
    (["1", "four stars", "x"], "f.csv row 2: target 'four stars' in column 'stars' is not a number; regression needs "
                               "a number in every row: fix it or remove the row (2 such rows); for a label per text "
                               "use task: classification"),
    (["1", "3,5"], "f.csv row 2: target '3,5' in column 'stars' is not a number; regression needs a number in every "
                   "row: fix it or remove the row (1 such rows); write the decimal point as '.' (3.5)"),
    (["1", ""], "f.csv row 2: empty target in column 'stars'; fill it with a number or remove the row (1 such rows)"),
    (["1", "  "], "f.csv row 2: empty target in column 'stars'"),
    ([1.0, None], "f.csv row 2: empty target in column 'stars'"),
    ([1.0, float("nan")], "f.csv row 2: empty target in column 'stars'"),
    (["NA", "1"], "f.csv row 1: target 'NA' (a missing value) in column 'stars'; fill it with a number"),
    (["1", "NaN"], "f.csv row 2: target 'NaN' (a missing value)"),
    (["1", "inf"], "f.csv row 2: target 'inf' in column 'stars' is not a finite number; replace it with a finite "
                   "number or remove the row (1 such rows)"),
    ([1.0, -math.inf], "f.csv row 2: target -inf in column 'stars' is not a finite number"),
    (["1", "1e999"], "f.csv row 2: target '1e999' in column 'stars' is not a finite number"),
    ([True, False], "f.csv row 1: target True in column 'stars' is not a number"),
    ([1, [1, 2]], "f.csv row 2: column 'stars' holds [1, 2], not one number per row"),
    (["１"], "f.csv row 1: target '１' in column 'stars' is not a number"),  # full-width digit: float() reads it
    (["1_000"], "f.csv row 1: target '1_000' in column 'stars' is not a number"),  # so does it this
])
def test_bad_targets_name_the_row_the_value_and_the_fix(values, message):
    with pytest.raises(DataError) as e:
        parse_targets(pd.Series(values, dtype=object), "f.csv", "stars")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_bad_target_in_a_file_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    path = write_csv(tmp_path, ["1", "2", "lots", "3"] * 3)
    with pytest.raises(DataError, match=rf"^{path} row 3: target 'lots' in column 'stars' is not a number"):
        task_for(regression_config(path)).load_splits(0)
    code, out, err = ftune_cli(monkeypatch, capsys, "train", "--data", str(path), "--text-column", "review",
                               "--label-column", "stars", "--set", "task=regression", "--tracking", "none",
                               "--output-dir", str(tmp_path / "run"), "--quiet")
    assert code == 2 and "row 3: target 'lots'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_target_column_and_constant_target(tmp_path):
    path = write_csv(tmp_path, [3.0] * 20)
    with pytest.raises(DataError, match="no column 'score'.*set data.label_column"):
        task_for(regression_config(path, **{"data.label_column": "score"})).load_splits(0)
    with pytest.raises(DataError, match=rf"^{path}: every target in the training split is 3; regression needs "
                                        "targets that vary"):
        task_for(regression_config(path)).load_splits(0)


def test_a_builtin_labeled_dataset_is_refused_before_reading():
    with pytest.raises(ConfigError, match="built-in dataset 'mr' is for task classification, not regression"):
        task_for(load_config(overrides={"task": "regression"})).load_splits(0)


def test_options_and_metric_choice():
    config = load_config(overrides={"task": {"name": "regression", "loss": "huber", "huber_delta": 0.5}})
    assert config.task.loss == "huber" and config.task.normalize and config.train.metric == "rmse"
    assert load_config(overrides={"task": "regression", "train.metric": "spearman"}).train.metric == "spearman"
    with pytest.raises(ConfigError, match="accuracy"):
        load_config(overrides={"task": "regression", "train.metric": "accuracy"})
    with pytest.raises(ConfigError):
        load_config(overrides={"task": {"name": "regression", "loss": "l1"}})
    assert Regression.is_better("rmse", 0.5, 0.6) and Regression.is_better("pearson", 0.7, 0.6)
    assert Regression.headline() == "rmse" and Regression.Prediction(value=2.5).value == 2.5


# --- scores -----------------------------------------------------------------------------------------------------
def test_metrics_match_scipy_and_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 200).astype(float)  # ties, as stars have
    predicted = truth + rng.normal(0, 0.8, 200)
    metrics = regression_metrics(truth, predicted)
    assert metrics["rmse"] == pytest.approx(math.sqrt(mean_squared_error(truth, predicted)), rel=1e-12)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(truth, predicted), rel=1e-12)
    assert metrics["pearson"] == pytest.approx(stats.pearsonr(truth, predicted).statistic, rel=1e-10)
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(truth, predicted).statistic, rel=1e-10)
    assert metrics["n"] == 200
    # A constant prediction (the mean baseline) has no correlation with the truth: 0, where scipy says nan.
    flat = regression_metrics(truth, np.full(200, truth.mean()))
    assert flat["pearson"] == 0.0 and flat["spearman"] == 0.0 and flat["rmse"] == pytest.approx(truth.std())


def test_rmse_interval_holds_the_rmse_and_follows_the_seed():
    errors = np.random.default_rng(1).normal(0, 2, 300)
    rmse = math.sqrt(np.mean(errors ** 2))
    low, high = bootstrap_rmse(errors, seed=3)
    assert low < rmse < high and high - low < 1.0
    assert bootstrap_rmse(errors, seed=3) == (low, high) != bootstrap_rmse(errors, seed=4)


@pytest.mark.parametrize("loss, delta", [("mse", 1.0), ("huber", 1.0), ("huber", 0.3)])
def test_step_loss_and_evaluation_loss_agree(loss, delta, stars_csv):
    task = task_for(regression_config(stars_csv, **{"task.loss": loss, "task.huber_delta": delta}))
    outputs = np.random.default_rng(2).normal(0, 1.5, 33)
    targets = np.random.default_rng(3).normal(0, 1, 33).astype(np.float32)
    logits = torch.tensor(outputs, dtype=torch.float32)[:, None]  # (batch, 1), as the head gives them
    total, count = task.loss(logits, {"labels": torch.from_numpy(targets)})
    assert count.item() == 33
    assert total.item() / 33 == pytest.approx(loss_value(outputs, targets, loss, delta), rel=1e-5)


# --- normalization and state ------------------------------------------------------------------------------------
def test_the_target_is_standardized_with_train_and_mapped_back(stars_csv, tiny_model):
    from ftune.models import load_tokenizer

    task = task_for(regression_config(stars_csv))
    splits = task.load_splits(0)
    train = splits.train["label"].to_numpy()
    assert splits.labels == [OUTPUT] and splits.train["label"].dtype == np.float64
    assert task.state == {"mean": pytest.approx(train.mean()), "std": pytest.approx(train.std())}
    data = task.encode_splits(splits, load_tokenizer(tiny_model))
    assert data["train"].labels.dtype == np.float32
    assert data["train"].labels.mean() == pytest.approx(0, abs=1e-6) and data["train"].labels.std() == pytest.approx(1)
    np.testing.assert_allclose(task.to_target(task.to_model(train)), train)

    # Perfect rows (the model's scale) score perfectly on the target's scale, and come back as the test targets.
    rows = list(data["test"].labels[:, None])
    metrics, predicted = task.score(rows, data["test"], splits.labels, interval_seed=0)
    np.testing.assert_allclose(predicted, splits.test["label"], atol=1e-5)
    assert metrics["rmse"] < 1e-5 and metrics["loss"] < 1e-10 and metrics["pearson"] == pytest.approx(1)
    assert set(Regression.metrics) <= set(metrics) and metrics["n"] == len(splits.test) and "rmse_ci95" in metrics

    # A task made from the saved state (task.json) maps outputs back the same way; without normalize, as they are.
    saved = json.loads(json.dumps(task.state))
    again = task_for(regression_config(stars_csv), saved)
    np.testing.assert_allclose(again.to_target(np.array([0.0, 1.0])), [train.mean(), train.mean() + train.std()])
    assert again.load_splits(0) and again.state == saved
    plain = task_for(regression_config(stars_csv, **{"task.normalize": False}))
    plain.load_splits(0)
    np.testing.assert_allclose(plain.to_model(train), train)


def test_prediction_without_a_saved_scale_is_refused(stars_csv):
    from ftune.errors import RunError

    with pytest.raises(RunError, match="task.json"):
        task_for(regression_config(stars_csv)).to_target(np.zeros(2))


def test_summary_and_warnings(tmp_path, tiny_model):
    from ftune.models import load_tokenizer

    frames = {name: counted_reviews(n, seed).rename(columns={"review": "text", "stars": "label"})
              for name, n, seed in (("train", 80, 0), ("validation", 20, 1), ("test", 20, 2))}
    frames["train"].loc[0, "label"] = 400.0  # an outlier
    frames["train"].loc[1, "text"] = frames["train"].loc[2, "text"] = "one text, two targets"
    frames["test"].loc[0, "text"] = frames["train"].loc[5, "text"]  # seen in training
    paths = {}
    for name, frame in frames.items():
        paths[name] = tmp_path / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    task = task_for(load_config(overrides={"task": "regression", "data.train": str(paths["train"]),
                                           "data.validation": str(paths["validation"]),
                                           "data.test": str(paths["test"]), "data.max_length": 8}))
    splits = task.load_splits(0)
    summary, warnings = task.summarize(splits, task.encode_splits(splits, load_tokenizer(tiny_model)))
    assert (summary["train"], summary["validation"], summary["test"]) == (80, 20, 20)
    assert summary["targets"]["splits"]["train"]["max"] == 400 and summary["tokens"]["max_length"] == 8
    assert sum(summary["targets"]["histogram"]["test"]) == 20
    text = "\n".join(warnings)
    for part in ("train: 1 texts appear with different targets, e.g. 'one text, two targets'",
                 "test: 1 texts also occur in train", "train: 1 targets lie more than 5 standard deviations from "
                 "the mean (e.g. 400", "task.loss=huber", "fill the 8-token window"):
        assert part in text, (part, text)
    huber = task_for(load_config(overrides={"task": {"name": "regression", "loss": "huber"},
                                            "data.train": str(paths["train"])}))
    splits = huber.load_splits(0)
    assert "standard deviations" not in "".join(huber.summarize(splits, huber.encode_splits(
        splits, load_tokenizer(tiny_model)))[1])


# --- baselines --------------------------------------------------------------------------------------------------
def test_baselines_are_scored_like_the_model(stars_csv):
    task = task_for(regression_config(stars_csv))
    splits = task.load_splits(0)
    scores = task.baselines(splits, 0)
    truth = splits.test["label"].to_numpy()
    assert set(scores) == {"mean", "tfidf_ridge"}
    assert scores["mean"] == regression_metrics(truth, np.full(len(truth), splits.train["label"].mean()))
    ridge = tuned_ridge(splits)  # the alpha with the best validation RMSE
    assert scores["tfidf_ridge"] == {**regression_metrics(truth, ridge.test),
                                     "rmse_ci95": bootstrap_rmse(ridge.test - truth, seed=0),
                                     **ridge.fields(), "seconds": scores["tfidf_ridge"]["seconds"]}
    assert scores["tfidf_ridge"]["chosen"].startswith(("word n-grams, ridge", "word+char n-grams, ridge"))
    assert scores["tfidf_ridge"]["rmse"] < 0.8 * scores["mean"]["rmse"] and scores["tfidf_ridge"]["spearman"] > 0.5


# --- the model ----------------------------------------------------------------------------------------------------
def test_the_head_has_one_output_and_saves_as_a_regression_model(tiny_model, tmp_path, stars_csv):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    task = task_for(regression_config(stars_csv))
    model = task.load_model(tiny_model, [OUTPUT], False)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    model.save_pretrained(tmp_path / "model")
    saved = AutoConfig.from_pretrained(tmp_path / "model")
    assert saved.problem_type == "regression" and saved.id2label == {0: OUTPUT}
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    batch = {"input_ids": torch.tensor([[101, 2307, 102]]), "labels": torch.tensor([2.0])}
    out = again(**batch)  # transformers scores a regression head with MSE
    assert out.logits.shape == (1, 1) and out.loss.item() == pytest.approx((out.logits.item() - 2.0) ** 2, rel=1e-5)


# --- a run ------------------------------------------------------------------------------------------------------
def test_a_tiny_run_trains_saves_its_scale_and_predicts_numbers(tiny_model, stars_csv, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code, out, err = ftune_cli(monkeypatch, capsys, "train", "--model", tiny_model, "--data", str(stars_csv),
                               "--text-column", "review", "--label-column", "stars", "--set", "task=regression",
                               "--set", "data.max_length=32", "--epochs", "6",
                               "--batch-size", "16", "--learning-rate", "3e-3", "--set", "train.warmup_ratio=0",
                               "--tracking", "none", "--output-dir", str(run_dir), "--quiet")
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert set(test) >= {"finetuned", "base_model", "mean", "tfidf_ridge"} and metrics["task"] == "regression"
    assert set(Regression.metrics) | {"n", "rmse_ci95"} <= set(test["finetuned"])
    # The tiny model learns the order first, the scale later (seen: 2 epochs, Pearson 0.93 at the mean baseline's
    # RMSE; 6 epochs, RMSE 0.41 against the mean's 1.12 and TF-IDF ridge's 0.67).
    assert test["finetuned"]["pearson"] > 0.6 and test["finetuned"]["rmse"] < 0.8 * test["mean"]["rmse"]
    assert json.loads((run_dir / "labels.json").read_text()) == [OUTPUT]
    state = json.loads((run_dir / "task.json").read_text())
    assert state["std"] > 0 and 0 < state["mean"] < 3
    predictions = pd.read_csv(run_dir / "test_predictions.csv")
    assert list(predictions.columns) == ["text", "target", "predicted"] and len(predictions) == test["finetuned"]["n"]

    code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(run_dir), "--text", "superb great brilliant film",
                               "--text", "the movie was long")
    answers = [json.loads(line) for line in out.splitlines()]
    assert code == 0, err
    assert [set(a) for a in answers] == [{"text", "value"}] * 2 and all(math.isfinite(a["value"]) for a in answers)
    # The test split's predictions and prediction on the same texts agree: the scale came back from task.json.
    texts = predictions["text"].head(5).tolist()
    code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(run_dir), *(a for t in texts for a in ("--text", t)))
    np.testing.assert_allclose([json.loads(line)["value"] for line in out.splitlines()],
                               predictions["predicted"].head(5), rtol=1e-4)

    from fastapi.testclient import TestClient

    from ftune.predictors import load_predictor
    from ftune.serve import create_app

    with TestClient(create_app(load_predictor(run_dir))) as client:  # the service answers {"value": ...}
        served = client.post("/v1/predict", json={"texts": texts[:2]}).json()["predictions"]
    np.testing.assert_allclose([a["value"] for a in served], predictions["predicted"].head(2), rtol=1e-4)

    code, out, err = ftune_cli(monkeypatch, capsys, "eval", str(run_dir), "--data", str(stars_csv), "--text-column",
                               "review", "--label-column", "stars", "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["n"] == 240 and set(Regression.metrics) <= set(scores)
