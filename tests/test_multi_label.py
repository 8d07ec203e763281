"""task multi-label: label cells (lists or joined strings), the bad inputs' one-line errors, thresholds tuned on
validation, metrics against sklearn, the baselines, predictions; and a tiny run through the CLI."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from ftune.data import Encoded
from ftune.errors import DataError
from ftune.schema import DataConfig
from ftune.tasks.multi_label import (GRID, MultiLabel, MultiLabelOptions, Prediction, bce, bootstrap_micro_f1,
                                     most_frequent_labels, multilabel_metrics, parse_label_cell, sigmoid,
                                     tune_thresholds)

TOPICS = {"sport": ["football", "tennis", "goal", "match"], "food": ["pasta", "bread", "cheese", "recipe"],
          "tech": ["laptop", "software", "chip", "phone"]}
FILLER = "the a news today people said about new old week many some and it".split()


def topic_texts(n: int, seed: int = 0) -> pd.DataFrame:
    """Texts with the keywords of one or two topics; the label cell joins those topics with '|'."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topics = sorted(rng.sample(sorted(TOPICS), rng.choice([1, 1, 2])))
        words = rng.sample(FILLER, 5) + [rng.choice(TOPICS[t]) for t in topics]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "|".join(topics)})
    return pd.DataFrame(rows)


def task_for(train, threshold="global", separator="|", **data) -> MultiLabel:
    config = SimpleNamespace(task=MultiLabelOptions(threshold=threshold, label_separator=separator),
                             data=DataConfig(train=str(train), max_length=32, **data),
                             train=SimpleNamespace(class_weights=False))
    return MultiLabel(config)


def refused(task: MultiLabel, match: str) -> str:
    with pytest.raises(DataError, match=match) as e:
        task.load_splits(seed=0)
    assert "\n" not in str(e.value)
    return str(e.value)


# --- label cells ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell, names", [
    ("sport|tech", ["sport", "tech"]),
    (" sport | tech |", ["sport", "tech"]),            # spaces and empty pieces dropped
    ("tech|tech", ["tech"]),                            # repeats dropped
    ("sport", ["sport"]),
    ('["sport", "tech"]', ["sport", "tech"]),           # a JSON list in a CSV cell
    ("['sport', 'tech']", ["sport", "tech"]),           # what pandas writes for a list column
    (["sport", "tech"], ["sport", "tech"]),             # JSON / Parquet lists as they are
    (np.array(["a", "b"], dtype=object), ["a", "b"]),
    ([1, 3.0], ["1", "3"]),
    (["a|b"], ["a|b"]),                                 # a list is not split at the separator
])
def test_label_cells_are_lists_or_joined_strings(cell, names):
    assert parse_label_cell(cell, "|") == (names, False)


def test_the_separator_is_configurable():
    assert parse_label_cell("a, b", ",") == (["a", "b"], False)
    assert parse_label_cell("a|b", ",") == (["a|b"], False)


@pytest.mark.parametrize("cell", ["", "  ", [], "|", float("nan"), None, "None"])
def test_empty_cells_are_empty_sets(cell):
    assert parse_label_cell(cell, "|")[0] == []


@pytest.mark.parametrize("cell, match", [("[a, b", None), ('["a", ["b"]]', "each label must be a string"),
                                         ("[not, a list]", "neither JSON nor a Python list"),
                                         ({"a": 1}, "not a label set")])
def test_what_cannot_be_labels_is_a_value_error(cell, match):
    if match is None:  # not a list at all: just a label that starts with '['
        assert parse_label_cell(cell, "|") == (["[a, b"], False)
        return
    with pytest.raises(ValueError, match=match):
        parse_label_cell(cell, "|")


def test_options_validate_the_threshold():
    assert MultiLabelOptions(threshold=0.3).threshold == 0.3
    assert MultiLabelOptions(threshold="per_label").threshold == "per_label"
    for bad in (0, 1.0, 1.5, "best"):
        with pytest.raises(ValidationError):
            MultiLabelOptions(threshold=bad)
    with pytest.raises(ValidationError):
        MultiLabelOptions(label_separator="")
    assert all(f.description for f in MultiLabelOptions.model_fields.values() if f is not
               MultiLabelOptions.model_fields["name"])


# --- splits and bad inputs ----------------------------------------------------------------------------------------

def test_splits_from_joined_labels(tmp_path):
    path = tmp_path / "topics.csv"
    topic_texts(200).to_csv(path, index=False)
    splits = task_for(path).load_splits(seed=0)
    assert splits.labels == ["food", "sport", "tech"]
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 200
    for frame in (splits.train, splits.validation, splits.test):
        assert all(isinstance(ids, list) and ids == sorted(ids) and ids for ids in frame["label"])
    for text, ids in zip(splits.train["text"], splits.train["label"]):  # each text has its topics' keywords
        assert {splits.labels[i] for i in ids} == {t for t, words in TOPICS.items() if set(words) & set(text.split())}
    assert splits.fingerprint() == task_for(path).load_splits(seed=0).fingerprint()


def test_splits_from_json_lists_and_given_files(tmp_path):
    frame = topic_texts(120)
    frame["label"] = frame["label"].str.split("|")
    frame.iloc[:80].to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    frame.iloc[80:100].to_json(tmp_path / "dev.jsonl", orient="records", lines=True)
    frame.iloc[100:].to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    splits = task_for(tmp_path / "train.jsonl", validation=str(tmp_path / "dev.jsonl"),
                      test=str(tmp_path / "test.jsonl")).load_splits(seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (80, 20, 20)
    names = [[splits.labels[i] for i in ids] for ids in splits.test["label"]]
    assert names == [sorted(x) for x in frame["label"].iloc[100:]]


def test_an_empty_label_set_is_refused_with_its_row(tmp_path):
    frame = topic_texts(50)
    frame.loc[6, "label"] = ""
    frame.loc[9, "label"] = "|"
    frame.to_csv(tmp_path / "t.csv", index=False)
    message = refused(task_for(tmp_path / "t.csv"), "row 7: an empty label set in column 'label'")
    assert "(2 such rows)" in message and "t.csv" in message


def test_a_missing_value_is_named_as_such(tmp_path):
    frame = topic_texts(50)
    frame.loc[3, "label"] = "NULL"
    frame.to_csv(tmp_path / "t.csv", index=False)
    refused(task_for(tmp_path / "t.csv"), r"row 4: label 'NULL' \(a missing value\)")


def test_an_empty_list_is_refused(tmp_path):
    frame = topic_texts(30)
    frame["label"] = frame["label"].str.split("|")
    frame.at[2, "label"] = []
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    refused(task_for(tmp_path / "t.jsonl"), "t.jsonl row 3: an empty label set")


def test_a_label_only_in_test_is_refused_by_name(tmp_path):
    train, test = topic_texts(60), topic_texts(20, seed=1)
    test.loc[4, "label"] = "sport|weather"
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    message = refused(task_for(tmp_path / "train.csv", test=str(tmp_path / "test.csv")),
                      "test.csv row 5: the test split has label 'weather', which does not occur in the training data")
    assert "labels: food, sport, tech" in message and "1 such test rows" in message


def test_a_bad_list_cell_names_its_row(tmp_path):
    frame = topic_texts(30)
    frame.loc[1, "label"] = "[sport, tech]"
    frame.to_csv(tmp_path / "t.csv", index=False)
    refused(task_for(tmp_path / "t.csv"),
            "t.csv row 2: column 'label' holds '\\[sport, tech\\]', which looks like a list")


def test_one_label_set_for_every_row_is_refused(tmp_path):
    frame = topic_texts(30).assign(label="sport|tech")
    frame.to_csv(tmp_path / "t.csv", index=False)
    refused(task_for(tmp_path / "t.csv"), r"every row of the training split has the label set \{sport, tech\}")


def test_a_wrong_label_column_is_named(tmp_path):
    topic_texts(30).to_csv(tmp_path / "t.csv", index=False)
    refused(task_for(tmp_path / "t.csv", label_column="labels"), "no column 'labels'.*did you mean 'label'")


def test_summary_and_warnings(tmp_path):
    frame = topic_texts(100)
    frame.loc[:9, "label"] = frame.loc[:9, "label"].str.replace("food", "food,tech")
    frame.to_csv(tmp_path / "t.csv", index=False)
    task = task_for(tmp_path / "t.csv")
    splits = task.load_splits(seed=0)
    data = {s: Encoded([np.arange(5)] * len(getattr(splits, s)), None,
                       np.zeros((len(getattr(splits, s)), len(splits.labels)), np.float32)) for s in
            ("train", "validation", "test")}
    summary, warnings = task.summarize(splits, data)
    assert summary["train"] == len(splits.train)
    assert sum(summary["classes"]["train"].values()) == sum(map(len, splits.train["label"]))
    assert 1 <= summary["labels_per_text"]["train"] <= 2
    assert any("task.label_separator to ','" in w for w in warnings)


# --- encoding and loss --------------------------------------------------------------------------------------------

class WordTokenizer:
    """Enough of a tokenizer for encode(): an id per word."""

    name_or_path, model_max_length = "words", 512

    def __len__(self):
        return 2000

    def __call__(self, texts, pairs=None, truncation=True, max_length=32):
        return {"input_ids": [[101] + [hash(w) % 1000 + 1000 for w in t.split()][:max_length - 2] + [102]
                              for t in texts]}


def test_encoded_labels_are_a_float_matrix_the_loss_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("FTUNE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "t.csv"
    topic_texts(60).to_csv(path, index=False)
    task = task_for(path)
    splits = task.load_splits(seed=0)
    data = task.encode_splits(splits, WordTokenizer())
    train = data["train"]
    assert train.labels.dtype == np.float32 and train.labels.shape == (len(splits.train), 3)
    assert train.labels.sum(1).tolist() == [len(ids) for ids in splits.train["label"]]
    from ftune.data import collate

    batch = collate(train, [0, 1, 2, 3], pad_id=0)
    logits = torch.randn(4, 3)
    total, count = task.loss(logits, batch)
    assert count.item() == 12
    assert torch.allclose(total / count, F.binary_cross_entropy_with_logits(logits, batch["labels"]))
    assert bce(logits.numpy(), batch["labels"].numpy()) == pytest.approx((total / count).item(), rel=1e-5)


def test_class_weights_weigh_each_labels_positives():
    task = task_for("x.csv")
    task.config.train.class_weights = True
    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 1]], dtype=np.float32)
    task.prepare_loss(Encoded([], None, labels), ["a", "b"], torch.device("cpu"))
    assert task.pos_weight.tolist() == [3.0, 1.0]


# --- metrics and thresholds ---------------------------------------------------------------------------------------

def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.random((200, 6)) < 0.3
    predicted = rng.random((200, 6)) < 0.35
    truth[:, 5] = predicted[:, 5] = False  # a label nobody has: F1 0, as sklearn's zero_division=0
    names = list("abcdef")
    m = multilabel_metrics(truth, predicted, names)
    assert m["micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    p, r, f, s = precision_recall_fscore_support(truth, predicted, zero_division=0)
    for i, name in enumerate(names):
        assert m["per_class"][name] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert m["n"] == 200 and m["no_label"] == int((~predicted.any(1)).sum())


def test_bootstrap_interval_holds_the_score():
    rng = np.random.default_rng(1)
    truth = rng.random((300, 4)) < 0.4
    predicted = np.where(rng.random((300, 4)) < 0.8, truth, ~truth)
    low, high = bootstrap_micro_f1(truth, predicted, seed=0)
    score = f1_score(truth, predicted, average="micro")
    assert low < score < high and high - low < 0.15
    assert bootstrap_micro_f1(truth, predicted, seed=0) == (low, high)


def test_global_threshold_maximizes_validation_micro_f1():
    truth = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=bool)
    probs = np.array([[0.35, 0.1], [0.8, 0.2], [0.1, 0.3], [0.2, 0.25]])
    thresholds = tune_thresholds(probs, truth, "global")
    assert thresholds.tolist() == [0.3, 0.3]  # 0.26..0.30 all tie (micro-F1 1.0); nearest 0.5 wins
    best = max(f1_score(truth, probs >= t, average="micro") for t in GRID)
    assert f1_score(truth, probs >= thresholds, average="micro") == pytest.approx(best) == 1.0


def test_per_label_thresholds_and_a_label_without_positives():
    rng = np.random.default_rng(2)
    truth = rng.random((300, 3)) < 0.5
    truth[:, 2] = False
    # label 0 separates at 0.2, label 1 at 0.8
    probs = np.stack([np.where(truth[:, 0], rng.uniform(0.21, 0.4, 300), rng.uniform(0, 0.19, 300)),
                      np.where(truth[:, 1], rng.uniform(0.81, 1, 300), rng.uniform(0.6, 0.79, 300)),
                      rng.uniform(0, 1, 300)], axis=1)
    per_label = tune_thresholds(probs, truth, "per_label")
    assert 0.19 <= per_label[0] <= 0.21 and 0.79 <= per_label[1] <= 0.81
    assert per_label[2] == tune_thresholds(probs, truth, "global")[0]
    for j in range(2):
        assert f1_score(truth[:, j], probs[:, j] >= per_label[j]) == 1.0


def test_score_calibrate_and_state(tmp_path):
    rng = np.random.default_rng(3)
    truth = (rng.random((100, 3)) < 0.4).astype(np.float32)
    truth[truth.sum(1) == 0, 0] = 1
    logits = np.where(truth > 0, 0.2, -2.0) + rng.normal(0, 0.3, truth.shape)  # positives just under 0.5
    data = Encoded([np.arange(3)] * 100, None, truth)
    task = task_for("x.csv")
    before, probs = task.score(list(logits), data, ["a", "b", "c"])
    assert set(MultiLabel.metrics) <= set(before) and before["n"] == 100
    assert probs == pytest.approx(sigmoid(logits))
    state = task.calibrate(list(logits), data, ["a", "b", "c"])
    assert task.state is state and len(state["thresholds"]) == 3 and state["thresholds"][0] < 0.5
    after, _ = task.score(list(logits), data, ["a", "b", "c"], interval_seed=0)
    assert after["micro_f1"] > before["micro_f1"] and after["micro_f1"] == state["validation_micro_f1"]
    low, high = after["micro_f1_ci95"]
    assert low <= after["micro_f1"] <= high
    assert MultiLabel(task.config, state=json.loads(json.dumps(state))).thresholds(3).tolist() == state["thresholds"]
    fixed = task_for("x.csv", threshold=0.3)
    assert fixed.thresholds(3).tolist() == [0.3] * 3
    assert fixed.calibrate(list(logits), data, ["a", "b", "c"])["thresholds"] == [0.3] * 3


# --- baselines ----------------------------------------------------------------------------------------------------

def test_most_frequent_labels_is_the_best_constant_set():
    truth = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=bool)
    chosen = most_frequent_labels(truth)
    assert chosen.tolist() == [True, True, False]
    best = max(f1_score(truth, np.tile(c, (4, 1)), average="micro")
               for c in ([1, 0, 0], [1, 1, 0], [1, 1, 1]))
    assert f1_score(truth, np.tile(chosen, (4, 1)), average="micro") == pytest.approx(best)


def test_baselines_on_learnable_topics(tmp_path):
    path = tmp_path / "t.csv"
    topic_texts(300).to_csv(path, index=False)
    task = task_for(path)
    splits = task.load_splits(seed=0)
    scores = task.baselines(splits, seed=0)
    assert set(scores) == {"tfidf", "most_frequent_labels"}
    assert scores["tfidf"]["micro_f1"] > 0.9 > scores["most_frequent_labels"]["micro_f1"]
    for metrics in scores.values():
        assert {"micro_f1", "macro_f1", "subset_accuracy", "per_class", "n"} <= set(metrics)
        assert metrics["n"] == len(splits.test)


# --- predictions ----------------------------------------------------------------------------------------------

class FakePredictor:
    labels = ["food", "sport", "tech"]
    tokenizer = WordTokenizer()
    max_length = 32

    def __init__(self, logits):
        self.logits = logits

    def outputs(self, data, per_row):
        assert len(data) == len(self.logits)
        return per_row(torch.tensor(self.logits), {})


def test_predict_returns_the_set_and_every_score():
    task = task_for("x.csv")
    answers = task.predict(FakePredictor([[2.0, -1.0, 3.0], [-3.0, -2.0, -4.0]]), ["pasta and chips", "nothing"])
    assert answers[0]["labels"] == ["tech", "food"]  # most probable first
    assert answers[1]["labels"] == []                # nothing reaches the threshold: an empty set
    assert answers[0]["scores"]["sport"] == pytest.approx(float(sigmoid(-1.0)))
    assert [Prediction(**a) for a in answers]
    task.state = {"thresholds": [0.5, 0.2, 0.99]}
    assert task.predict(FakePredictor([[2.0, -1.0, 3.0]]), ["x"])[0]["labels"] == ["food", "sport"]


def test_save_predictions_reads_like_a_classification_csv(tmp_path):
    path = tmp_path / "t.csv"
    topic_texts(60).to_csv(path, index=False)
    task = task_for(path)
    splits = task.load_splits(seed=0)
    truth = np.zeros((len(splits.test), 3))
    for row, ids in enumerate(splits.test["label"]):
        truth[row, ids] = 1
    probs = np.clip(truth * 0.9 + 0.05, 0, 1)
    probs[0] = [0.6, 0.6, 0.6]
    task.save_predictions(tmp_path, splits, {}, probs, splits.labels)
    frame = pd.read_csv(tmp_path / "test_predictions.csv", keep_default_na=False)
    assert list(frame.columns) == ["text", "label", "predicted", "score", "score_food", "score_sport", "score_tech"]
    assert frame["predicted"].iloc[0] == "food|sport|tech"
    assert (frame["label"] == frame["predicted"]).iloc[1:].all()
    assert frame["score"].iloc[1:].tolist() == pytest.approx([0.95 ** 3] * (len(frame) - 1))
    assert frame["score_food"].tolist() == pytest.approx(probs[:, 0].tolist())


# --- end to end: a tiny run through the CLI ---------------------------------------------------------------------

@pytest.mark.e2e
def test_train_predict_eval_and_export_through_the_cli(tiny_model, tmp_path, monkeypatch, capsys):
    from helpers import ftune_cli

    data = tmp_path / "topics.csv"
    frame = topic_texts(240)
    frame["label"] = frame["label"].str.replace("|", ";")
    frame.to_csv(data, index=False)
    run_dir = tmp_path / "run"
    code, out, err = ftune_cli(monkeypatch, capsys, "train", "--model", tiny_model, "--data", str(data),
                               "--output-dir", str(run_dir), "--set", "task.name=multi-label",
                               "--set", "task.label_separator=;", "--set", "task.threshold=per_label",
                               "--set", "train.learning_rate=3e-3", "--set", "data.max_length=32", "--batch-size", "16",
                               "--set", "train.epochs=2", "--set", "train.warmup_ratio=0",
                               "--set", "tracking.backend=none", "--quiet")
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "multi-label" and metrics["validation"]["metric"] == "micro_f1"
    test = metrics["test"]
    assert set(MultiLabel.metrics) <= set(test["finetuned"]) and len(test["finetuned"]["micro_f1_ci95"]) == 2
    assert {"tfidf", "most_frequent_labels", "base_model"} <= set(test)
    state = json.loads((run_dir / "task.json").read_text())
    assert state["threshold"] == "per_label" and len(state["thresholds"]) == 3
    assert json.loads((run_dir / "labels.json").read_text()) == ["food", "sport", "tech"]
    predictions = pd.read_csv(run_dir / "test_predictions.csv", keep_default_na=False)
    assert {"text", "label", "predicted", "score", "score_tech"} <= set(predictions.columns)
    assert (run_dir / "report.html").is_file()

    code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(run_dir), "--text", "the laptop and the pasta",
                               "--text", "news today")
    assert code == 0, err
    answers = [json.loads(line) for line in out.splitlines()]
    assert len(answers) == 2
    for answer in answers:
        assert set(answer["scores"]) == {"food", "sport", "tech"} and set(answer["labels"]) <= set(answer["scores"])
        assert all(answer["scores"][name] >= t for name, t in zip(["food", "sport", "tech"], state["thresholds"])
                   if name in answer["labels"])

    code, out, err = ftune_cli(monkeypatch, capsys, "eval", str(run_dir), "--data", str(data))
    assert code == 0, err
    assert "micro_f1" in out

    from ftune.export import export_onnx
    from ftune.predictors import load_predictor

    folder = export_onnx(run_dir, tmp_path / "export")
    parity = json.loads((folder / "export.json").read_text())["parity"]
    assert parity["onnx-fp32"]["max_abs_diff"] < 1e-4
    assert parity["onnx-fp32"]["micro_f1"] == parity["pytorch"]["micro_f1"]
    onnx_answers = load_predictor(folder).predict(["the laptop and the pasta", "news today"])
    assert [a["labels"] for a in onnx_answers] == [a["labels"] for a in answers]

    from fastapi.testclient import TestClient

    from ftune.serve import create_app

    with TestClient(create_app(load_predictor(run_dir))) as client:  # the service answers in the task's shape
        served = client.post("/v1/predict", json={"texts": ["the laptop and the pasta"]}).json()["predictions"]
        schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert served[0]["labels"] == answers[0]["labels"] and set(served[0]["scores"]) == {"food", "sport", "tech"}
    assert "labels" in schema["Prediction"]["properties"]


def test_bad_labels_through_the_cli_are_one_line_and_exit_2(tiny_model, tmp_path, monkeypatch, capsys):
    from helpers import ftune_cli

    frame = topic_texts(40)
    frame.loc[5, "label"] = ""
    frame.to_csv(tmp_path / "t.csv", index=False)
    code, out, err = ftune_cli(monkeypatch, capsys, "train", "--model", tiny_model, "--data", str(tmp_path / "t.csv"),
                               "--output-dir", str(tmp_path / "run"), "--set", "task=multi-label",
                               "--set", "tracking.backend=none", "--quiet")
    assert code == 2
    assert "row 6: an empty label set in column 'label'" in err and len(err.strip().splitlines()) == 1
