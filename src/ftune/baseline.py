"""The simple baseline every fine-tuned model must beat: TF-IDF (1-2 grams) + logistic regression."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline


def joined_texts(frame: pd.DataFrame) -> list[str]:
    if "text_pair" in frame:
        return (frame["text"] + " [SEP] " + frame["text_pair"]).tolist()
    return frame["text"].tolist()


def tfidf_predictions(train: pd.DataFrame, test: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """Fit on the training split, predict label ids for the test split."""
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                          LogisticRegression(C=10.0, max_iter=2000, random_state=seed))
    model.fit(joined_texts(train), train["label"].to_numpy())
    return model.predict(joined_texts(test))
