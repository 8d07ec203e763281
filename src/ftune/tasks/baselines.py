"""The simple models every fine-tuned one must beat, scored on the same test split: one TF-IDF (1-2 grams) pipeline
with the estimator of the task's kind of answer (a class, a label set, a number), and the constant label set."""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from ftune.lazy import lazy
from ftune.tasks.scoring import micro_f1

pd = lazy("pandas")
sk_linear = lazy("sklearn.linear_model")
sk_multiclass = lazy("sklearn.multiclass")
sk_pipeline = lazy("sklearn.pipeline")
sk_text = lazy("sklearn.feature_extraction.text")


def tfidf_pipeline(estimator):
    """TF-IDF of 1-2 grams (sublinear term frequency) feeding `estimator`: fitted on joined_texts."""
    return sk_pipeline.make_pipeline(sk_text.TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                                     estimator)


def logistic(seed: int):
    return sk_linear.LogisticRegression(C=10.0, max_iter=2000, random_state=seed)


def joined_texts(frame: pd.DataFrame) -> list[str]:
    """A split's texts as the baselines read them: a text pair joined with [SEP]."""
    if "text_pair" in frame:
        return (frame["text"] + " [SEP] " + frame["text_pair"]).tolist()
    return frame["text"].tolist()


def tfidf_predictions(train: pd.DataFrame, test: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """A class per text: logistic regression fitted on the training split, label ids for the test split."""
    model = tfidf_pipeline(logistic(seed)).fit(joined_texts(train), train["label"].to_numpy())
    return model.predict(joined_texts(test))


def tfidf_ridge_predictions(train: pd.DataFrame, test: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """A number per text: ridge regression fitted on the training split, predicting the test split's targets."""
    model = tfidf_pipeline(sk_linear.Ridge(alpha=1.0, random_state=seed))
    model.fit(joined_texts(train), train["label"].to_numpy(dtype=np.float64))
    return model.predict(joined_texts(test)).astype(np.float64)


def tfidf_one_vs_rest(train: pd.DataFrame, truth: np.ndarray, seed: int = 0) -> Callable[[pd.DataFrame], np.ndarray]:
    """A label set per text: one logistic regression per label, fitted on `train` with its (texts, labels) 0/1
    matrix `truth`; returns frame -> each label's probability. A label every training text has (or none has) gets a
    constant probability."""
    model = tfidf_pipeline(sk_multiclass.OneVsRestClassifier(logistic(seed)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns of every constant label
        model.fit(joined_texts(train), np.asarray(truth, bool).astype(np.int64))
    return lambda frame: model.predict_proba(joined_texts(frame))


def most_frequent_labels(truth: np.ndarray) -> np.ndarray:
    """The constant label set: the m most frequent labels of `truth` (ties: the first label), m from 1 to every
    label, whichever scores the best micro-F1 on `truth` itself (ties: the fewest labels)."""
    truth = np.asarray(truth, bool)
    order = np.argsort(-truth.sum(0), kind="stable")
    best, best_score = None, -1.0
    for m in range(1, truth.shape[1] + 1):
        chosen = np.zeros(truth.shape[1], bool)
        chosen[order[:m]] = True
        score = micro_f1(truth, np.broadcast_to(chosen, truth.shape))
        if score > best_score + 1e-12:
            best, best_score = chosen, score
    return best
