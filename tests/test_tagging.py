"""Token classification: the three input formats, sub-token labels, training with every method, tags per word."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import ftune
from ftune.config import load_config
from ftune.data.tagged import read_tagged
from ftune.data.tokenize import IGNORE
from ftune.models import load_tokenizer
from ftune.tasks.tagging import encode_words, is_entity_scheme, tagging_metrics
from helpers import entity_sentences


@pytest.fixture
def tagged_jsonl(tmp_path):
    path = tmp_path / "ner.jsonl"
    path.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in entity_sentences(300)))
    return path


def test_conll_word_slash_tag_and_jsonl_read_the_same_sentences(tmp_path):
    rows = entity_sentences(5)
    (tmp_path / "a.conll").write_text("-DOCSTART- O\n\n" + "\n\n".join(
        "\n".join(f"{w} X {t}" for w, t in zip(words, tags)) for words, tags in rows) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(" ".join(f"{w}/{t}" for w, t in zip(words, tags)) for words, tags in rows))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in rows))
    expected = [list(map(list, r)) for r in rows]
    for name in ("a.conll", "b.txt", "c.jsonl"):
        frame = read_tagged(str(tmp_path / name))
        assert [[list(w), list(t)] for w, t in zip(frame["tokens"], frame["tags"])] == expected, name
    (tmp_path / "slash.txt").write_text("1/2/CD ./. a/DT\n")
    assert read_tagged(str(tmp_path / "slash.txt"))["tags"][0] == ["CD", ".", "DT"]  # the tag follows the last slash


def test_malformed_tagged_files_name_the_line(tmp_path, tagged_jsonl):
    (tmp_path / "bad.conll").write_text("john B-PER\nsmith\n")
    with pytest.raises(ftune.DataError, match=r"bad.conll line 2: 'smith' has no tag"):
        read_tagged(str(tmp_path / "bad.conll"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    cfg = load_config(overrides={"task": "token-classification", "data.train": str(tmp_path / "bad.jsonl")})
    with pytest.raises(ftune.DataError, match="row 1: the sentence has 2 words but 1 tags"):
        ftune.train(cfg)
    with pytest.raises(ftune.ConfigError, match="'mr' is for task classification"):
        ftune.train(load_config(overrides={"task": "token-classification", "data.train": "mr"}))


def test_a_words_tag_is_on_its_first_sub_token_unless_all_are_labeled(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    frame = pd.DataFrame({"tokens": [["tokenization", "paris"]], "tags": [[1, 2]]})
    first = encode_words(frame, tokenizer, 32)
    pieces = len(tokenizer("tokenization", add_special_tokens=False)["input_ids"])
    assert pieces > 1
    assert first.labels[0].tolist() == [IGNORE, 1] + [IGNORE] * (pieces - 1) + [2, IGNORE]
    every = encode_words(frame, tokenizer, 32, label_all_subtokens=True)
    assert every.labels[0].tolist() == [IGNORE] + [1] * pieces + [2, IGNORE]
    cut = encode_words(frame, tokenizer, 3)  # [CLS] first-piece [SEP]: paris is beyond the window
    assert cut.word_tags[0].tolist() == [1, 2] and cut.labels[0].tolist() == [IGNORE, 1, IGNORE]


def test_metrics_count_words_beyond_the_window_as_wrong_and_score_entities():
    names = ["B-LOC", "B-PER", "I-PER", "O"]
    truth = [np.array([1, 2, 3, 0])]
    metrics = tagging_metrics(truth, [np.array([1, 2, 3, -1])], names, interval_seed=0)
    assert metrics["accuracy"] == 0.75 and metrics["words_beyond_window"] == 1
    assert metrics["entity_precision"] == 1.0 and metrics["entity_recall"] == 0.5  # the person found, the city missed
    assert is_entity_scheme(names) and not is_entity_scheme(["NN", "DT"])


@pytest.mark.parametrize("method", ["full", "lora", "freeze"])
def test_a_tagger_trains_with_every_method_and_tags_words(tiny_config, tagged_jsonl, tmp_path, method):
    extra = {"method.r": 8} if method == "lora" else {"method.layers": 1} if method == "freeze" else {}
    lr = 3e-3 if method == "full" else 1e-2
    cfg = tiny_config(**{"task": "token-classification", "data.train": str(tagged_jsonl), "data.text_column": None,
                         "data.label_column": None, "method.name": method, "train.epochs": 6,
                         "train.learning_rate": lr, "output_dir": str(tmp_path / method), **extra})
    run = ftune.train(cfg, quiet=True)
    test = run.metrics["test"]
    assert test["finetuned"]["accuracy"] > 0.9 and test["finetuned"]["entity_f1"] > 0.8
    assert test["finetuned"]["accuracy"] > test["base_model"]["accuracy"]
    assert "most_frequent_tag" in test and run.metrics["validation"]["history"]
    [result] = run.predict(["john smith visited paris"])
    assert result["tagged"] == "john/B-PER smith/I-PER visited/O paris/B-LOC"
    assert [t["word"] for t in result["tokens"]] == ["john", "smith", "visited", "paris"]
    report = (run.path / "report.md").read_text()
    assert "entity F1" in report and "most frequent tag per word" in report and "Confusion matrix" in report
    predictions = pd.read_csv(run.path / "test_predictions.csv")
    assert {"word", "label", "predicted", "score"} <= set(predictions.columns)


def test_the_service_returns_tags_per_word(tiny_config, tagged_jsonl, tmp_path):
    from fastapi.testclient import TestClient

    from ftune.predictors import load_predictor
    from ftune.serve import create_app

    cfg = tiny_config(**{"task": "token-classification", "data.train": str(tagged_jsonl), "data.text_column": None,
                         "data.label_column": None, "train.epochs": 1, "train.baselines": False})
    run = ftune.train(cfg, quiet=True)
    with TestClient(create_app(load_predictor(run.path))) as client:
        response = client.post("/v1/predict", json={"texts": ["mary jones met paul", "in rome"]})
        info = client.get("/v1/model").json()
    assert response.status_code == 200, response.text
    first = response.json()["predictions"][0]
    assert [t["word"] for t in first["tokens"]] == ["mary", "jones", "met", "paul"]
    assert first["tagged"].count("/") == 4 and info["task"] == "token-classification"
