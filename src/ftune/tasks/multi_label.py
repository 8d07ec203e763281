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

import json
from functools import partial
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, Field

from ftune.data import Encoded, encode
from ftune.data.builtin import check_builtin_task
from ftune.data.prepare import Splits, complete_splits, eval_table, given_splits, label_names, source_name
from ftune.data.sources import read_source
from ftune.data.summary import SPLITS, text_lengths, token_lengths
from ftune.data.validate import IMBALANCE_RATIO, repeated_text_warnings, window_warning
from ftune.errors import DataError, RunError
from ftune.lazy import lazy
from ftune.tasks.base import Task, TaskOptions, texts_of
from ftune.tasks.baselines import most_frequent_labels, tuned_one_vs_rest
from ftune.tasks.labels import check_known, multi_hot, parse_label_sets, with_labels
from ftune.tasks.labels import parse_label_cell  # noqa: F401  (read a label cell: named here too, with the task)
from ftune.tasks.scoring import bce, bootstrap_micro_f1, f1, f1_counts, micro_f1, multilabel_metrics, sigmoid

pd = lazy("pandas")
torch = lazy("torch")
F = lazy("torch.nn.functional")

DEFAULT_THRESHOLD = 0.5  # before calibration, and for a run whose task.json holds none
GRID = np.round(np.linspace(0.01, 0.99, 99), 2)  # the decision thresholds tried on validation


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
    titles = {"micro_f1": "micro-F1", "subset_accuracy": "subset accuracy",
              "tfidf": "TF-IDF one-vs-rest (tuned on validation)",
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
        given = given_splits(cfg, read_source, self.select)
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

    def select(self, frame: pd.DataFrame, data_cfg, where: str) -> pd.DataFrame:
        """The text column(s) as for classification, and `label`: each row's label names (a list, no repeats)."""
        return with_labels(frame, data_cfg, where, partial(parse_label_sets, separator=self.options.label_separator))

    def encode_splits(self, splits: Splits, tokenizer) -> dict[str, Encoded]:
        return {split: self._encode(getattr(splits, split), tokenizer, len(splits.labels)) for split in SPLITS}

    def encode_source(self, source: str, data_cfg, labels: list[str], tokenizer) -> Encoded:
        """A labeled file for `ftune eval` and export parity, in the run's columns and label ids."""
        frame = self.select(eval_table(source), data_cfg, source)
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
        """TF-IDF one-vs-rest logistic regression, its C and its decision thresholds chosen on validation micro-F1
        (thresholds tuned the way the model's are: task.threshold), with the interval the fine-tuned model's micro-F1
        has; and the constant label set (the most frequent training labels) with the best training micro-F1."""
        k = len(splits.labels)
        train, validation, test = (multi_hot(getattr(splits, s)["label"], k) > 0.5 for s in SPLITS)
        how = self.options.threshold
        thresholds = lambda probs: (np.full(k, how) if isinstance(how, float) else  # noqa: E731
                                    tune_thresholds(probs, validation, how))
        choice = tuned_one_vs_rest(splits, train, lambda probs: micro_f1(validation, probs >= thresholds(probs)))
        chosen = thresholds(choice.validation_outputs)
        predicted = choice.test >= chosen
        choice.chosen += ", a threshold per label" if how == "per_label" else f", threshold {chosen[0]:g}"
        tfidf = {**multilabel_metrics(test, predicted, splits.labels),
                 "micro_f1_ci95": bootstrap_micro_f1(test, predicted, seed=seed), **choice.fields()}
        frequent = np.tile(most_frequent_labels(train), (len(test), 1))
        return {"tfidf": tfidf, "most_frequent_labels": multilabel_metrics(test, frequent, splits.labels)}

    def predictions(self, splits: Splits, outputs: np.ndarray, labels: list[str]) -> pd.DataFrame:
        """Every test text with its true labels, the predicted ones (joined by the separator, in label order), the
        predicted set's probability (the labels taken as independent) and each label's probability."""
        probs = np.asarray(outputs, dtype=np.float64)
        predicted = probs >= self.thresholds(len(labels))
        truth = multi_hot(splits.test["label"], len(labels)) > 0.5
        join = self.options.label_separator.join
        frame = texts_of(splits.test).assign(
            label=[join(np.asarray(labels, dtype=object)[row]) for row in truth],
            predicted=[join(np.asarray(labels, dtype=object)[row]) for row in predicted],
            score=np.where(predicted, probs, 1 - probs).prod(1))
        return pd.concat([frame.reset_index(drop=True),
                          pd.DataFrame(probs, columns=[f"score_{name}" for name in labels])], axis=1)

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


# --- thresholds -------------------------------------------------------------------------------------------------------

def tune_thresholds(probs: np.ndarray, truth: np.ndarray, how: str) -> np.ndarray:
    """Each label's threshold from GRID: global, the one with the best micro-F1 over all labels; per_label, each
    label's best F1 (a label without positives in `truth` takes the global one). Ties go to the one nearest 0.5."""
    probs, truth = np.asarray(probs, dtype=np.float64), np.asarray(truth, bool)
    cells = np.stack([np.stack(f1_counts(truth, probs >= t)) for t in GRID])  # (thresholds, tp/fp/fn, labels)
    per_label = f1(cells[:, 0], cells[:, 1], cells[:, 2])
    micro = f1(*cells.sum(2).T)
    best_global = _best(micro)
    if how == "global":
        return np.full(probs.shape[1], best_global)
    chosen = np.array([_best(per_label[:, j]) for j in range(probs.shape[1])])
    return np.where(truth.any(0), chosen, best_global)


def _best(scores: np.ndarray) -> float:
    top = np.flatnonzero(np.isclose(scores, scores.max(), rtol=0, atol=1e-12))
    return float(GRID[top[np.argmin(np.abs(GRID[top] - DEFAULT_THRESHOLD))]])


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

