"""Load a finished run directory and label new texts, batched and sorted by length."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ftune.data.tokenize import encode
from ftune.metrics import softmax
from ftune.inference import predict_logits
from ftune.models import load_classifier, load_tokenizer, resolve_model
from ftune.run import RUN_FILE, read_json


class Predictor:
    """The fine-tuned model of a run: merged/full weights from model/, else base model + adapter/."""

    def __init__(self, run_dir: str | Path, batch_size: int = 128):
        self.run_dir = Path(run_dir)
        self.batch_size = batch_size
        self.labels: list[str] = read_json(self.run_dir / "labels.json")
        manifest = read_json(self.run_dir / RUN_FILE)
        config = _read_yaml(self.run_dir / "config.yaml")
        self.max_length = config["data"]["max_length"]
        trust = config["model"]["trust_remote_code"]
        if (self.run_dir / "model").is_dir():
            self.tokenizer = load_tokenizer(str(self.run_dir / "model"), trust)
            self.model = load_classifier(str(self.run_dir / "model"), self.labels, trust)
        else:
            from peft import PeftModel

            source = manifest.get("model_source") or resolve_model(config["model"]["name"])
            self.tokenizer = load_tokenizer(str(self.run_dir / "adapter"), trust)
            base = load_classifier(source, self.labels, trust)
            self.model = PeftModel.from_pretrained(base, str(self.run_dir / "adapter"))
        self.model.eval()

    def logits(self, texts: list[str], pairs: list[str] | None = None):
        frame = pd.DataFrame({"text": texts} | ({"text_pair": pairs} if pairs is not None else {}))
        data = encode(frame, self.tokenizer, self.max_length, use_cache=False)
        return predict_logits(self.model, data, self.batch_size, self.tokenizer.pad_token_id or 0)

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        """For each text: the label, its probability, and every class's probability."""
        if not texts:
            return []
        probs = softmax(self.logits(list(texts), pairs))
        return [{"label": self.labels[int(p.argmax())], "score": float(p.max()),
                 "scores": {name: float(p[i]) for i, name in enumerate(self.labels)}} for p in probs]


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))




def evaluate_run(run, source: str, **columns: str | None) -> dict:
    """Metrics of a finished run on another labeled source, with the run's column names unless given."""
    from ftune.data import load_eval_frame
    from ftune.metrics import metrics_with_interval

    data_cfg = run.config.data.model_copy(update={k: v for k, v in columns.items() if v})
    frame = load_eval_frame(source, data_cfg, run.labels)
    predictor = Predictor(run.path)
    logits = predictor.logits(frame["text"].tolist(), frame["text_pair"].tolist() if "text_pair" in frame else None)
    return metrics_with_interval(logits, frame["label"].to_numpy(), run.labels)
