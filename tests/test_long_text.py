"""Long documents: head, head+tail and chunked windows, at training and at prediction."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

import ftune
from ftune.config import LongTextConfig
from ftune.data.long_text import pool, special_tokens
from ftune.data.tokenize import encode
from ftune.errors import ConfigError
from ftune.models import load_tokenizer

FILLER = "the movie was really quite a film with story acting plot and it felt long short new old".split()


def documents_with_the_verdict_at_the_end(n: int, words: int = 20, seed: int = 0) -> pd.DataFrame:
    """Long texts whose label shows only in their last word: beyond the head of a short window."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        verdict = rng.choice(["great", "superb", "wonderful"] if label == "pos" else ["awful", "dull", "terrible"])
        rows.append({"text": " ".join(rng.choices(FILLER, k=words) + [verdict]), "label": label})
    return pd.DataFrame(rows)


@pytest.fixture
def long_docs(tmp_path):
    path = tmp_path / "docs.csv"
    documents_with_the_verdict_at_the_end(240).to_csv(path, index=False)
    return path


def test_windows_cover_the_whole_text_with_the_stride_and_special_tokens(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    frame = pd.DataFrame({"text": [" ".join(f"w{i}" for i in range(50)), "short text"], "label": [0, 1]})
    cls, sep = special_tokens(tokenizer)
    body = tokenizer(frame["text"][0], add_special_tokens=False)["input_ids"]
    chunked = encode(frame, tokenizer, 16, long_text=LongTextConfig(strategy="chunk", stride=4))
    assert chunked.groups.tolist().count(1) == 1 and chunked.document_labels.tolist() == [0, 1]
    windows = [w for w, g in zip(chunked.input_ids, chunked.groups) if g == 0]
    assert all(w[:1].tolist() == cls and w[-1:].tolist() == sep and len(w) == 16 for w in windows)
    inner = [w[1:-1].tolist() for w in windows]
    assert inner[0] == body[:14] and inner[-1] == body[-14:]  # from the first token to the last one
    for a, b in zip(inner, inner[1:-1]):
        assert a[-4:] == b[:4]  # each window repeats the stride of the one before
    assert chunked.full_lengths.tolist() == [len(body) + 2, 4]
    head_tail = encode(frame, tokenizer, 16, long_text=LongTextConfig(keep="head+tail"))
    assert head_tail.input_ids[0][1:-1].tolist() == body[:3] + body[-11:]
    with pytest.raises(ConfigError, match="stride"):
        encode(frame, tokenizer, 16, long_text=LongTextConfig(strategy="chunk", stride=14))


def test_pooling_takes_the_mean_or_max_of_each_documents_windows():
    logits = np.array([[0.0, 1.0], [2.0, -1.0], [5.0, 5.0]], dtype=np.float32)
    groups = np.array([0, 0, 1])
    assert pool(logits, groups, "mean").tolist() == [[1.0, 0.0], [5.0, 5.0]]
    assert pool(logits, groups, "max").tolist() == [[2.0, 1.0], [5.0, 5.0]]


def test_chunking_reads_what_truncation_cuts_off(tiny_config, long_docs, tmp_path):
    common = {"data.train": str(long_docs), "data.text_column": "text", "data.label_column": "label",
              "data.max_length": 16, "train.epochs": 6, "train.baselines": False,
              # fp32 as on a CPU, where the thresholds below were set: under a GPU's default bf16 autocast this test
              # failed on an H100 (issue 16); not re-run on a GPU since
              "train.precision": "fp32"}
    head = ftune.train(tiny_config(**common, output_dir=str(tmp_path / "head")), quiet=True)
    chunk = ftune.train(tiny_config(**common, output_dir=str(tmp_path / "chunk"),
                                    **{"data.long_text.strategy": "chunk", "data.long_text.stride": 2}), quiet=True)
    head_acc = head.metrics["test"]["finetuned"]["accuracy"]
    chunk_acc = chunk.metrics["test"]["finetuned"]["accuracy"]
    assert head_acc <= 0.7 < 0.9 <= chunk_acc  # the verdict is only ever in the last window
    assert chunk.metrics["test"]["finetuned"]["n"] == 48  # scored per document, not per window
    summary = chunk.metrics["data"]["long_text"]
    assert summary["over_window"]["test"] == 48 and summary["windows"]["test"] > 48
    assert "48 of 48" in (chunk.path / "report.md").read_text()
    predicted = chunk.predict(documents_with_the_verdict_at_the_end(6, seed=9)["text"].tolist())
    assert [p["label"] for p in predicted] == ["neg", "pos"] * 3  # prediction pools windows as training did


def test_long_text_options_are_checked_against_the_task():
    with pytest.raises(ftune.ConfigError, match="long_text applies to task classification"):
        ftune.load_config(overrides={"task": "token-classification", "data.long_text.strategy": "chunk"})
    with pytest.raises(ftune.ConfigError, match="text_pair_column"):
        ftune.load_config(overrides={"data.text_pair_column": "b", "data.long_text.keep": "head+tail"})
