"""KTO: preference tuning from answers marked good or bad one at a time, no pairs needed (Ethayarajh et al. 2024;
TRL's KTOTrainer, its "kto" loss).

An example is a prompt, an answer and a label (true: a good answer, false: a bad one). Each answer's implicit reward
is its log-probability ratio to the reference (the model as the run starts, as in `task: preference`), measured
against a reference point z: the KL between the model and the reference, estimated as TRL does, on mismatched
prompt/answer pairs (each prompt with the next example's answer) and clamped at 0, taken over the batch and not
back-propagated through. Good answers are pushed above z, bad ones below:

    loss = desirable_weight * (1 - sigmoid(beta * (ratio - z)))     for a good answer
           undesirable_weight * (1 - sigmoid(beta * (z - ratio)))   for a bad one

Each row holds the example's chat and the mismatched one (positions restart at the second), so one forward pass
gives both. Reward accuracy: the share of answers whose reward falls on the side of z their label says.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Literal

import numpy as np
from pydantic import Field

from ftune.data import Encoded
from ftune.data.builtin import check_builtin_task
from ftune.data.prepare import column, complete_splits, given_splits
from ftune.data.sources import read_source
from ftune.data.summary import SPLITS
from ftune.errors import DataError
from ftune.lazy import lazy
from ftune.tasks.base import TaskOptions
from ftune.tasks.causal_lm import _checked_chat
from ftune.tasks.preference import Pairs, Preference, _messages, encode_pairs
from ftune.tasks.baselines import chat_texts, tuned_classifier
from ftune.tasks.scoring import bootstrap_accuracy

pd = lazy("pandas")
torch = lazy("torch")

TRUE, FALSE = {"true", "1", "yes", "good", "desirable"}, {"false", "0", "no", "bad", "undesirable"}


class KTOOptions(TaskOptions):
    name: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0, description="the reward's scale (TRL's default)")
    desirable_weight: float = Field(1.0, gt=0, description="the good answers' share of the loss (raise it when they "
                                                           "are fewer than the bad ones)")
    undesirable_weight: float = Field(1.0, gt=0, description="the bad answers' share of the loss")
    prompt_column: str = Field("prompt", description="column with the prompt (text, or a chat's messages)")
    completion_column: str = Field("completion", description="column with the answer (text, or a chat ending in it)")
    label_column: str = Field("label", description="column saying whether the answer is good: true/false, 1/0")


class KTO(Preference):
    name = "kto"
    description = "preference tuning from answers marked good or bad, unpaired (KTO; `ftune generate`)"
    Options = KTOOptions
    note = ("Reward accuracy: the share of answers whose implicit reward falls on the side of the reference point "
            "their label says (above for good answers, below for bad). Shifts: how far the good (chosen) and bad "
            "(rejected) answers' log-probability per token moved from the reference.")
    unit = "answers"
    titles = {**Preference.titles, "all_good": "every answer called good",
              "tfidf": "TF-IDF + linear model, good or bad (tuned on validation)"}

    @property
    def beta(self) -> float:
        return self.options.beta

    @property
    def loss_name(self) -> str:
        return "kto"

    def load_splits(self, seed: int):
        check_builtin_task(self.config.data.train, self.name)
        given = given_splits(self.config.data, read_source, lambda frame, cfg, where: select_unpaired(
            frame, self.options, where))
        return complete_splits(given, self.config.data, seed, [])

    def encode_splits(self, splits, tokenizer) -> dict[str, Encoded]:
        data = {}
        for name in SPLITS:
            frame = getattr(splits, name)
            # Each prompt with the next example's answer: the mismatched pairs the KL reference point is taken on.
            answers = frame["chosen"].tolist()
            mismatched = [chat[:-1] + answers[(i + 1) % len(answers)][-1:] for i, chat in enumerate(answers)]
            data[name] = encode_pairs(frame.assign(rejected=mismatched), tokenizer, self.config.data.max_length,
                                      name)
            data[name].desirable = frame["desirable"].to_numpy(dtype=np.float32)
        return data

    def pair_losses(self, out: Pairs, desirable: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(each answer's loss, its reward measured from the reference point z: > 0 where the model takes it as
        good). Without labels (a forward pass on its own), every answer counts as good."""
        ratio = out.logp - out.reference
        z = ratio[:, 1].mean().clamp(min=0).detach() if len(ratio) else ratio.new_zeros(())
        reward = self.beta * (ratio[:, 0] - z)
        good = torch.ones_like(reward, dtype=torch.bool) if desirable is None else desirable.bool()
        weights = torch.where(good, self.options.desirable_weight, self.options.undesirable_weight)
        return weights * (1 - torch.sigmoid(torch.where(good, reward, -reward))), reward

    def loss(self, out: Pairs, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        losses, _ = self.pair_losses(out, batch.get("desirable"))
        return losses.sum(), torch.tensor(float(len(losses)), device=losses.device)

    def rows(self, out: Pairs, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """Preference's row (the answer's and the mismatched answer's log-probabilities, the reference's, the token
        counts) and the label."""
        good = batch["desirable"].float()[:, None] if "desirable" in batch else torch.ones((len(out.logp), 1))
        return list(torch.cat([out.logp.detach(), out.reference, out.count, good.to(out.logp)], 1).float().cpu().numpy())

    def score(self, rows: list, data: Encoded, labels: list[str], interval_seed: int | None = None) -> tuple[dict, list]:
        table = torch.from_numpy(np.stack(rows)) if rows else torch.zeros((0, 7))
        out, good = Pairs(table[:, 0:2], table[:, 4:6], table[:, 2:4]), table[:, 6].bool()
        losses, reward = self.pair_losses(out, good)
        signed = torch.where(good, reward, -reward)
        correct = ((signed > 0).double() + 0.5 * (signed == 0).double()).numpy()
        per_token = (out.logp - out.reference)[:, 0] / out.count[:, 0].clamp(min=1)

        def mean(values: torch.Tensor) -> float:
            return float(values.mean()) if len(values) else 0.0

        metrics = {"reward_accuracy": float(correct.mean()) if rows else 0.5,
                   "reward_margin": mean(reward[good]) - mean(reward[~good]), "chosen_shift": mean(per_token[good]),
                   "rejected_shift": mean(per_token[~good]), "loss": mean(losses), "n": len(rows)}
        if interval_seed is not None and rows:
            metrics["reward_accuracy_ci95"] = list(bootstrap_accuracy(correct, seed=interval_seed))
        return metrics, rows

    def baselines(self, splits, seed: int) -> dict:
        """Every answer called good (the labels' balance), and TF-IDF + a linear model telling good answers from bad
        (tuned on validation, as classification's baseline)."""
        texts = {name: pd.DataFrame({"text": chat_texts(frame["chosen"]), "label": frame["desirable"].astype(np.int64)})
                 for name, frame in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))}
        choice = tuned_classifier(SimpleNamespace(**texts), lambda truth, predicted: np.mean(predicted == truth))
        hits = (choice.test == texts["test"]["label"].to_numpy()).astype(np.float64)
        share = float(splits.test["desirable"].mean()) if len(splits.test) else 0.5
        return {"all_good": {"reward_accuracy": share, "n": len(splits.test)},
                "tfidf": {"reward_accuracy": float(hits.mean()) if len(hits) else 0.5,
                          "reward_accuracy_ci95": list(bootstrap_accuracy(hits, seed=seed)), "n": len(hits),
                          **choice.fields()}}


def select_unpaired(frame: pd.DataFrame, options: KTOOptions, where: str) -> pd.DataFrame:
    """Every example as a chat ending in its answer (column `chosen`, as preference names it) and its label."""
    answers = column(frame, options.completion_column, "completion_column", where)
    marks = column(frame, options.label_column, "label_column", where)
    prompts = frame[options.prompt_column] if options.prompt_column in frame.columns else [None] * len(frame)
    chats, good = [], []
    for row, (prompt, answer, mark) in enumerate(zip(prompts, answers, marks)):
        chat = _messages(prompt, "user") + _messages(answer, "assistant")
        if not isinstance(chat[-1].get("content"), str) or not chat[-1]["content"].strip():
            raise DataError(f"{where} row {row + 1}: the answer is empty; give it text, or drop the row")
        text = str(mark).strip().lower()
        if text not in TRUE | FALSE:
            raise DataError(f"{where} row {row + 1}: label {mark!r} is neither good nor bad; use true/false (or "
                            f"1/0) in column '{options.label_column}'")
        chats.append(_checked_chat(chat, where, row))
        good.append(text in TRUE)
    return pd.DataFrame({"chosen": chats, "desirable": good})
