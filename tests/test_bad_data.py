"""Bad data: one DataError line naming the file, the row/line or column and the fix, before any model is loaded;
and tagged data the tokenizer or the training split does not cover, scored honestly instead of refused or shifted."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import sys
import time
import zipfile

import numpy as np
import pandas as pd
import pytest

import ftune
from ftune.config import DataConfig
from ftune.data import load_splits
from ftune.data import sources
from ftune.data.sources import read_source
from ftune.errors import DataError
from ftune.models import load_tokenizer
from ftune.tasks import tagging
from helpers import entity_sentences, synthetic_reviews



def cfg(path, **kw) -> DataConfig:
    return DataConfig(train=str(path), text_column="review", label_column="stars", **kw)


def refused(path, match: str, **kw) -> str:
    with pytest.raises(DataError, match=match) as e:
        load_splits(cfg(path, **kw), seed=0)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_single_class_is_refused_before_training(tmp_path):
    synthetic_reviews(40).assign(stars="pos").to_csv(tmp_path / "one.csv", index=False)
    refused(tmp_path / "one.csv", r"one.csv: every row of the training split has label 'pos'; classification needs "
                                  r"at least 2 classes in the training split: add rows of the other class")
    # Two classes in the file, but the one 'neg' row is held out for validation or test.
    synthetic_reviews(40).assign(stars=["neg"] + ["pos"] * 39).to_csv(tmp_path / "rare.csv", index=False)
    refused(tmp_path / "rare.csv", r"label '\w+' \(the data has neg, pos, but too few rows of the others",
            max_train_samples=1)


@pytest.mark.parametrize("write, message", [
    (lambda f, p: f.assign(stars=f.stars.tolist()[:3] + [""] + f.stars.tolist()[4:]).to_csv(p / "d.csv", index=False),
     r"d.csv row 4: empty label in column 'stars'"),
    (lambda f, p: f.assign(stars=f.stars.tolist()[:3] + ["NaN"] + f.stars.tolist()[4:]).to_csv(p / "d.csv",
                                                                                               index=False),
     r"d.csv row 4: label 'NaN' \(a missing value\) in column 'stars'; fill it or remove the row"),
    (lambda f, p: f.assign(stars=f.stars.tolist()[:3] + [None] + f.stars.tolist()[4:]).to_json(
        p / "d.jsonl", orient="records", lines=True), r"d.jsonl row 4: empty label in column 'stars'"),
    (lambda f, p: (p / "d.jsonl").write_text("".join(
        json.dumps({"review": r, "stars": i % 2}).replace(": 1}", ": NaN}" if i == 3 else ": 1}") + "\n"
        for i, r in enumerate(f.review))), r"d.jsonl row 4: empty label in column 'stars'"),
    (lambda f, p: f.assign(stars=[float(i % 2) for i in range(len(f))][:3] + [np.nan] + [0.0] * (len(f) - 4)
                           ).to_parquet(p / "d.parquet"), r"d.parquet row 4: empty label in column 'stars'"),
])
def test_a_missing_label_is_no_class_of_its_own(tmp_path, write, message):
    write(synthetic_reviews(40), tmp_path)
    refused(next(tmp_path.glob("d.*")), message)


@pytest.mark.parametrize("write, suffix", [
    (lambda p: p.write_text("review,stars,stars\nnice film,pos,neg\ndull,neg,pos\n"), ".csv"),
    (lambda p: p.write_text('{"review": "nice film", "stars": "pos", "stars": "neg"}\n'), ".jsonl"),
    (lambda p: p.write_text('[{"review": "nice film", "stars": "pos", "stars": "neg"}]'), ".json"),
    (lambda p: __import__("pyarrow.parquet").parquet.write_table(__import__("pyarrow").table(
        [["nice film"], ["pos"], ["neg"]], names=["review", "stars", "stars"]), p), ".parquet"),
])
def test_a_repeated_column_name_is_refused(tmp_path, write, suffix):
    write(tmp_path / f"dup{suffix}")
    with pytest.raises(DataError, match=rf"dup{suffix}: column 'stars' appears more than once; rename or remove one"):
        read_source(str(tmp_path / f"dup{suffix}"))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_word_lists_as_the_text_column_are_refused(tmp_path, suffix):
    frame = pd.DataFrame({"review": [["wonderful", "and", "moving"], ["dull"]] * 10, "stars": ["pos", "neg"] * 10})
    path = tmp_path / f"lists{suffix}"
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_json(path, orient="records", lines=True)
    refused(path, r"row 1: column 'review' holds a list \(\['wonderful', 'and', 'moving'\]\), not a string: join the "
                  r"words into one text; for a tag per word use task: token-classification")
    pd.DataFrame({"review": ["a", "b"] * 10, "stars": [["pos"], ["neg"]] * 10}).to_parquet(tmp_path / "l.parquet")
    refused(tmp_path / "l.parquet", r"row 1: column 'stars' holds a list \(\['pos'\]\), not one label per row")


def test_unicode_digits_are_labels_not_numbers(tmp_path):
    synthetic_reviews(40).assign(stars=["²", "1"] * 20).to_csv(tmp_path / "sup.csv", index=False)
    assert load_splits(cfg(tmp_path / "sup.csv"), seed=0).labels == ["1", "²"]


def test_non_utf8_lines_of_predict_input_are_named(tmp_path, monkeypatch):
    from ftune.cli import _read_input

    (tmp_path / "texts.txt").write_bytes(b"fine\n\ncaf\xe9 au lait\n")
    with pytest.raises(DataError, match=r"texts.txt line 3: not valid UTF-8; convert the text to UTF-8"):
        _read_input(str(tmp_path / "texts.txt"), "text")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok\n\xff\xfe bad\n")))
    with pytest.raises(DataError, match=r"stdin line 2: not valid UTF-8"):
        _read_input("-", "text")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("a\u2028b\r\n\nc\n".encode())))
    assert _read_input("-", "text")["text"].tolist() == ["a\u2028b", "c"]  # only newlines end a line


def test_what_is_not_a_regular_file_says_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "pipe.csv")
    refused(tmp_path / "pipe.csv", r"pipe.csv is a FIFO \(named pipe\), not a regular file; write the data to a file")
    os.symlink(tmp_path / "loop.csv", tmp_path / "loop.csv")
    refused(tmp_path / "loop.csv", r"loop.csv is a loop of symbolic links")
    os.symlink(tmp_path / "gone.csv", tmp_path / "link.csv")
    refused(tmp_path / "link.csv", r"link.csv is a symbolic link to .*gone.csv, which does not exist")
    refused(tmp_path / "nope.csv", r"nope.csv does not exist; check the path")


def zipped(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("d.csv", data)
    return buffer.getvalue()


@pytest.mark.parametrize("kind, pack", [("gzip", gzip.compress), ("bzip2", bz2.compress), ("xz", lzma.compress),
                                        ("zip", zipped)])
def test_compressed_files_are_named_as_such(tmp_path, kind, pack):
    (tmp_path / "d.csv").write_bytes(pack(synthetic_reviews(40).to_csv(index=False).encode()))
    refused(tmp_path / "d.csv", rf"d.csv: the file is {kind}-compressed \(its first bytes say so\), not plain text; "
                                r"decompress it first")


def test_broken_json_names_its_line(tmp_path):
    good = [json.dumps({"review": r, "stars": s}) for r, s in synthetic_reviews(20).itertuples(index=False)]
    (tmp_path / "d.jsonl").write_text("\n".join(good[:7] + ['{"review": "cut off", "stars": "pos"'] + good[7:]) + "\n")
    refused(tmp_path / "d.jsonl", r"d.jsonl line 8: not valid JSON \(Expecting ',' delimiter at column 37\); fix or "
                                  r"remove that line")
    (tmp_path / "d.jsonl").write_text("\n".join(good[:3] + ["[1, 2]"] + good[3:]) + "\n")
    refused(tmp_path / "d.jsonl", r"d.jsonl line 4: a JSON list, not an object")
    (tmp_path / "d.json").write_text("[\n" + ",\n".join(good[:3]) + ",\n]\n")
    refused(tmp_path / "d.json", r"d.json line 5: not valid JSON")


def test_names_that_are_no_hub_id_never_wait_for_the_hub(tmp_path, monkeypatch):
    def no_hub(source):
        raise AssertionError(f"asked the hub for {source}")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "_read_hub", no_hub)
    synthetic_reviews(10).to_csv(tmp_path / "mydata", index=False)
    refused("mydata", r"mydata: unsupported file type \(no extension\); rename it to end in one of .csv, .tsv")
    (tmp_path / "data").mkdir()
    for missing in ("data/sub/mydata", "data/mydata.csv", "./mydata2", "data/mydata"):
        refused(missing, r"does not exist; check the path")


def test_hub_ids_fail_fast_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.monotonic()
    refused("someone/mydata", r"'someone/mydata' is not a file, a built-in dataset .* or a hub dataset available "
                              r"offline")
    assert time.monotonic() - start < 15  # the datasets import; the hub itself is not asked (24 s when unreachable)


def test_a_label_seen_only_in_validation_names_the_split(tmp_path):
    frame = synthetic_reviews(60).assign(part=["train"] * 40 + ["dev"] * 10 + ["test"] * 10)
    frame.loc[45, "stars"] = "meh"
    frame.to_csv(tmp_path / "all.csv", index=False)
    refused(tmp_path / "all.csv", r"all.csv row 6: the validation split has label 'meh', which does not "
                                  r"occur in the training data .* or remove the 1 such validation rows",
            split_column="part")


# Token classification -----------------------------------------------------------------------------------------


def test_null_tags_are_missing_not_a_tag_called_none(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O", None]}) + "\n")
    config = ftune.load_config(overrides={"task": "token-classification", "data.train": str(tmp_path / "t.jsonl")})
    with pytest.raises(DataError, match=r"t.jsonl row 1: the sentence has an empty or missing word or tag"):
        tagging.load_splits(config, 0)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model)


ZERO_WIDTH, COMBINING_ACUTE = "\u200b", "\u0301"


def oracle_token_logits(data, tags_by_word: list[np.ndarray], n_tags: int) -> list[np.ndarray]:
    """Logits that put each token on its own word's tag: a perfect model, so any shift shows as an error."""
    out = []
    for words, tags in zip(data.word_ids, tags_by_word):
        logits = np.zeros((len(words), n_tags), dtype=np.float32)
        for position, word in enumerate(words):
            if word >= 0:
                logits[position, tags[word]] = 5.0
        out.append(logits)
    return out


def test_a_word_without_tokens_gets_no_tag_and_the_others_keep_theirs(tokenizer):
    words = ["john", ZERO_WIDTH, "smith", COMBINING_ACUTE, "visited", "paris"]
    tags = np.array([0, 3, 1, 3, 3, 2])
    assert [len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in (ZERO_WIDTH, COMBINING_ACUTE)] == [0, 0]
    data = tagging.encode_words(pd.DataFrame({"tokens": [words], "tags": [tags.tolist()]}), tokenizer, 32)
    assert data.no_tokens[0].tolist() == [False, True, False, True, False, False]
    tagged_tokens = data.labels[0][data.labels[0] != -100].tolist()
    assert tagged_tokens == [0, 1, 3, 2]  # john smith visited paris: their own tags, in order
    logits = tagging._word_logits(oracle_token_logits(data, [tags], 4)[0], data.word_ids[0], len(words))
    predicted = tagging._predicted(logits)
    assert predicted.tolist() == [0, -1, 1, -1, 3, 2]
    names = ["B-PER", "I-PER", "B-LOC", "O"]
    metrics = tagging.tagging_metrics([tags], [np.where(data.no_tokens[0], tagging.NO_TOKENS, predicted)], names)
    assert metrics["accuracy"] == 4 / 6 and metrics["words_without_tokens"] == 2 and metrics["words_beyond_window"] == 0

    class Predictor:  # what tag_texts needs of a loaded run: the tokenizer, the window, the tags, the logits
        labels, max_length = names, 32
        tokenizer = None

        def outputs(self, data, per_row):
            text_words = [t.split() for t in texts]
            return oracle_token_logits(data, [[{"john": 0, "smith": 1, "paris": 2}.get(w, 3) for w in ws]
                                              for ws in text_words], 4)

    Predictor.tokenizer = tokenizer
    texts = [f"john {ZERO_WIDTH} smith {COMBINING_ACUTE} visited paris", "paris"]
    first, second = tagging.tag_texts(Predictor(), texts)
    assert [(t["word"], t["tag"]) for t in first["tokens"]] == [
        ("john", "B-PER"), (ZERO_WIDTH, None), ("smith", "I-PER"), (COMBINING_ACUTE, None), ("visited", "O"),
        ("paris", "B-LOC")]
    assert first["tokens"][1]["score"] is None and second["tagged"] == "paris/B-LOC"


def test_a_tag_only_in_test_is_a_warning_and_counts_as_wrong(tiny_config, tmp_path):
    rows = entity_sentences(80)
    write = lambda name, rs: (tmp_path / name).write_text(  # noqa: E731
        "".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in rs))
    test = entity_sentences(20, seed=1) + [(["john", "smith", "of", "acme"], ["B-PER", "I-PER", "O", "B-ORG"])]
    write("train.jsonl", rows)
    write("test.jsonl", test)
    config = tiny_config(**{"task": "token-classification", "data.train": str(tmp_path / "train.jsonl"),
                            "data.test": str(tmp_path / "test.jsonl"), "data.text_column": None,
                            "data.label_column": None, "train.epochs": 1})
    splits = tagging.load_splits(config, 0)
    assert splits.labels == ["B-LOC", "B-PER", "I-PER", "O"] and splits.unseen_labels == ["B-ORG"]
    run = ftune.train(config, quiet=True)
    warning = [w for w in run.metrics["data"]["warnings"] if "never occur in train" in w]
    assert warning == ["1 words have tags that never occur in train (test: B-ORG 1): the model cannot output them, so "
                       "they count as wrong; add training sentences with these tags for it to learn them"]
    finetuned, baseline = run.metrics["test"]["finetuned"], run.metrics["test"]["most_frequent_tag"]
    assert finetuned["words_with_unseen_tags"] == 1 and finetuned["per_class"]["B-ORG"]["recall"] == 0.0
    words = finetuned["words"]
    assert finetuned["accuracy"] <= (words - 1) / words and baseline["accuracy"] <= (words - 1) / words
    predictions = pd.read_csv(run.path / "test_predictions.csv")
    assert predictions.iloc[-1][["word", "label"]].tolist() == ["acme", "B-ORG"]


def test_the_cli_says_it_in_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from helpers import ftune_cli

    monkeypatch.chdir(tmp_path)
    synthetic_reviews(40).assign(stars="pos").to_csv("one.csv", index=False)
    code, _, err = ftune_cli(monkeypatch, capsys, "train", "--data", "one.csv", "--text-column", "review",
                             "--label-column", "stars", "--output-dir", "run")
    assert code == 2 and err.startswith("error: one.csv: every row of the training split has label 'pos'")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_folder_named_like_a_built_in_dataset_does_not_shadow_it(tmp_path, monkeypatch):
    from ftune.data.sources import read_source

    monkeypatch.chdir(tmp_path)
    from ftune.data import CATALOG

    (tmp_path / "mr").mkdir()  # e.g. a run directory: `--output-dir mr`
    (tmp_path / "mr" / "run.json").write_text("{}")
    assert len(read_source("mr")) == CATALOG["mr"].rows
