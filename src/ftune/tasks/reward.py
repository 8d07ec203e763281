"""Reward models: a score per answer to a prompt, learned from pairs of answers where one was preferred.

The model is a sequence classifier with one output (an encoder, or a decoder whose classifier reads the last token),
reading the prompt and the answer as a text pair. It learns the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected)
(Ouyang et al. 2022; TRL's RewardTrainer). Data as `task: preference` takes it: prompt/chosen/rejected columns, or
chosen and rejected chats (their earlier messages, joined, are the prompt). Each pair is one row of the encoded split,
the chosen answer's tokens then the rejected one's, and the forward pass scores the two as separate texts.

`ftune predict` / `ftune serve` answer `{"score": ...}` for each text: an answer alone, or with `--text-pair`-style
pairs a prompt (text) and an answer (pair), as training read them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from ftune.data import Encoded
from ftune.data.builtin import check_builtin_task
from ftune.data.prepare import complete_splits, given_splits
from ftune.data.sources import read_source
from ftune.data.summary import SPLITS, token_lengths
from ftune.data.tokenize import encode
from ftune.errors import RunError
from ftune.lazy import lazy
from ftune.tasks.base import Task, TaskOptions
from ftune.tasks.preference import pair_baselines, select_pairs
from ftune.tasks.scoring import bootstrap_accuracy

pd = lazy("pandas")
torch = lazy("torch")
F = lazy("torch.nn.functional")

OUTPUT = "score"  # the head's one output: the run's labels.json is [OUTPUT]


class RewardOptions(TaskOptions):
    name: Literal["reward-model"] = "reward-model"
    prompt_column: str = Field("prompt", description="column with the prompt (text, or a chat's messages)")
    chosen_column: str = Field("chosen", description="column with the preferred answer (text, or a chat ending in it)")
    rejected_column: str = Field("rejected", description="column with the answer not preferred")


class Scored(BaseModel):
    score: float = Field(description="the reward: higher for answers people preferred")


class RewardModel(Task):
    name = "reward-model"
    description = "a score per answer, learned from chosen/rejected pairs (Bradley-Terry); predict returns it"
    Options = RewardOptions
    Prediction = Scored
    peft_type = "SEQ_CLS"
    metrics = ("accuracy", "margin", "loss")
    note = ("Accuracy: the share of held-out pairs whose chosen answer scores higher (a tie counts half; 50% is "
            "chance), with its 95% interval; margin: the mean score difference.")
    unit = "pairs"
    titles = {"base_model": "base model, untrained head", "longer_answer": "the longer answer preferred",
              "tfidf_pairwise": "TF-IDF pairwise logistic regression (tuned on validation)"}

    def load_splits(self, seed: int):
        check_builtin_task(self.config.data.train, self.name)
        given = given_splits(self.config.data, read_source, lambda frame, cfg, where: select_pairs(frame, self.options,
                                                                                                    where))
        return complete_splits(given, self.config.data, seed, [OUTPUT])

    def encode_splits(self, splits, tokenizer) -> dict[str, Encoded]:
        return {name: self._encode(getattr(splits, name), tokenizer) for name in SPLITS}

    def _encode(self, frame: pd.DataFrame, tokenizer) -> Encoded:
        """One row per pair: the chosen answer's ids (with its prompt) then the rejected one's, positions restarting
        at the second (which the forward pass splits at)."""
        max_length = self.config.data.max_length
        chosen, rejected = (encode(_texts(frame[side]), tokenizer, max_length) for side in ("chosen", "rejected"))
        both = lambda a, b: [np.concatenate([x, y]) for x, y in zip(a, b)]  # noqa: E731
        positions = [np.concatenate([np.arange(len(x)), np.arange(len(y))]).astype(np.int32)
                     for x, y in zip(chosen.input_ids, rejected.input_ids)]
        types = both(chosen.token_type_ids, rejected.token_type_ids) if chosen.token_type_ids is not None else None
        return Encoded(both(chosen.input_ids, rejected.input_ids), types, np.zeros(len(frame), dtype=np.int64),
                       position_ids=positions)

    def summarize(self, splits, data: dict[str, Encoded]) -> tuple[dict, list[str]]:
        summary = {name: len(getattr(splits, name)) for name in SPLITS}
        summary["tokens"] = token_lengths({name: data[name].lengths for name in SPLITS}, 2 * self.config.data.max_length)
        return summary, []

    def load_model(self, source: str, labels: list[str], trust_remote_code: bool, method=None):
        from ftune.models import load_classifier

        model = load_classifier(source, labels, trust_remote_code, method)
        if model.config.num_labels != 1:
            raise RunError(f"{source}: the model has {model.config.num_labels} outputs, a reward head has 1; check "
                           f"that labels.json holds [\"{OUTPUT}\"]")
        if model.config.pad_token_id is None and getattr(model.config, "eos_token_id", None) is not None:
            model.config.pad_token_id = model.config.eos_token_id  # a decoder's classifier finds the last token by it
        return model

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores, [batch, 2] (chosen, rejected) for a split's pairs, [batch, 1] for texts to predict."""
        if "position_ids" not in batch:
            return model(**self.inputs(batch)).logits.float()
        pad = model.config.pad_token_id or 0
        first, second = _halves(batch, pad)
        scores = model(**{k: torch.cat([first[k], second[k]]) for k in first}).logits.float()[:, 0]
        return scores.view(2, -1).T

    def loss(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return -F.logsigmoid(scores[:, 0] - scores[:, 1]).sum(), torch.tensor(float(len(scores)), device=scores.device)

    def score(self, rows: list, data: Encoded, labels: list[str], interval_seed: int | None = None) -> tuple[dict, list]:
        table = np.stack(rows).astype(np.float64) if rows else np.zeros((0, 2))
        margin = table[:, 0] - table[:, 1]
        correct = (margin > 0) + 0.5 * (margin == 0)
        loss = float(np.logaddexp(0, -margin).mean()) if rows else 0.0  # -log sigmoid(margin)
        metrics = {"accuracy": float(correct.mean()) if rows else 0.5, "margin": float(margin.mean()) if rows else 0.0,
                   "loss": loss, "n": len(rows)}
        if interval_seed is not None and rows:
            metrics["accuracy_ci95"] = list(bootstrap_accuracy(correct, seed=interval_seed))
        return metrics, table

    def baselines(self, splits, seed: int) -> dict:
        """The longer answer preferred, and a classical reward model (TF-IDF, tuned on validation)."""
        return pair_baselines(splits, seed, self.headline())

    def predictions(self, splits, outputs: np.ndarray, labels: list[str]) -> pd.DataFrame:
        """Every test pair: its prompt and answers, both scores, and which answer the model prefers."""
        test = splits.test
        return pd.DataFrame({"prompt": ["\n".join(m["content"] for m in c[:-1]) for c in test.chosen],
                             "chosen": [c[-1]["content"] for c in test.chosen],
                             "rejected": [r[-1]["content"] for r in test.rejected],
                             "chosen_score": outputs[:, 0], "rejected_score": outputs[:, 1],
                             "predicted": np.where(outputs[:, 0] >= outputs[:, 1], "chosen", "rejected")})

    def predict(self, predictor, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        return [{"score": float(row[0])} for row in self.logits(predictor, texts, pairs)]


def _texts(chats: pd.Series) -> pd.DataFrame:
    """A prompt (its messages' texts, joined) and an answer per chat; the answer alone where there is no prompt."""
    prompts = ["\n".join(m["content"] for m in chat[:-1]) for chat in chats]
    answers = [chat[-1]["content"] for chat in chats]
    if not any(prompts):
        return pd.DataFrame({"text": answers})
    return pd.DataFrame({"text": prompts, "text_pair": answers})


def _halves(batch: dict[str, torch.Tensor], pad: int) -> tuple[dict, dict]:
    """Each row's two texts as two padded batches: the first runs to where the positions restart, the second from
    there to the row's last real token."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    width = ids.shape[1]
    columns = torch.arange(width, device=ids.device)
    split = torch.where((batch["position_ids"] == 0) & (columns > 0), columns, width).min(1).values
    ends = mask.sum(1)

    def take(start: torch.Tensor, length: torch.Tensor) -> dict:
        span = torch.arange(int(length.max()), device=ids.device)
        inside = span < length[:, None]
        where = (start[:, None] + span).clamp(max=width - 1)
        out = {"input_ids": torch.where(inside, ids.gather(1, where), pad), "attention_mask": inside.long()}
        if "token_type_ids" in batch:
            out["token_type_ids"] = torch.where(inside, batch["token_type_ids"].gather(1, where), 0)
        return out

    first, second = take(torch.zeros_like(split), split), take(split, ends - split)
    longest = max(first["input_ids"].shape[1], second["input_ids"].shape[1])  # one width for one forward pass
    pad_to = lambda part: {k: F.pad(v, (0, longest - v.shape[1]), value=pad if k == "input_ids" else 0)  # noqa: E731
                           for k, v in part.items()}
    return pad_to(first), pad_to(second)
