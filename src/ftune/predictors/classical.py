"""A classical baseline's export (`ftune export RUN --baseline`) through onnxruntime: one graph that reads raw
strings (TF-IDF features and the linear model inside it), answering as a classification run does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftune.config import validate
from ftune.errors import ConfigError, FtuneError, RunError
from ftune.integrity import MANIFEST_KEY, member, read_json_file, read_labels, verify
from ftune.lazy import lazy
from ftune.predictors.base import EXPORT_FILE, Labeler
from ftune.predictors.onnx import COLUMN_KEYS
from ftune.tasks import task_for
from ftune.tasks.baselines import joined_texts
from ftune.tasks.scoring import metrics_with_interval, softmax

pd = lazy("pandas")

KIND = "classical"  # export.json's "kind" in a baseline export; an export without one holds a fine-tuned model
PROBABILITIES = "probabilities"  # export.json's "scores": what the graph's `scores` output holds (else "decision")
GRAPH_FLOATS = 1 << 24  # the graph's TF-IDF matrix is dense (ONNX has no sparse one): texts per batch are sized so
# that it stays 64 MB, whatever the vocabulary


def is_classical(export_dir: Path) -> bool:
    """Whether an export folder holds a classical baseline (export.json says so); a damaged export.json is not, and
    the transformer predictor then says what is wrong with it."""
    try:
        info = read_json_file(Path(export_dir) / EXPORT_FILE, "")
    except RunError:
        return False
    return isinstance(info, dict) and info.get("kind") == KIND


def baseline_fix(export_dir: Path) -> str:
    """The fix for a baseline export folder with a missing, cut-short or edited file."""
    return f"export the baseline again (ftune export RUN --baseline --output {export_dir})"


class ClassicalPredictor(Labeler):
    """A baseline export folder: model.onnx (texts in; `label` ids and `scores` out), labels.json, export.json."""

    kind = KIND
    tokenizer = None  # the graph reads raw strings
    max_length = 0  # no token window: a text is read whole

    def __init__(self, export_dir: str | Path, device: str = "auto"):
        import onnxruntime as ort

        if device not in ("auto", "cpu"):  # string operators have CPU kernels only
            raise ConfigError(f"--device {device}: a baseline export runs on the CPU; use --device cpu or auto")
        self.export_dir = Path(export_dir)
        fix = baseline_fix(self.export_dir)
        listed_in = self.export_dir / EXPORT_FILE
        self.info = info = read_json_file(listed_in, fix)
        if not isinstance(info, dict) or not isinstance(info.get("files"), dict) \
                or not isinstance(info.get("task"), dict) or not isinstance(info.get("parity", {}), dict) \
                or type(info.get("features")) is not int or info["features"] < 1:
            raise RunError(f"{listed_in} is not a baseline export description ftune writes; {fix}")
        verify(self.export_dir, info.get(MANIFEST_KEY), listed_in, fix)  # hashed once, here
        self.file = member(self.export_dir, info["files"].get("model"), listed_in, fix)
        if not self.file.is_file():
            raise RunError(f"{self.file} is missing; {fix}")
        self.labels = read_labels(self.export_dir / "labels.json", fix)
        try:
            self.task = task_for(validate({"task": info["task"]}, str(listed_in)))
        except FtuneError as e:
            raise RunError(f"{e}; {fix}") from None
        self.data_config = self.task.config.data.model_copy(update={key: info.get(key) for key in COLUMN_KEYS})
        self.text_column = info.get("text_column")
        self.probabilities = info.get("scores") == PROBABILITIES
        self.batch_size = max(1, GRAPH_FLOATS // info["features"])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.file), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own classes for a bad graph (or a locale it cannot make)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise RunError(f"onnxruntime cannot load {self.file} ({first}); {fix}") from None
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if set(outputs) != {"label", "scores"} or outputs["scores"][-1] != len(self.labels):
            raise RunError(f"{self.file.name} does not give a label and {len(self.labels)} scores per text, as "
                           f"labels.json says; {fix}")

    def scores(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(class id, every class's score) per text, as the graph gives them, in batches of `batch_size`."""
        ids, scores = [np.zeros(0, np.int64)], [np.zeros((0, len(self.labels)), np.float32)]
        for start in range(0, len(texts), self.batch_size):
            batch = np.array(texts[start:start + self.batch_size], dtype=object)
            found = self.session.run(["label", "scores"], {"text": batch})
            ids.append(found[0])
            scores.append(found[1])
        return np.concatenate(ids), np.concatenate(scores)

    def probabilities_of(self, scores: np.ndarray) -> np.ndarray:
        """What `predict` reports as each label's score: a logistic model's probabilities, or a linear SVM's decision
        values through softmax (they rank the labels as the SVM does, but are not calibrated probabilities)."""
        return scores.astype(np.float64) if self.probabilities else softmax(scores.astype(np.float64))

    def texts(self, texts: list[str], pairs: list[str] | None) -> list[str]:
        """The strings the graph reads: a text pair joined as the baseline learned it."""
        return joined_texts(pd.DataFrame({"text": list(texts)} | ({"text_pair": list(pairs)} if pairs else {})))

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        if not texts:
            return []
        ids, scores = self.scores(self.texts(texts, pairs))
        probs = self.probabilities_of(scores)
        return [{"label": self.labels[int(i)], "score": float(p[int(i)]),
                 "scores": {name: float(p[j]) for j, name in enumerate(self.labels)}} for i, p in zip(ids, probs)]

    def logits(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """Scores whose softmax is what `predict` reports: log-probabilities, or the SVM's decision values."""
        _, scores = self.scores(self.texts(texts, pairs))
        return np.log(np.maximum(scores, 1e-12)) if self.probabilities else scores

    def outputs(self, data, per_row) -> list:
        raise TypeError("a baseline export reads raw texts, not token ids: call predict or logits")

    def score_source(self, source: str, data_cfg) -> dict:
        """`ftune eval EXPORT --data FILE`: the task's metrics on a labeled file (no loss for an SVM: its scores are
        not probabilities)."""
        from ftune.data import load_eval_frame

        frame = load_eval_frame(source, data_cfg, self.labels)
        metrics = metrics_with_interval(self.logits(frame["text"].tolist(), frame["text_pair"].tolist()
                                                    if "text_pair" in frame else None),
                                        frame["label"].to_numpy(), self.labels, seed=0)
        return metrics if self.probabilities else {k: v for k, v in metrics.items() if k != "loss"}

    def using(self) -> str:
        """One line saying which model answers, how closely it matched scikit-learn, and what its scores are."""
        parity = self.info.get("parity", {}).get("onnx", {})
        agreed, texts = parity.get("same_label_as_sklearn"), self.info.get("parity", {}).get("texts")
        matched = f"; same label as scikit-learn on {agreed:.1%} of {texts} test texts" \
            if isinstance(agreed, float) and isinstance(texts, int) else ""
        scores = "" if self.probabilities else "; scores are softmaxed SVM decision values, not probabilities"
        return f"using the TF-IDF baseline {self.info.get('chosen', '')} (export folder {self.export_dir}{matched}" \
               f"{scores})"

    def describe(self) -> dict:
        parity = self.info.get("parity", {})
        return {"kind": self.kind, "task": self.task.name, "labels": self.labels, "model": self.info.get("chosen"),
                "scores": "probabilities" if self.probabilities else "softmax of linear SVM decision values",
                "source": str(self.export_dir), "file_bytes": self.file.stat().st_size,
                "device": self.session.get_providers()[0],
                "metrics": {"test_accuracy": parity.get("onnx", {}).get("accuracy"),
                            "sklearn_test_accuracy": parity.get("sklearn", {}).get("accuracy"),
                            "same_label_as_sklearn": parity.get("onnx", {}).get("same_label_as_sklearn"),
                            "validation_accuracy": self.info.get("validation_accuracy")}}
