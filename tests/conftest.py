"""Shared fixtures: a tiny BERT built locally and synthetic labeled data it can learn.

The tiny model has the default model's tokenizer and a 2-layer, 32-wide random encoder, so a
training run takes seconds. Dropout is off so runs can be compared exactly.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from ftune.config import load_config

POSITIVE = ["great", "excellent", "wonderful", "superb", "delightful", "brilliant"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "bad", "dull"]
FILLER = "the movie was really quite a film with story acting plot and it felt long short new old".split()


def synthetic_reviews(n: int, seed: int = 0) -> pd.DataFrame:
    """Sentences whose label is given by the one sentiment word they contain."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.sample(FILLER, rng.randint(3, 10)) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "stars": label})
    return pd.DataFrame(rows)


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
