"""Multi-label classification: any number of labels per text (or text pair), from a fixed set (topics, tags).

A label cell holds a list (a JSON/Parquet list, or a CSV cell written as a JSON or Python list) or a string of labels
joined by `task.label_separator` ("sport|politics"). The model has one logit per label, trained with sigmoid + binary
cross-entropy (each label a yes/no of its own); a text gets every label whose probability reaches its decision
threshold, tuned on the validation split after training (one for all labels, or one per label) unless the config
fixes it. A text can get no label at all: then its set is empty.

In the splits a row's `label` is the sorted list of its label ids (into `splits.labels`); `Encoded.labels` is the
float32 (texts, labels) 0/1 matrix the loss reads.
"""

from __future__ import annotations

import ast
import json
import math
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, Field

from ftune.data import Encoded, encode
from ftune.data.builtin import check_builtin_task
from ftune.data.prepare import (MISSING_LABELS, Splits, column, complete_splits, given_splits, label_names,
                                select_columns, source_name)
from ftune.data.sources import read_source
from ftune.data.summary import SPLITS, text_lengths, token_lengths
from ftune.data.validate import IMBALANCE_RATIO, repeated_text_warnings, window_warning
from ftune.errors import DataError, RunError
from ftune.integrity import atomic_path
from ftune.lazy import lazy
from ftune.tasks.base import Task, TaskOptions

pd = lazy("pandas")
torch = lazy("torch")
F = lazy("torch.nn.functional")

DEFAULT_THRESHOLD = 0.5  # before calibration, and for a run whose task.json holds none
GRID = np.round(np.linspace(0.01, 0.99, 99), 2)  # the decision thresholds tried on validation
CI_RESAMPLES = 1000


class MultiLabelOptions(TaskOptions):
    name: Literal["multi-label"] = "multi-label"
    label_separator: str = Field(
        "|", min_length=1, description="what joins a text's labels in a label cell that is a string "
                                       "(default: a vertical bar); a cell holding a list (JSON, "
                                       "Parquet, or a CSV cell written as a list) is taken as is")
    threshold: Union[Literal["global", "per_label"], Annotated[float, Field(gt=0, lt=1)]] = Field(
        "global", description="the probability from which a text gets a label: global (one threshold for every label, "
                              "the one with the best validation micro-F1), per_label (each label's own, the one with "
                              "its best validation F1), or a number in (0, 1) that fixes it")


class Prediction(BaseModel):
    labels: list[str] = Field(description="the labels whose probability reaches their decision threshold, most "
                                          "probable first; empty when no label does (the text gets no label)")
    scores: dict[str, float] = Field(description="every label's probability (a sigmoid per label: they need not add "
                                                 "up to 1)")


class MultiLabel(Task):
    name = "multi-label"
    description = "any number of labels per text (or text pair), from a fixed set: topics, tags"
    Options = MultiLabelOptions
    Prediction = Prediction
    peft_type = "SEQ_CLS"
    weighs_classes = True
    titles = {"micro_f1": "micro-F1", "subset_accuracy": "subset accuracy", "tfidf": "TF-IDF one-vs-rest",
              "most_frequent_labels": "always the most frequent labels"}
    metrics = ("micro_f1", "macro_f1", "subset_accuracy", "loss")
    note = ("Micro-F1 over every (text, label) decision with the 95% bootstrap interval for the fine-tuned model, at the "
            "decision threshold tuned on validation (task.json); subset accuracy counts texts whose whole label set "
            "is right.")
    exportable = True
    calibrates = True  # the decision thresholds, from the validation split after training

    # --- data -------------------------------------------------------------------------------------------------
    def load_splits(self, seed: int) -> Splits:
        cfg, separator = self.config.data, self.options.label_separator
        check_builtin_task(cfg.train, self.name)
        given = given_splits(cfg, read_source, lambda frame, c, where: select_label_sets(frame, c, where, separator))
        labels = label_names(pd.Series([name for names in given["train"]["label"] for name in names], dtype=object))
        for split, frame in given.items():
            check_known(frame, labels, source_name(cfg, split), split if split != "train" else None)
        index = {name: i for i, name in enumerate(labels)}
        # Held out with each row's label set as one hashable key (stratified by label set when every set is frequent
        # enough), then turned into lists of ids.
        keyed = {split: frame.assign(label=[json.dumps(sorted(index[n] for n in names)) for names in frame["label"]])
                 for split, frame in given.items()}
        splits = complete_splits(keyed, cfg, seed, labels)
        for split in SPLITS:
            frame = getattr(splits, split)
            setattr(splits, split, frame.assign(label=[json.loads(key) for key in frame["label"]]))
        sets = splits.train["label"].map(tuple)
        if sets.nunique() < 2:
            only = ", ".join(labels[i] for i in sets.iloc[0])
            raise DataError(f"{cfg.train}: every row of the training split has the label set {{{only}}}; multi-label "
                            f"classification needs rows whose labels differ: add rows with other labels, or check "
                            f"data.label_column and task.label_separator ('{separator}')")
        return splits

    def encode_splits(self, splits: Splits, tokenizer) -> dict[str, Encoded]:
        return {split: self._encode(getattr(splits, split), tokenizer, len(splits.labels)) for split in SPLITS}

    def encode_source(self, source: str, data_cfg, labels: list[str], tokenizer) -> Encoded:
        """A labeled file for `ftune eval` and export parity, in the run's columns and label ids."""
        table = read_source(source)
        if isinstance(table, dict):
            table = table.get("test", next(iter(table.values())))
        frame = select_label_sets(table, data_cfg, source, self.options.label_separator)
        check_known(frame, labels, source, None)
        index = {name: i for i, name in enumerate(labels)}
        frame = frame.assign(label=[sorted(index[n] for n in names) for names in frame["label"]])
        return self._encode(frame, tokenizer, len(labels), use_cache=False)

    def _encode(self, frame: pd.DataFrame, tokenizer, num_labels: int, use_cache: bool = True) -> Encoded:
        """Token ids (encode() without the label column: it would cast it to one int) and the 0/1 label matrix."""
        data = encode(frame.drop(columns="label"), tokenizer, self.config.data.max_length, use_cache=use_cache)
        data.labels = multi_hot(frame["label"], num_labels)
        return data

    def summarize(self, splits: Splits, data: dict[str, Encoded]) -> tuple[dict, list[str]]:
        max_length = self.config.data.max_length
        counts = {split: multi_hot(getattr(splits, split)["label"], len(splits.labels)).sum(0).astype(int)
                  for split in SPLITS}
        summary: dict[str, Any] = {split: len(getattr(splits, split)) for split in SPLITS}
        summary["classes"] = {split: {name: int(counts[split][i]) for i, name in enumerate(splits.labels)}
                              for split in SPLITS}
        summary["labels_per_text"] = {split: float(getattr(splits, split)["label"].map(len).mean())
                                      if len(getattr(splits, split)) else 0.0 for split in SPLITS}
        summary["tokens"] = token_lengths({split: text_lengths(data[split]) for split in SPLITS}, max_length)
        return summary, label_set_warnings(splits, data, max_length, self.options.label_separator)

    # --- model and loss -----------------------------------------------------------------------------------------
    def load_model(self, source: str, labels: list[str], trust_remote_code: bool, method=None):
        from ftune.models import load_classifier

        model = load_classifier(source, labels, trust_remote_code, method)
        # Saved in config.json: transformers' own pipelines then apply a sigmoid per label, not a softmax.
        model.config.problem_type = "multi_label_classification"
        return model

    def prepare_loss(self, train: Encoded, labels: list[str], device) -> None:
        """train.class_weights: each label's positive terms weighted by its negatives over its positives (BCE's
        pos_weight), so a rare label's few positives weigh as much as its many negatives."""
        self.pos_weight = None
        if self.config.train.class_weights:
            positives = np.asarray(train.labels, dtype=np.float64).sum(0)
            weight = (len(train.labels) - positives) / np.maximum(positives, 1)
            self.pos_weight = torch.tensor(np.maximum(weight, 1e-3), dtype=torch.float32, device=device)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary cross-entropy summed over every (text, label) cell; the count is the number of cells, so the loop's
        quotient is the mean BCE."""
        target = batch["labels"].to(torch.float32)
        total = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="sum",
                                                   pos_weight=getattr(self, "pos_weight", None))
        return total, torch.full((), float(target.numel()), device=logits.device)

    # --- evaluation ---------------------------------------------------------------------------------------------
    def thresholds(self, num_labels: int) -> np.ndarray:
        """Each label's decision threshold: calibrated (state), else the configured number, else 0.5."""
        saved = self.state.get("thresholds")
        if saved is not None:
            if len(saved) != num_labels:
                raise RunError(f"the run's task.json has {len(saved)} thresholds for {num_labels} labels; it belongs "
                               f"to another run: copy this run's task.json back, or retrain")
            return np.asarray(saved, dtype=np.float64)
        fixed = self.options.threshold
        return np.full(num_labels, fixed if isinstance(fixed, float) else DEFAULT_THRESHOLD)

    def score(self, rows: list, data: Encoded, labels: list[str], interval_seed: int | None = None
              ) -> tuple[dict, np.ndarray]:
        """Metrics at the current thresholds, plus the mean BCE loss, and each text's label probabilities."""
        logits = np.stack(rows).astype(np.float64)
        truth = np.asarray(data.labels) > 0.5
        probs = sigmoid(logits)
        predicted = probs >= self.thresholds(len(labels))
        metrics = {**multilabel_metrics(truth, predicted, labels), "loss": bce(logits, truth)}
        if interval_seed is not None:
            metrics["micro_f1_ci95"] = bootstrap_micro_f1(truth, predicted, seed=interval_seed)
        return metrics, probs

    def calibrate(self, rows: list, data: Encoded, labels: list[str]) -> dict:
        """The thresholds with the best validation micro-F1 (global) or per-label F1 (per_label); a fixed number is
        kept as it is. Also sets `self.state`, so test scoring and prediction use them."""
        probs, truth = sigmoid(np.stack(rows).astype(np.float64)), np.asarray(data.labels) > 0.5
        how = self.options.threshold
        chosen = (np.full(len(labels), how) if isinstance(how, float) else tune_thresholds(probs, truth, how))
        at_default = micro_f1(truth, probs >= DEFAULT_THRESHOLD)
        self.state = {"threshold": "fixed" if isinstance(how, float) else how,
                      "thresholds": [float(t) for t in chosen],
                      "validation_micro_f1": micro_f1(truth, probs >= chosen),
                      "validation_micro_f1_at_0_5": at_default}
        return self.state

    def baselines(self, splits: Splits, seed: int) -> dict:
        """TF-IDF one-vs-rest logistic regression (thresholds tuned on validation the way the model's are), and the
        constant label set (the most frequent training labels) with the best training micro-F1."""
        k = len(splits.labels)
        train, validation, test = (multi_hot(getattr(splits, s)["label"], k) > 0.5 for s in SPLITS)
        fitted = tfidf_one_vs_rest(splits.train, train, seed)
        how = self.options.threshold
        chosen = (np.full(k, how) if isinstance(how, float) else
                  tune_thresholds(fitted(splits.validation), validation, how))
        tfidf = multilabel_metrics(test, fitted(splits.test) >= chosen, splits.labels)
        frequent = np.tile(most_frequent_labels(train), (len(test), 1))
        return {"tfidf": tfidf, "most_frequent_labels": multilabel_metrics(test, frequent, splits.labels)}

    def save_predictions(self, run_dir: Path, splits: Splits, data: dict[str, Encoded], outputs: np.ndarray,
                         labels: list[str]) -> None:
        """Every test text with its true labels, the predicted ones (joined by the separator, in label order), the
        predicted set's probability (the labels taken as independent) and each label's probability."""
        probs = np.asarray(outputs, dtype=np.float64)
        predicted = probs >= self.thresholds(len(labels))
        truth = multi_hot(splits.test["label"], len(labels)) > 0.5
        join = self.options.label_separator.join
        columns = ["text", "text_pair"] if "text_pair" in splits.test else ["text"]
        frame = splits.test[columns].assign(
            label=[join(np.asarray(labels, dtype=object)[row]) for row in truth],
            predicted=[join(np.asarray(labels, dtype=object)[row]) for row in predicted],
            score=np.where(predicted, probs, 1 - probs).prod(1))
        frame = pd.concat([frame.reset_index(drop=True),
                           pd.DataFrame(probs, columns=[f"score_{name}" for name in labels])], axis=1)
        with atomic_path(run_dir / "test_predictions.csv") as tmp:  # a symlink there is replaced, not written through
            frame.to_csv(tmp, index=False)

    # --- prediction ---------------------------------------------------------------------------------------------
    def probabilities(self, predictor, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        return sigmoid(self.logits(predictor, texts, pairs))

    def predict(self, predictor, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        names = list(predictor.labels)
        probs = self.probabilities(predictor, texts, pairs)
        thresholds = self.thresholds(len(names))
        answers = []
        for p in probs:
            order = np.argsort(-p, kind="stable")
            answers.append({"labels": [names[i] for i in order if p[i] >= thresholds[i]],
                            "scores": {name: float(p[i]) for i, name in enumerate(names)}})
        return answers


# --- label cells ----------------------------------------------------------------------------------------------------

def select_label_sets(frame: pd.DataFrame, cfg, where: str, separator: str) -> pd.DataFrame:
    """text / [text_pair] as select_columns checks them, and `label`: each row's label names (a list, no repeats)."""
    out = select_columns(frame, cfg, where, need_label=False)
    name = cfg.label_column or "label"
    cells = column(frame, name, "label_column", where).reset_index(drop=True)
    parsed, empty, missing = [], [], []
    for row, cell in enumerate(cells):
        try:
            names, was_missing = parse_label_cell(cell, separator)
        except ValueError as e:
            raise DataError(f"{where} row {row + 1}: column '{name}' holds {_preview(cell)}, {e}") from None
        parsed.append(names)
        if not names:
            empty.append(row)
            missing.append(was_missing)
    if empty:
        row = empty[0]
        cell = cells.iloc[row]
        what = f"label '{cell.strip()}' (a missing value)" if missing[0] and isinstance(cell, str) else \
            "an empty label set"
        raise DataError(f"{where} row {row + 1}: {what} in column '{name}'; every row needs at least one label "
                        f"(several joined by '{separator}', or a list): fill it or remove the row ({len(empty)} such "
                        f"rows)")
    return out.assign(label=parsed)


def parse_label_cell(cell: Any, separator: str) -> tuple[list[str], bool]:
    """(the label names of one cell, whether the cell was a missing value). A list is taken as is; a string that looks
    like a list ('["a", "b"]' or "['a', 'b']") is read as one; any other string is split at `separator`. Names are
    stripped; empty pieces and repeats are dropped. ValueError (the rest of a message) for what cannot be labels."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return [], True
    if isinstance(cell, str):
        text = cell.strip()
        if text in MISSING_LABELS:
            return [], True
        if text.startswith("[") and text.endswith("]"):
            items = _read_list(text)
            if items is None:
                raise ValueError(f"which looks like a list but is neither JSON nor a Python list; write it as "
                                 f"[\"a\", \"b\"], or as labels joined by '{separator}' (task.label_separator)")
            return _names(items), False
        return _unique(piece.strip() for piece in text.split(separator)), False
    if isinstance(cell, (list, tuple, set, np.ndarray, pd.Series)):
        items = list(cell)
        return _names(sorted(items, key=str) if isinstance(cell, set) else items), False
    if isinstance(cell, bool) or not isinstance(cell, (int, float, np.integer, np.floating)):
        raise ValueError(f"which is not a label set; give a list of labels or a string of labels joined by "
                         f"'{separator}'")
    return _names([cell]), False


def _read_list(text: str) -> list | None:
    for read in (json.loads, ast.literal_eval):
        try:
            value = read(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, (list, tuple)):
            return list(value)
    return None


def _names(items: list) -> list[str]:
    names = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float, np.integer, np.floating)):
            raise ValueError(f"a list with {_preview(item)} among its labels; each label must be a string")
        if isinstance(item, (float, np.floating)) and math.isnan(item):
            raise ValueError("a list with a missing value among its labels; each label must be a string")
        names.append(str(int(item)) if isinstance(item, (float, np.floating)) and float(item).is_integer()
                     else str(item).strip())
    return _unique(names)


def _unique(names) -> list[str]:
    return list(dict.fromkeys(n for n in names if n))


def _preview(value: Any, limit: int = 40) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def check_known(frame: pd.DataFrame, labels: list[str], where: str, split: str | None) -> None:
    """A label the training data does not have is an error: the model has no output for it."""
    known = set(labels)
    unknown = [row for row, names in enumerate(frame["label"]) if not known.issuperset(names)]
    if unknown:
        row = unknown[0]
        name = next(n for n in frame["label"].iloc[row] if n not in known)
        has = f"the {split} split has label" if split else "label"
        rows = f"{len(unknown)} such {split} rows" if split else f"{len(unknown)} such rows"
        shown = ", ".join(labels[:10]) + (", …" if len(labels) > 10 else "")
        raise DataError(f"{where} row {row + 1}: {has} '{name}', which does not occur in the training data (labels: "
                        f"{shown}), so the model cannot predict it; fix the label, add training examples for it, or "
                        f"remove the {rows}")


def multi_hot(label_ids: pd.Series | list, num_labels: int) -> np.ndarray:
    """The float32 (rows, labels) 0/1 matrix of lists of label ids."""
    matrix = np.zeros((len(label_ids), num_labels), dtype=np.float32)
    for row, ids in enumerate(label_ids):
        matrix[row, list(ids)] = 1.0
    return matrix


# --- metrics and thresholds -----------------------------------------------------------------------------------------

def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))  # no overflow for large |logit|


def bce(logits: np.ndarray, truth: np.ndarray) -> float:
    """Mean binary cross-entropy over every (text, label) cell, from logits (the stable form)."""
    x, y = np.asarray(logits, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    return float((np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))).mean())


def _f1(tp, fp, fn):
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def _counts(truth: np.ndarray, predicted: np.ndarray, axis=0):
    return ((truth & predicted).sum(axis), (~truth & predicted).sum(axis), (truth & ~predicted).sum(axis))


def micro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    tp, fp, fn = (int(c.sum()) for c in _counts(np.asarray(truth, bool), np.asarray(predicted, bool)))
    return float(_f1(tp, fp, fn))


def multilabel_metrics(truth: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict:
    """Micro- and macro-F1 (a label with no true and no predicted text scores 0, as sklearn's zero_division=0),
    subset accuracy (the whole set right), per-label precision/recall/F1/support, and how many texts got no label."""
    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
    tp, fp, fn = _counts(truth, predicted)
    f1 = _f1(tp, fp, fn)
    precision = np.divide(tp, tp + fp, out=np.zeros(len(names)), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros(len(names)), where=(tp + fn) > 0)
    return {
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "macro_f1": float(f1.mean()) if len(names) else 0.0,
        "subset_accuracy": float((truth == predicted).all(1).mean()) if len(truth) else 0.0,
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(tp[i] + fn[i])} for i, name in enumerate(names)},
        "no_label": int((~predicted.any(1)).sum()),  # texts given an empty set
        "n": int(len(truth)),
    }


def tune_thresholds(probs: np.ndarray, truth: np.ndarray, how: str) -> np.ndarray:
    """Each label's threshold from GRID: global, the one with the best micro-F1 over all labels; per_label, each
    label's best F1 (a label without positives in `truth` takes the global one). Ties go to the one nearest 0.5."""
    probs, truth = np.asarray(probs, dtype=np.float64), np.asarray(truth, bool)
    cells = np.stack([np.stack(_counts(truth, probs >= t)) for t in GRID])  # (thresholds, tp/fp/fn, labels)
    per_label = _f1(cells[:, 0], cells[:, 1], cells[:, 2])
    micro = _f1(*cells.sum(2).T)
    best_global = _best(micro)
    if how == "global":
        return np.full(probs.shape[1], best_global)
    chosen = np.array([_best(per_label[:, j]) for j in range(probs.shape[1])])
    return np.where(truth.any(0), chosen, best_global)


def _best(scores: np.ndarray) -> float:
    top = np.flatnonzero(np.isclose(scores, scores.max(), rtol=0, atol=1e-12))
    return float(GRID[top[np.argmin(np.abs(GRID[top] - DEFAULT_THRESHOLD))]])


def bootstrap_micro_f1(truth: np.ndarray, predicted: np.ndarray, resamples: int = CI_RESAMPLES, seed: int = 0
                       ) -> tuple[float, float]:
    """95% percentile bootstrap interval of micro-F1, resampling texts."""
    tp, fp, fn = (c.astype(np.float64) for c in _counts(np.asarray(truth, bool), np.asarray(predicted, bool), axis=1))
    rng = np.random.default_rng(seed)
    scores = []
    for start in range(0, resamples, 100):  # at most 100 x n indices at a time
        draws = rng.integers(0, len(tp), size=(min(100, resamples - start), len(tp)))
        scores.append(_f1(tp[draws].sum(1), fp[draws].sum(1), fn[draws].sum(1)))
    scores = np.concatenate(scores)
    return float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))


# --- baselines ------------------------------------------------------------------------------------------------------

def tfidf_one_vs_rest(train: pd.DataFrame, truth: np.ndarray, seed: int = 0):
    """TF-IDF (1-2 grams) + one logistic regression per label, fitted on `train`; returns frame -> probabilities.
    A label every training text has (or none has) gets a constant probability."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from ftune.baseline import joined_texts

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    features = vectorizer.fit_transform(joined_texts(train))
    truth = np.asarray(truth, bool)
    models: list[Any] = []
    for j in range(truth.shape[1]):
        column_ = truth[:, j]
        if column_.all() or not column_.any():
            models.append(float(column_.all()))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models.append(LogisticRegression(C=10.0, max_iter=2000, random_state=seed).fit(features, column_))

    def probabilities(frame: pd.DataFrame) -> np.ndarray:
        x = vectorizer.transform(joined_texts(frame))
        return np.stack([np.full(x.shape[0], m) if isinstance(m, float) else m.predict_proba(x)[:, 1]
                         for m in models], axis=1)
    return probabilities


def most_frequent_labels(truth: np.ndarray) -> np.ndarray:
    """The constant prediction: the m most frequent labels of `truth` (ties: the first label), m from 1 to every
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


# --- warnings -------------------------------------------------------------------------------------------------------

def label_set_warnings(splits: Splits, data: dict[str, Encoded], max_length: int, separator: str) -> list[str]:
    """The multi-label counterpart of data.validate.data_warnings: duplicates, one text with different label sets,
    texts shared with train, labels the training split lacks or hardly has, a separator that looks wrong, and texts cut
    at the window."""
    found = repeated_text_warnings(splits, lambda frame: frame["label"].map(lambda ids: json.dumps(sorted(ids))),
                                   "label set")
    counts = multi_hot(splits.train["label"], len(splits.labels)).sum(0)
    absent = [name for name, c in zip(splits.labels, counts) if c == 0]
    if absent:
        found.append(f"train: {len(absent)} labels have no training example after the validation/test hold-out "
                     f"(e.g. '{absent[0]}'), so the model cannot learn them; add examples of them or give "
                     f"data.validation / data.test files")
    elif len(counts) > 1 and counts.max() / counts.min() >= IMBALANCE_RATIO:
        small, large = int(counts.argmin()), int(counts.argmax())
        found.append(f"train: labels are very imbalanced ('{splits.labels[large]}' on {int(counts[large])} texts, "
                     f"'{splits.labels[small]}' on {int(counts[small])}); consider task.threshold=per_label and "
                     f"train.class_weights=true")
    for other in (",", ";", "|", "/"):
        joined = [name for name in splits.labels if other != separator and other in name]
        if joined:
            found.append(f"labels such as '{joined[0]}' contain '{other}'; if '{other}' separates labels, set "
                         f"task.label_separator to '{other}'")
            break
    cut = {split: int((data[split].lengths >= max_length).sum()) for split in SPLITS}
    found += window_warning(cut, f"{{total}} texts fill the {max_length}-token window and are cut to it "
                                 f"({{per_split}}); raise data.max_length to read more of them")
    return found

