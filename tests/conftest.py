"""Shared fixtures: a tiny BERT built locally and synthetic labeled data it can learn.

The tiny model has the default model's tokenizer and a 2-layer, 32-wide random encoder, so a
training run takes seconds. Dropout is off so runs can be compared exactly.
"""

from __future__ import annotations

import os

# Under pytest-xdist (`make test` runs two workers on two cores) each worker's torch, and each ftune process a test
# starts, gets one thread: two workers with two threads each would fight over the cores. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests read what ftune prints, and rich sizes tables to the terminal: xdist workers have none (80 columns), a
# developer's may be narrow. One width for every runner keeps the assertions about content, not about line wraps.
os.environ["COLUMNS"] = "200"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from ftune.config import load_config  # noqa: E402
from helpers import synthetic_reviews  # noqa: E402


def pytest_collection_modifyitems(items):
    """The end-to-end tests first (the longest take 10-35 s), so that the two workers
    finish together instead of one of them starting a long test at the end."""
    items.sort(key=lambda item: not (item.get_closest_marker("e2e") or item.get_closest_marker("slow")))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ftune.models import resolve_model

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def reviews_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    synthetic_reviews(400).to_csv(path, index=False)
    return path


@pytest.fixture
def tiny_config(tiny_model, reviews_csv, tmp_path):
    """A config that trains the tiny model on the synthetic reviews in a few seconds."""
    def make(**overrides):
        base = {"model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
                "data.label_column": "stars", "data.max_length": 32, "train.epochs": 3, "train.batch_size": 16,
                "train.learning_rate": 3e-3, "train.warmup_ratio": 0.0, "output_dir": str(tmp_path / "run"),
                "tracking.backend": "none"}  # tracking has its own tests
        return load_config(overrides={**base, **overrides})
    return make
