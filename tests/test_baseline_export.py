"""`ftune export RUN --baseline`: the run's TF-IDF baseline refitted, as ONNX, checked against scikit-learn, loaded by
predict, eval and serve like any export; and the one-line refusals."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

import ftune
from ftune.errors import ConfigError
from ftune.export import _baseline_graph, _sklearn_scores, export_baseline
from ftune.predictors import load_predictor
from ftune.serve import create_app
from ftune.tasks import task_for
from ftune.tasks.baselines import fit_chosen, joined_texts
from helpers import counted_reviews, ftune_cli, synthetic_reviews

TEXTS = ["a superb film", "dull", "the acting was really quite excellent and the story was long but wonderful",
         "story plot boring old", "great great great but dull dull", "", "!!"]


def _train(root, name, train, **overrides):
    base = {"model.name": overrides.pop("model"), "data.train": str(train), "data.text_column": "review",
            "data.label_column": "stars", "data.max_length": 32, "train.epochs": 1, "train.batch_size": 16,
            "train.learning_rate": 3e-3, "tracking.backend": "none", "output_dir": str(root / name)}
    return ftune.train(ftune.load_config(overrides=base | overrides), quiet=True).path


@pytest.fixture(scope="module")
def runs(tiny_model, reviews_csv, tmp_path_factory):
    """A classification run and a regression run of the tiny model, each with its baseline."""
    root = tmp_path_factory.mktemp("baseline-runs")
    counted_reviews(120).to_csv(root / "counts.csv", index=False)
    return {"classification": _train(root, "classification", reviews_csv, model=tiny_model),
            "regression": _train(root, "regression", root / "counts.csv", model=tiny_model, task="regression")}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """The classification run's baseline export, and the scikit-learn pipeline it was converted from."""
    run = ftune.Run(runs["classification"])
    splits = task_for(run.config).load_splits(run.config.train.seed)
    pipeline = fit_chosen(splits, run.metrics["test"]["tfidf"]["chosen"])
    return export_baseline(run.path, tmp_path_factory.mktemp("baseline") / "export"), pipeline


@pytest.mark.e2e
def test_export_records_parity_and_predicts_as_scikit_learn(exported, runs):
    folder, pipeline = exported
    info = json.loads((folder / "export.json").read_text())
    assert info["kind"] == "classical" and info["chosen"] == ftune.Run(runs["classification"]).metrics["test"]["tfidf"]["chosen"]
    assert info["parity"]["texts"] == 80 and info["parity"]["onnx"]["same_label_as_sklearn"] >= 0.99
    assert info["parity"]["onnx"]["max_abs_diff"] < 1e-5  # the sublinear tf fix: scores, not only labels, agree
    assert {p.name for p in folder.iterdir()} == {"model.onnx", "labels.json", "export.json", "README.md"}

    predictor = load_predictor(folder)
    assert predictor.kind == "classical" and predictor.describe()["labels"] == ["neg", "pos"]
    answers = predictor.predict(TEXTS)
    assert [a["label"] for a in answers] == [["neg", "pos"][i] for i in pipeline.predict(TEXTS)]
    expected = _sklearn_scores(pipeline, TEXTS)
    assert np.abs(np.array([[a["scores"][n] for n in ("neg", "pos")] for a in answers]) - expected).max() < 1e-5
    pairs = ["first half", "second half, superb"]  # a pair is read joined, as the baseline learned it
    assert [a["label"] for a in predictor.predict(pairs, pairs[::-1])] == \
        [["neg", "pos"][i] for i in pipeline.predict([f"{a} [SEP] {b}" for a, b in zip(pairs, pairs[::-1])])]


@pytest.mark.e2e
def test_cli_export_predict_and_eval(runs, exported, tmp_path, monkeypatch, capsys):
    _, pipeline = exported
    folder = tmp_path / "cli-baseline"
    code, out, err = ftune_cli(monkeypatch, capsys, "export", str(runs["classification"]), "--baseline", "--output",
                               str(folder))
    assert code == 0, err
    assert "parity on the run's 80 test texts" in out and "same label as scikit-learn" in out and "100.00%" in out
    frame = synthetic_reviews(40, seed=3)
    frame.to_csv(tmp_path / "texts.csv", index=False)
    code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(folder), "--input", str(tmp_path / "texts.csv"),
                               "--text-column", "review")
    assert code == 0, err
    assert "using the TF-IDF baseline" in err
    labels = [json.loads(line)["label"] for line in out.splitlines()]
    assert labels == [["neg", "pos"][i] for i in pipeline.predict(frame["review"].tolist())]
    code, out, err = ftune_cli(monkeypatch, capsys, "eval", str(folder), "--data", str(tmp_path / "texts.csv"),
                               "--text-column", "review", "--label-column", "stars", "--json")
    truth = (frame["stars"] == "pos").to_numpy()
    assert code == 0 and json.loads(out)["accuracy"] == pytest.approx(np.mean(pipeline.predict(frame["review"]) == truth))


@pytest.mark.e2e
def test_serve_answers_from_the_baseline_export(exported):
    from fastapi.testclient import TestClient

    folder, pipeline = exported
    with TestClient(create_app(load_predictor(folder))) as client:
        body = client.post("/v1/predict", json={"texts": TEXTS[:4]}).json()
        info = client.get("/v1/model").json()
    assert body["model"] == "classical" and info["kind"] == "classical" and info["task"] == "classification"
    assert [p["label"] for p in body["predictions"]] == [["neg", "pos"][i] for i in pipeline.predict(TEXTS[:4])]
    assert all(abs(sum(p["scores"].values()) - 1) < 1e-5 for p in body["predictions"])


@pytest.mark.e2e
@pytest.mark.parametrize("flags, expected", [
    (["--variant", "int8"], "is a baseline export, which holds one model; drop --variant"),
    (["--precision", "bf16"], "is a baseline export, which holds one model; drop --precision"),
    (["--device", "cuda"], "--device cuda: a baseline export runs on the CPU; use --device cpu or auto"),
])
def test_flags_for_a_fine_tuned_export_are_refused(flags, expected, exported, monkeypatch, capsys):
    code, _, err = ftune_cli(monkeypatch, capsys, "predict", str(exported[0]), "--text", "fine", *flags)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def _copy(run, tmp_path, edit_metrics=None, edit_config=None):
    """A copy of a finished run with its metrics.json or config.yaml edited."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    if edit_metrics:
        metrics = json.loads((copy / "metrics.json").read_text())
        edit_metrics(metrics["test"])
        (copy / "metrics.json").write_text(json.dumps(metrics))
    if edit_config:
        config = yaml.safe_load((copy / "config.yaml").read_text())
        edit_config(config)
        (copy / "config.yaml").write_text(yaml.safe_dump(config))
    return copy


def _changed_data(config, tmp_path):
    changed = pd.read_csv(config["data"]["train"]).iloc[:-5]  # five rows fewer: other splits
    changed.to_csv(tmp_path / "changed.csv", index=False)
    config["data"]["train"] = str(tmp_path / "changed.csv")


@pytest.mark.e2e
@pytest.mark.parametrize("case, expected", [
    ("regression", "is a regression run; --baseline exports the TF-IDF baseline of classification runs only"),
    ("not a run", "is not an ftune run directory"),
    ("data changed", "the data ("),
    ("before chosen", "was trained before its baseline recorded which model it chose; retrain it"),
    ("no baseline", "has no TF-IDF baseline (it trained with train.baselines or train.evaluate_test off)"),
    ("character n-grams", "reads character n-grams within words, which skl2onnx cannot convert to ONNX"),
    ("parity", "of the run's 80 test texts (under 101%): onnxruntime reads this data's words otherwise; nothing was"),
    ("quantize", "--quantize applies to the fine-tuned model's export"),
])
def test_refusals_are_one_line_and_exit_2(case, expected, runs, tmp_path, monkeypatch, capsys):
    run = runs["classification"]
    if case == "regression":
        run = runs["regression"]
    elif case == "not a run":
        run = tmp_path
    elif case == "data changed":
        run = _copy(run, tmp_path, edit_config=lambda config: _changed_data(config, tmp_path))
    elif case == "before chosen":
        run = _copy(run, tmp_path, edit_metrics=lambda test: test["tfidf"].pop("chosen"))
    elif case == "no baseline":
        run = _copy(run, tmp_path, edit_metrics=lambda test: test.pop("tfidf"))
    elif case == "character n-grams":
        run = _copy(run, tmp_path, edit_metrics=lambda test: test["tfidf"].update(
            chosen="word+char n-grams, logistic regression, C=10"))
    elif case == "parity":
        monkeypatch.setattr("ftune.export.BASELINE_AGREEMENT", 1.01)  # no real data here falls short of 99%
    extra = ["--quantize", "int8"] if case == "quantize" else []
    code, _, err = ftune_cli(monkeypatch, capsys, "export", str(run), "--baseline", "--output",
                             str(tmp_path / "out"), *extra)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("chosen", ["word n-grams, logistic regression, C=10", "word n-grams, linear SVM, C=0.3",
                                    "word n-grams, logistic regression, C=1, balanced"])
@pytest.mark.parametrize("classes", [2, 3])
def test_both_linear_models_convert_with_scikit_learns_scores(chosen, classes, tmp_path):
    """No training: the pipeline on the reviews, as ONNX, against scikit-learn, label and score, words said twice
    (sublinear tf), accents, one-letter words between others (word pairs) included."""
    import onnxruntime as ort

    frame = synthetic_reviews(300)
    if classes == 3:
        frame["stars"] = np.array(["low", "mid", "high"])[np.arange(len(frame)) % 3]
    first = frame["stars"] == frame["stars"][0]
    frame = frame[~first | (np.arange(len(frame)) % 9 == 0)]  # imbalanced, so the grid has balanced models
    frame.to_csv(tmp_path / "data.csv", index=False)
    config = ftune.load_config(overrides={"data.train": str(tmp_path / "data.csv"), "data.text_column": "review",
                                          "data.label_column": "stars"})
    splits = task_for(config).load_splits(0)
    pipeline = fit_chosen(splits, chosen)
    graph = _baseline_graph(pipeline, chosen, len(splits.labels), tmp_path)
    texts = joined_texts(splits.test) + TEXTS + ["Ça été un film très ÉLÉGANT, superb", "a b great c d dull"]
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    ids, scores = session.run(["label", "scores"], {"text": np.array(texts, dtype=object)})
    assert (ids == pipeline.predict(texts)).all()
    assert scores.shape == (len(texts), len(splits.labels))
    assert np.abs(scores - _sklearn_scores(pipeline, texts)).max() < 1e-5


def test_a_grid_model_that_is_not_there_is_none_and_char_ngrams_refuse(tmp_path):
    synthetic_reviews(120).to_csv(tmp_path / "data.csv", index=False)
    config = ftune.load_config(overrides={"data.train": str(tmp_path / "data.csv"), "data.text_column": "review",
                                          "data.label_column": "stars"})
    splits = task_for(config).load_splits(0)
    assert fit_chosen(splits, "word n-grams, gradient boosting") is None
    chosen = "word+char n-grams, linear SVM, C=1"
    with pytest.raises(ConfigError, match="character n-grams within words"):
        _baseline_graph(fit_chosen(splits, chosen), chosen, 2, tmp_path)
