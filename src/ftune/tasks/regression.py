"""Regression: a number per text (or text pair), such as review stars taken as a number.

The model is a sequence classifier with one output. With `task.normalize` (the default) it learns the target
standardized with the training split's mean and standard deviation, so a freshly initialized head starts at the
right scale whatever the target's units; those two numbers are the task's `state` (the run's task.json), and every
prediction is mapped back with them. Scores are on the target's own scale: RMSE, MAE, Pearson and Spearman
correlation; `loss` is the training loss (MSE or Huber) on the scale the model learns.

The run's label names (labels.json, the head's id2label) are the single output's name, `value`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from ftune.data.builtin import check_builtin_task
from ftune.data.prepare import complete_splits, eval_table, given_splits
from ftune.data.sources import read_source
from ftune.data.summary import SPLITS, token_lengths
from ftune.data.tokenize import Encoded, encode
from ftune.data.validate import repeated_text_warnings, window_warning
from ftune.errors import DataError, RunError
from ftune.lazy import lazy
from ftune.tasks.base import Task, TaskOptions, texts_of
from ftune.tasks.baselines import tuned_ridge
from ftune.tasks.labels import parse_targets, with_labels
from ftune.tasks.scoring import bootstrap_rmse, regression_metrics

pd = lazy("pandas")
torch = lazy("torch")
F = lazy("torch.nn.functional")

OUTPUT = "value"  # the head's one output: the run's labels.json is [OUTPUT]
MIN_SPREAD = 1e-150  # squared differences of targets closer than this underflow to 0 (ftune.tasks.labels.MAX_TARGET)
OUTLIER_SDS = 5.0  # training targets this many standard deviations from the mean are worth a warning under MSE
HISTOGRAM_BINS = 20


class RegressionOptions(TaskOptions):
    name: Literal["regression"] = "regression"
    loss: Literal["mse", "huber"] = Field("mse", description="mse: squared error; huber: squared near the target, "
                                                             "linear beyond task.huber_delta (robust to outliers)")
    huber_delta: float = Field(1.0, gt=0, description="huber: where the loss turns linear, in the scale the model "
                                                      "learns (with task.normalize: training standard deviations)")
    normalize: bool = Field(True, description="learn the target standardized with the training split's mean and "
                                              "standard deviation (saved in task.json); predictions are mapped back")


class Prediction(BaseModel):
    value: float = Field(description="the predicted target, in the training data's units")


class Regression(Task):
    name = "regression"
    description = "a number per text (or text pair): ratings, scores, prices"
    Options = RegressionOptions
    Prediction = Prediction
    peft_type = "SEQ_CLS"  # peft keeps the new one-output head trainable and saved
    titles = {"rmse": "RMSE", "mae": "MAE", "pearson": "Pearson", "spearman": "Spearman",
              "mean": "the training mean", "tfidf_ridge": "TF-IDF + ridge regression (tuned on validation)"}
    metrics = ("rmse", "mae", "pearson", "spearman", "loss")
    note = ("Root-mean-square error in the target's units with the 95% bootstrap interval for the fine-tuned model; "
            "MAE, and the Pearson and Spearman correlations of the predicted values with the true ones.")
    lower_is_better = frozenset({"loss", "rmse", "mae"})
    labeled = True  # labels.json is [OUTPUT]: the head's single output, which the run's label-order checks read
    exportable = True
    # No calibration pass: the state (the target's mean and std, saved as task.json) is fixed by load_splits.

    # --- data -------------------------------------------------------------------------------------------------
    def load_splits(self, seed: int):
        """Read and split the data; the target becomes a float64 `label` column. Fixes the normalization (state)
        from the training split, unless a run's task.json gave it."""
        data = self.config.data
        check_builtin_task(data.train, self.name)  # the built-ins are labeled, not numbers: said before reading
        given = given_splits(data, read_source, self.select)
        splits = complete_splits(given, data, seed, [OUTPUT])
        targets = splits.train["label"].to_numpy(dtype=np.float64)
        spread = float(targets.max() - targets.min())
        if spread == 0:
            raise DataError(f"{data.train}: every target in the training split is {_number(targets[0])}; regression "
                            f"needs targets that vary: add rows with other values, or check data.label_column")
        if spread < MIN_SPREAD:  # their squared differences underflow to 0: the std, the loss and RMSE with them
            raise DataError(f"{data.train}: the training targets differ by at most {spread:.2g} (from "
                            f"{_number(targets.min())} to {_number(targets.max())}), too little for float arithmetic "
                            f"to tell apart once squared; rescale the column (multiply it by a power of ten)")
        if "mean" not in self.state:
            self.state = {**self.state, **target_scale(targets)}
        return splits

    def select(self, frame: pd.DataFrame, data_cfg, where: str) -> pd.DataFrame:
        """The text column(s) as for classification, and the target parsed as a number."""
        return with_labels(frame, data_cfg, where, parse_targets, self.default_label_column)

    def encode_splits(self, splits, tokenizer) -> dict[str, Encoded]:
        return {name: self.encode_frame(getattr(splits, name), tokenizer) for name in SPLITS}

    def encode_frame(self, frame: pd.DataFrame, tokenizer, use_cache: bool = True) -> Encoded:
        """Token ids, and as labels the targets on the scale the model learns (float32)."""
        texts = frame[[c for c in ("text", "text_pair") if c in frame]]
        data = encode(texts, tokenizer, self.config.data.max_length, use_cache=use_cache)
        if "label" in frame:
            data.labels = self.to_model(frame["label"].to_numpy(dtype=np.float64)).astype(np.float32)
        return data

    def encode_source(self, source: str, data_cfg, labels: list[str], tokenizer) -> Encoded:
        """A file with targets for `ftune eval` and export parity, in the run's columns and scale."""
        return self.encode_frame(self.select(eval_table(source), data_cfg, source), tokenizer, use_cache=False)

    def summarize(self, splits, data: dict[str, Encoded]) -> tuple[dict, list[str]]:
        max_length = self.config.data.max_length
        summary = {name: len(getattr(splits, name)) for name in SPLITS}
        summary["targets"] = target_summary({name: getattr(splits, name)["label"].to_numpy(dtype=np.float64)
                                             for name in SPLITS})
        summary["tokens"] = token_lengths({name: data[name].lengths for name in SPLITS}, max_length)
        return summary, self.warnings(splits, data)

    def warnings(self, splits, data: dict[str, Encoded]) -> list[str]:
        """Duplicates, texts with different targets, texts shared with train, outliers under MSE, cut texts."""
        found = repeated_text_warnings(splits, lambda frame: frame["label"], "target")
        targets = splits.train["label"].to_numpy(dtype=np.float64)
        z = np.abs(targets - targets.mean()) / targets.std()
        if self.options.loss == "mse" and (z > OUTLIER_SDS).any():
            far = int(z.argmax())
            found.append(f"train: {int((z > OUTLIER_SDS).sum())} targets lie more than {OUTLIER_SDS:g} standard "
                         f"deviations from the mean (e.g. {_number(targets[far])}, mean {_number(targets.mean())}); "
                         f"squared error lets them dominate: check them, or set task.loss=huber")
        max_length = self.config.data.max_length
        cut = {name: int((data[name].lengths >= max_length).sum()) for name in SPLITS}
        found += window_warning(cut, f"{{total}} texts fill the {max_length}-token window and are cut to it "
                                     f"({{per_split}}); raise data.max_length")
        return found

    # --- model and loss -----------------------------------------------------------------------------------------
    def load_model(self, source: str, labels: list[str], trust_remote_code: bool, method=None):
        """A sequence classifier with one output, marked as a regression head in its config (transformers then
        scores it with MSE, and `problem_type` says what the output is to anyone who loads model/)."""
        from ftune.models import load_classifier

        model = load_classifier(source, labels, trust_remote_code, method)
        if model.config.num_labels != 1:
            raise RunError(f"{source}: the model has {model.config.num_labels} outputs, a regression head has 1; "
                           f"check that labels.json holds [\"{OUTPUT}\"]")
        model.config.problem_type = "regression"
        return model

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        target = batch["labels"].float()
        predicted = logits.float().reshape(target.shape)  # (batch, 1) -> (batch,); any other width fails here
        if self.options.loss == "huber":
            total = F.huber_loss(predicted, target, delta=self.options.huber_delta, reduction="sum")
        else:
            total = F.mse_loss(predicted, target, reduction="sum")
        return total, torch.full((), float(target.numel()), device=logits.device)

    # --- evaluation ---------------------------------------------------------------------------------------------
    def score(self, rows: list, data: Encoded, labels: list[str], interval_seed: int | None = None
              ) -> tuple[dict, np.ndarray]:
        """Metrics on the target's scale, the loss on the model's, and the predicted values."""
        outputs = head_outputs(rows)
        truth_scaled = np.asarray(data.labels, dtype=np.float64)
        predicted, truth = self.to_target(outputs), self.to_target(truth_scaled)
        metrics = {**regression_metrics(truth, predicted),
                   "loss": loss_value(outputs, truth_scaled, self.options.loss, self.options.huber_delta)}
        if interval_seed is not None:
            metrics["rmse_ci95"] = bootstrap_rmse(predicted - truth, seed=interval_seed)
        return metrics, predicted

    def baselines(self, splits, seed: int) -> dict:
        """The training mean, and TF-IDF + ridge regression with the alpha of the best validation RMSE
        (tasks.baselines), with the interval the fine-tuned model's RMSE has."""
        train = splits.train["label"].to_numpy(dtype=np.float64)
        truth = splits.test["label"].to_numpy(dtype=np.float64)
        ridge = tuned_ridge(splits)
        return {"mean": regression_metrics(truth, np.full(len(truth), train.mean())),
                "tfidf_ridge": {**regression_metrics(truth, ridge.test),
                                "rmse_ci95": bootstrap_rmse(ridge.test - truth, seed=seed), **ridge.fields()}}

    def predictions(self, splits, outputs: np.ndarray, labels: list[str]) -> pd.DataFrame:
        """Every test text with its target and the predicted value."""
        return texts_of(splits.test).assign(target=splits.test["label"].to_numpy(dtype=np.float64),
                                            predicted=np.asarray(outputs, dtype=np.float64))

    # --- prediction ---------------------------------------------------------------------------------------------
    def logits(self, predictor, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """The head's raw output per text, shape (n, 1), on the scale the model learns (what ONNX parity compares)."""
        return head_outputs(super().logits(predictor, texts, pairs))[:, None]

    def predict(self, predictor, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        if not texts:
            return []
        values = self.to_target(self.logits(predictor, texts, pairs)[:, 0])
        return [{"value": float(v)} for v in values]

    # --- the target's scale -------------------------------------------------------------------------------------
    def scale(self) -> tuple[float, float]:
        """(mean, std) that map the model's output to the target: (0, 1) without task.normalize."""
        if not self.options.normalize:
            return 0.0, 1.0
        try:
            mean, std = float(self.state["mean"]), float(self.state["std"])
        except (KeyError, TypeError, ValueError):
            raise RunError("the regression task has no target mean and standard deviation (a run keeps them in "
                           "task.json); the run is incomplete: train it again") from None
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise RunError(f"the regression task's saved target scale (mean {mean}, std {std}) is not usable; the "
                           f"run's task.json is damaged: train it again")
        return mean, std

    def to_model(self, targets: np.ndarray) -> np.ndarray:
        mean, std = self.scale()
        return (np.asarray(targets, dtype=np.float64) - mean) / std

    def to_target(self, outputs: np.ndarray) -> np.ndarray:
        mean, std = self.scale()
        return np.asarray(outputs, dtype=np.float64) * std + mean


# --- targets ----------------------------------------------------------------------------------------------------
def target_scale(targets: np.ndarray) -> dict:
    """The training targets' mean and (population) standard deviation: the task's state."""
    return {"mean": float(np.mean(targets)), "std": float(np.std(targets))}


# --- scores -----------------------------------------------------------------------------------------------------
def head_outputs(rows: list) -> np.ndarray:
    """The head's single output per example, from rows of shape (1,) (or scalars)."""
    outputs = np.asarray(rows, dtype=np.float64)
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return outputs[:, 0]
    if outputs.ndim == 1 or (outputs.ndim == 2 and len(outputs) == 0):
        return outputs.reshape(-1)
    raise RunError(f"the model gives {outputs.shape[-1]} outputs per text; a regression head gives 1")


def loss_value(outputs: np.ndarray, targets: np.ndarray, loss: str, delta: float) -> float:
    """The mean training loss (as `Regression.loss`) over a split, on the scale the model learns."""
    errors = np.abs(np.asarray(outputs, dtype=np.float64) - targets)
    if not len(errors):
        return math.nan
    if loss == "huber":
        terms = np.where(errors < delta, 0.5 * errors ** 2, delta * (errors - 0.5 * delta))
    else:
        terms = errors ** 2
    return float(terms.mean())


def target_summary(targets: dict[str, np.ndarray], bins: int = HISTOGRAM_BINS) -> dict:
    """Per split: mean, std, min, median, max; and a histogram per split over shared edges (all splits' range)."""
    every = np.concatenate(list(targets.values()))
    low, high = (float(every.min()), float(every.max())) if len(every) else (0.0, 1.0)
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    stats = {name: {"mean": float(t.mean()), "std": float(t.std()), "min": float(t.min()),
                    "median": float(np.median(t)), "max": float(t.max())} if len(t) else {}
             for name, t in targets.items()}
    counts = {name: np.histogram(t, bins=edges)[0].tolist() for name, t in targets.items()}
    return {"splits": stats, "histogram": {"edges": edges.tolist(), **counts}}


def _number(value: float) -> str:
    return f"{value:g}"
