"""The Task interface: what changes from one task to another, as one class per task.

A run asks its task, in this order (ftune.training):

    task = task_for(config)                         # the registry in ftune.tasks maps `task.name` to the class
    splits = task.load_splits(seed)                 # read, check, split; labels as ids into splits.labels
    data = task.encode_splits(splits, tokenizer)    # {split: Encoded}
    summary, warnings = task.summarize(splits, data)
    model = task.load_model(source, labels, trust_remote_code, method)
    task.prepare_loss(data["train"], labels, device)  # e.g. class weights, once
    out = task.forward(model, batch)                # the logits, or less (causal-lm: only what its loss needs)
    loss_sum, count = task.loss(out, batch)         # each step; the loop divides once (over all processes)
    rows = <task-neutral gather of task.rows(out, batch) over a split>
    metrics, outputs = task.score(rows, data[split], labels, interval_seed)
    state = task.calibrate(rows, data["validation"], labels)  # after training: e.g. decision thresholds
    task.baselines(splits, seed); task.save_predictions(run_dir, splits, data, outputs, labels)  # its predictions()

and prediction (ftune.predictors, ftune serve) asks `task.predict(predictor, texts, pairs)`, whose answers have
the shape of `task.Prediction`. A task never sees the Accelerator, the optimizer or the run directory's other files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel

from ftune.data.tokenize import IGNORE, encode
from ftune.errors import ConfigError
from ftune.integrity import atomic_path
from ftune.lazy import lazy
from ftune.schema import Section

pd = lazy("pandas")
torch = lazy("torch")
F = lazy("torch.nn.functional")

PREDICTIONS_FILE = "test_predictions.csv"

if TYPE_CHECKING:
    from ftune.config import Config
    from ftune.data import Encoded
    from ftune.data.prepare import Splits


class TaskOptions(Section):
    """A task's section of the config, `task: {name: ..., its options}` (or just `task: NAME`)."""

    name: str


class Task(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[TaskOptions]]
    Prediction: ClassVar[type[BaseModel]]  # one text's answer from predict and serve
    description: ClassVar[str]  # one line for `ftune config` and the docs
    peft_type: ClassVar[str]  # peft's task type: keeps a new head trainable and saved
    # The scores every evaluation records; the first is the headline (reports, `ftune runs`) and the default
    # train.metric. A task may measure more (per-class tables), but train.metric must be one of these.
    metrics: ClassVar[tuple[str, ...]]
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss"})
    note: ClassVar[str] = ""  # what the scores measure, one or two sentences for the report
    unit: ClassVar[str] = "examples"  # what the test split counts (the report's "n")
    titles: ClassVar[dict[str, str]] = {}  # how tables name its scores and baselines (else by key): metrics.json
    weighs_classes: ClassVar[bool] = False  # train.class_weights applies (prepare_loss reads it)
    one_label_per_text: ClassVar[bool] = False  # batch["labels"] holds one class id per text (method contrastive)
    pairs_in_a_row: ClassVar[bool] = False  # a row holds two texts kept apart by position_ids (preference, kto)
    labeled: ClassVar[bool] = True  # the run has label names (labels.json); a decoder writes text instead
    exportable: ClassVar[bool] = False  # `ftune export` writes its model (ONNX, ExecuTorch): logits per text or token
    ships_baseline: ClassVar[bool] = False  # `ftune export RUN --baseline` can write its TF-IDF baseline as ONNX
    calibrates: ClassVar[bool] = False  # has a `calibrate` step after training (an extra pass over validation)
    default_label_column: ClassVar[str] = "label"
    # What the rest of ftune asks a task instead of comparing its name (only ftune.tasks names tasks):
    serves: ClassVar[Literal["labels", "chat"]] = "labels"  # labels: `predict` answers (ftune predict, POST
    # /v1/predict); chat: a decoder that writes text (ftune generate, the chat API of ftune serve)
    decoder: ClassVar[bool] = False  # a text decoder: its peak memory is its weights and long sequences (ftune.memory);
    # a method may default to another learning rate for it (Method.decoder_learning_rate)
    distills: ClassVar[bool] = False  # a student can learn a teacher run's logits (distill.teacher)
    distills_unlabeled: ClassVar[bool] = False  # ...and texts only the teacher labels (data.unlabeled)

    def __init__(self, config: Config, state: dict | None = None):
        """`state`: what `calibrate` learned after training (task.json in a run), for prediction."""
        self.config, self.options = config, config.task
        self.state: dict = state or {}

    # --- data -------------------------------------------------------------------------------------------------
    @abstractmethod
    def load_splits(self, seed: int) -> Splits:
        """Read, check and split the configured data; labels as ids into `splits.labels`."""

    @abstractmethod
    def encode_splits(self, splits: Splits, tokenizer) -> dict[str, Encoded]:
        """Token ids and the labels the loss reads, per split."""

    def encode_source(self, source: str, data_cfg, labels: list[str], tokenizer) -> Encoded:
        """Another labeled file, in the run's columns and label ids: for `ftune eval` and export parity with --data.
        Tasks that can score one override this."""
        raise ConfigError(f"`ftune eval` scores classification-like runs; task {self.name} has no file to score "
                          f"(its test scores are in the run's metrics.json)")

    @abstractmethod
    def summarize(self, splits: Splits, data: dict[str, Encoded]) -> tuple[dict, list[str]]:
        """The data summary for metrics.json and the report, and warnings a user should read before trusting it."""

    def learned_example(self, splits: Splits, tokenizer) -> list[tuple[str, bool]] | None:
        """One training example as the model reads it, in pieces of text each marked learned or not, for
        `ftune data validate` to show; None where every example is learned the same way (a label per text)."""
        return None

    # --- model and loss -----------------------------------------------------------------------------------------
    @abstractmethod
    def load_model(self, source: str, labels: list[str], trust_remote_code: bool, method=None):
        """The pretrained model with the task's head (labels sized), before the method wraps it."""

    def prepare_loss(self, train: Encoded, labels: list[str], device: torch.device) -> None:
        """Anything the loss needs from the whole training split, computed once (class weights)."""

    def before_training(self, model: torch.nn.Module, data: dict[str, Encoded], pad_id: int, device, dtype) -> str | None:
        """Once per run, with the model as it starts (on --resume too, before the checkpoint's weights are loaded):
        what the task needs from the untrained model over the encoded splits (preference tuning: the reference's
        log-probabilities). Returns a line for the log, or None."""
        return None

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the model's forward pass gets: the batch without its labels (and a teacher's logits when distilling),
        so the model computes no loss of its own (an encoder-decoder task would keep what its decoder needs)."""
        return {k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")}

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """The forward pass whose output `loss` and `rows` read (training, evaluation and prediction alike): the
        logits. A task may return less, e.g. only the positions its loss needs."""
        return model(**self.inputs(batch)).logits

    @abstractmethod
    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the loss terms, their count or summed weight) over a batch, both on the device: the loop
        divides the sum by the count over every process's slice of the global batch, once."""

    # --- evaluation ---------------------------------------------------------------------------------------------
    def rows(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list:
        """What evaluation keeps of a batch's logits, one item per example (moved to the host here)."""
        return list(logits.float().cpu().numpy())

    @abstractmethod
    def score(self, rows: list, data: Encoded, labels: list[str], interval_seed: int | None = None
              ) -> tuple[dict, Any]:
        """(metrics, outputs) of a split from its rows; `interval_seed` asks for the 95% bootstrap interval of the
        headline (final test scores). Metrics hold the names in `metrics` this data has, plus `n`."""

    def calibrate(self, rows: list, data: Encoded, labels: list[str]) -> dict:
        """After training, with the best weights (only when `calibrates`): what to fix from the validation split
        (e.g. thresholds). `self.state` is saved as the run's task.json and given back to the task for scoring test
        and predicting."""
        return self.state

    def baselines(self, splits: Splits, seed: int) -> dict:
        """{name: metrics} of the task's simple models, fitted on train and scored on the same test split."""
        return {}

    def save_predictions(self, run_dir: Path, splits: Splits, data: dict[str, Encoded], outputs: Any,
                         labels: list[str]) -> None:
        """test_predictions.csv (the report shows its mistakes): the rows of `predictions`, where the task has any."""
        frame = self.predictions(splits, outputs, labels)
        if frame is not None:
            with atomic_path(run_dir / PREDICTIONS_FILE) as tmp:  # a symlink there is replaced, not written through
                frame.to_csv(tmp, index=False)

    def predictions(self, splits: Splits, outputs: Any, labels: list[str]) -> pd.DataFrame | None:
        """Every test example with its truth and the prediction, a row each, from the `outputs` of `score`; None
        where the task writes no such file."""
        return None

    # --- prediction ---------------------------------------------------------------------------------------------
    @abstractmethod
    def predict(self, predictor, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        """For each text, an answer of the shape of `Prediction`, from `predictor.outputs(data, self.rows)`."""

    def logits(self, predictor, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """Logits per text (tasks with an output row per text): what `predict` turns into answers and ONNX parity
        compares."""
        return text_logits(predictor, self.rows, texts, pairs)

    # --- scores -------------------------------------------------------------------------------------------------
    @classmethod
    def is_better(cls, metric: str, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best if metric in cls.lower_is_better else value > best

    @classmethod
    def headline(cls) -> str:
        return cls.metrics[0]


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over the labels that are not IGNORE, their count or summed class weight): a label per
    text or per token alike. No boolean indexing, so nothing here waits for the device."""
    labels = labels.flatten()
    total = F.cross_entropy(logits.float().flatten(0, -2), labels, weight=weight, ignore_index=IGNORE, reduction="sum")
    taken = labels != IGNORE
    count = (weight[labels.clamp(min=0)] * taken).sum() if weight is not None else taken.sum().float()
    return total, count


def class_weights(labels: np.ndarray, num_labels: int, device) -> torch.Tensor:
    """Inverse class frequency over what the loss averages: texts, or the tokens that carry a tag (not IGNORE)."""
    labels = labels[labels != IGNORE]
    counts = np.bincount(labels, minlength=num_labels).astype(np.float64)
    weights = len(labels) / (num_labels * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def texts_of(frame: pd.DataFrame) -> pd.DataFrame:
    """A split's text column(s): how each row of test_predictions.csv starts."""
    return frame[["text", "text_pair"] if "text_pair" in frame else ["text"]]


def text_logits(predictor, rows, texts: list[str], pairs: list[str] | None = None, long_text=None) -> np.ndarray:
    """Each text's logits from a predictor, encoded as in training; a chunked long text gets its windows' logits
    pooled (`long_text`)."""
    frame = pd.DataFrame({"text": list(texts)} | ({"text_pair": list(pairs)} if pairs is not None else {}))
    data = encode(frame, predictor.tokenizer, predictor.max_length, use_cache=False, long_text=long_text)
    out = predictor.outputs(data, rows)
    if not out:
        return np.zeros((0, len(predictor.labels)), dtype=np.float32)
    return data.per_document(np.stack(out), long_text.pool if long_text else "mean")
