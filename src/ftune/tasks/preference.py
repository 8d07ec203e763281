"""Preference tuning of a decoder: from pairs of answers to one prompt, the model learns to prefer the chosen one.

An example is a prompt with a chosen and a rejected answer (columns prompt/chosen/rejected, or chosen and rejected
as chats that share every message but the last). Each answer is laid out as a causal-lm chat (ftune.tasks.causal_lm:
the same chat template and learned span, so the end-of-turn token is learned the same way), and the two go through
the model as one row, each attending only to itself (position_ids restart at the second answer, as packing does):
one forward pass per pair, the prompt's tokens read twice.

The losses (`task.loss`), on each answer's summed log-probability log p(y|x) of its learned tokens:

    dpo     -log sigmoid(beta * ((log p_c - ref_c) - (log p_r - ref_r))), with label smoothing (Rafailov et al. 2023;
            TRL's "sigmoid")
    orpo    the chosen answer's mean token NLL - beta * log sigmoid(log odds_c - log odds_r), odds from the mean token
            log-probability (Hong et al. 2024); no reference
    simpo   -log sigmoid(beta * (mean log p_c - mean log p_r) - gamma) (Meng et al. 2024); no reference

The reference (ref_c, ref_r) is the model as the run starts, its log-probabilities computed once for every split
before the first step (`before_training`): no second copy of the model, whatever the method, and after `--init-from`
an SFT run it is that run's model, as DPO needs. The scores: reward accuracy (the chosen answer's implicit reward above
the rejected one's), the reward margin, and how far each answer's log-probability moved from the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from pydantic import Field

from ftune.data import Encoded
from ftune.data.builtin import check_builtin_task
from ftune.data.prepare import column, complete_splits, given_splits
from ftune.data.sources import read_source
from ftune.data.summary import SPLITS, token_lengths
from ftune.data.tokenize import IGNORE
from ftune.errors import DataError
from ftune.lazy import lazy
from ftune.tasks.base import TaskOptions
from ftune.tasks.causal_lm import CausalLM, Learned, _checked_chat, encode_chats
from ftune.tasks.baselines import pairwise_accuracy, tuned_pairwise
from ftune.tasks.scoring import bootstrap_accuracy

pd = lazy("pandas")
torch = lazy("torch")
F = lazy("torch.nn.functional")

BETA = {"dpo": 0.1, "orpo": 0.1, "simpo": 2.0}  # each paper's (and TRL's) default


class PreferenceOptions(TaskOptions):
    name: Literal["preference"] = "preference"
    loss: Literal["dpo", "orpo", "simpo"] = Field("dpo", description="dpo: against the reference (the model as the "
                                                                     "run starts); orpo, simpo: no reference")
    beta: float | None = Field(None, gt=0, description="the loss's scale (dpo's KL weight, orpo's lambda); unset: "
                                                       "0.1 for dpo and orpo, 2.0 for simpo")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="dpo and simpo: the share of pairs taken as "
                                                                  "mislabelled (conservative DPO)")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: the margin the reward difference must clear")
    prompt_column: str = Field("prompt", description="column with the prompt (text, or a chat's messages)")
    chosen_column: str = Field("chosen", description="column with the preferred answer (text, or a chat ending in it)")
    rejected_column: str = Field("rejected", description="column with the answer not preferred")


@dataclass
class Pairs:
    """Each pair's log-probabilities ([batch, 2]: chosen, rejected) summed over its learned tokens, the token counts,
    and the reference's (before `before_training` has computed them, the model's own: it is its own reference)."""

    logp: torch.Tensor
    count: torch.Tensor
    reference: torch.Tensor


class Preference(CausalLM):
    name = "preference"
    description = "preference tuning of a decoder on chosen/rejected answers (DPO, ORPO, SimPO; `ftune generate`)"
    Options = PreferenceOptions
    metrics = ("reward_accuracy", "reward_margin", "chosen_shift", "rejected_shift", "loss")
    lower_is_better = frozenset({"loss"})
    note = ("Reward accuracy: the share of pairs whose chosen answer gets the higher implicit reward (a tie counts "
            "half; 50% is chance). Shifts: how far each answer's log-probability per token moved from the reference.")
    unit = "pairs"
    pairs_in_a_row = True
    titles = {"base_model": "the model as the run starts (its own reference)",
              "longer_answer": "the longer answer preferred",
              "tfidf_pairwise": "TF-IDF pairwise logistic regression (tuned on validation)",
              "reward_accuracy": "reward accuracy", "reward_margin": "reward margin",
              "chosen_shift": "chosen log-prob shift", "rejected_shift": "rejected log-prob shift"}

    @property
    def beta(self) -> float:
        return self.options.beta or BETA[self.options.loss]

    @property
    def loss_name(self) -> str:
        return self.options.loss

    # --- data ---------------------------------------------------------------------------------------------------------
    def load_splits(self, seed: int):
        check_builtin_task(self.config.data.train, self.name)
        given = given_splits(self.config.data, read_source, lambda frame, cfg, where: select_pairs(frame, self.options,
                                                                                                    where))
        return complete_splits(given, self.config.data, seed, [])

    def encode_splits(self, splits, tokenizer) -> dict[str, Encoded]:
        max_length = self.config.data.max_length
        return {name: encode_pairs(getattr(splits, name), tokenizer, max_length, name) for name in SPLITS}

    def summarize(self, splits, data: dict[str, Encoded]) -> tuple[dict, list[str]]:
        summary = {name: len(getattr(splits, name)) for name in SPLITS}
        summary["tokens"] = token_lengths({name: data[name].lengths for name in SPLITS}, 2 * self.config.data.max_length)
        return summary, []

    def learned_example(self, splits, tokenizer) -> list[tuple[str, bool]]:
        """The first pair's chosen chat, as causal-lm shows one (its rejected chat is laid out the same way)."""
        return super().learned_example(replace(splits, train=splits.train.rename(columns={"chosen": "messages"})),
                                        tokenizer)

    # --- model and loss -----------------------------------------------------------------------------------------------
    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in super().inputs(batch).items() if k not in ("reference", "desirable")}

    def before_training(self, model, data: dict[str, Encoded], pad_id: int, device, dtype) -> str:
        """The reference: every answer's log-probability under the model as the run starts, once per split (ORPO and
        SimPO train without it; their reports' shifts read it)."""
        from ftune.inference import predict_outputs

        for name in SPLITS:
            rows = predict_outputs(model, data[name], self.config.train.eval_batch_size, pad_id, device, per_row=lambda out, batch: list(
                out.logp.float().cpu().numpy()), forward=self.forward, dtype=dtype)
            data[name].reference = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 2), np.float32)
        return f"{self.loss_name} (beta {self.beta:g}): the reference is the model as this run starts"

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Pairs:
        """Each answer's summed log-probability from one forward pass over the pair's row."""
        learned: Learned = super().forward(model, batch)
        # Which answer each predicted token belongs to: the second starts where the positions restart.
        second = ((batch["position_ids"] == 0).cumsum(1) >= 2)[:, 1:]
        per_token = torch.zeros(learned.taken.shape, dtype=learned.nll.dtype, device=learned.nll.device)
        per_token = per_token.masked_scatter(learned.taken, -learned.nll)
        parts = (learned.taken & ~second, learned.taken & second)
        logp = torch.stack([(per_token * part).sum(1) for part in parts], 1)
        count = torch.stack([part.sum(1) for part in parts], 1).float()
        reference = batch.get("reference")
        return Pairs(logp, count, logp.detach() if reference is None else reference.to(logp))

    def pair_losses(self, out: Pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """(each pair's loss, each pair's reward margin: chosen minus rejected, > 0 where the model prefers it)."""
        beta, smooth, kind = self.beta, self.options.label_smoothing, self.options.loss
        mean = out.logp / out.count.clamp(min=1)
        if kind == "dpo":
            shift = out.logp - out.reference
            target = margin = beta * (shift[:, 0] - shift[:, 1])
        elif kind == "simpo":
            margin = beta * (mean[:, 0] - mean[:, 1])
            target = margin - self.options.simpo_gamma
        else:  # orpo: log odds of each answer's mean token probability
            margin = beta * (mean[:, 0] - mean[:, 1])
            odds = mean - torch.log1p(-torch.exp(mean).clamp(max=1 - 1e-6))
            return -mean[:, 0] - beta * F.logsigmoid(odds[:, 0] - odds[:, 1]), margin
        return -F.logsigmoid(target) * (1 - smooth) - F.logsigmoid(-target) * smooth, margin

    def loss(self, out: Pairs, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        losses, _ = self.pair_losses(out)
        return losses.sum(), torch.tensor(float(len(losses)), device=losses.device)

    # --- evaluation ---------------------------------------------------------------------------------------------------
    def rows(self, out: Pairs, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """Per pair: the log-probabilities, the reference's and the token counts (chosen, rejected each)."""
        both = torch.cat([out.logp.detach(), out.reference, out.count], 1).float().cpu().numpy()
        return list(both)

    def score(self, rows: list, data: Encoded, labels: list[str], interval_seed: int | None = None) -> tuple[dict, list]:
        table = torch.from_numpy(np.stack(rows)) if rows else torch.zeros((0, 6))
        out = Pairs(table[:, 0:2], table[:, 4:6], table[:, 2:4])
        losses, margin = self.pair_losses(out)
        correct = ((margin > 0).double() + 0.5 * (margin == 0).double()).numpy()
        shift = ((out.logp - out.reference) / out.count.clamp(min=1)).mean(0) if rows else torch.zeros(2)
        metrics = {"reward_accuracy": float(correct.mean()) if rows else 0.5,
                   "reward_margin": float(margin.mean()) if rows else 0.0, "chosen_shift": float(shift[0]),
                   "rejected_shift": float(shift[1]), "loss": float(losses.mean()) if rows else 0.0, "n": len(rows)}
        if interval_seed is not None and rows:
            metrics["reward_accuracy_ci95"] = list(bootstrap_accuracy(correct, seed=interval_seed))
        return metrics, rows

    def baselines(self, splits, seed: int) -> dict:
        """The longer answer preferred, and a classical reward model (TF-IDF, tuned on validation)."""
        return pair_baselines(splits, seed, self.headline())


def pair_baselines(splits, seed: int, metric: str) -> dict:
    """The baselines of a split of pairs, scored as `metric` (a pairwise accuracy): the longer answer preferred, and
    TF-IDF pairwise logistic regression chosen on validation (tasks.baselines), with its interval."""
    choice = tuned_pairwise(splits)
    hits = (choice.test > 0) + 0.5 * (choice.test == 0)
    return {"longer_answer": {metric: longer_answer(splits.test), "n": len(splits.test)},
            "tfidf_pairwise": {metric: pairwise_accuracy(choice.test), f"{metric}_ci95": list(bootstrap_accuracy(
                hits.astype(np.float64), seed=seed)), "n": len(splits.test), **choice.fields()}}


def longer_answer(pairs: pd.DataFrame) -> float:
    """The share of pairs whose chosen answer is the longer one (a tie counts half): how much of the preference
    length alone gives away, the bias reward models are known to learn first."""
    longer = np.array([len(c[-1]["content"]) - len(r[-1]["content"]) for c, r in zip(pairs.chosen, pairs.rejected)])
    return float(((longer > 0) + 0.5 * (longer == 0)).mean()) if len(longer) else 0.5


def select_pairs(frame: pd.DataFrame, options: PreferenceOptions, where: str) -> pd.DataFrame:
    """Every pair as two chats (chosen, rejected) with the same messages before the answer: from a prompt and two
    answers, each text or chat. One line names a pair that teaches nothing (an empty answer, two equal answers)."""
    chosen = column(frame, options.chosen_column, "chosen_column", where)
    rejected = column(frame, options.rejected_column, "rejected_column", where)
    prompts = frame[options.prompt_column] if options.prompt_column in frame.columns else [None] * len(frame)
    pairs = []
    for row, (prompt, good, bad) in enumerate(zip(prompts, chosen, rejected)):
        prompt = _messages(prompt, "user")
        good, bad = prompt + _messages(good, "assistant"), prompt + _messages(bad, "assistant")
        answers = [m["content"].strip() if isinstance(m.get("content"), str) else "" for m in (good[-1], bad[-1])]
        if not all(answers):
            raise DataError(f"{where} row {row + 1}: the {'chosen' if not answers[0] else 'rejected'} answer is "
                            f"empty; give both answers text, or drop the pair")
        if answers[0] == answers[1]:
            raise DataError(f"{where} row {row + 1}: the chosen and rejected answers are the same text, so the pair "
                            f"teaches nothing; fix or drop it")
        pairs.append((_checked_chat(good, where, row), _checked_chat(bad, where, row)))
    return pd.DataFrame({"chosen": [c for c, _ in pairs], "rejected": [r for _, r in pairs]})


def _messages(cell, role: str) -> list[dict]:
    """A cell as chat messages: a list of them as it is, text as one message of `role`, nothing as none."""
    cell = cell.tolist() if hasattr(cell, "tolist") else cell
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return []
    return list(cell) if isinstance(cell, list) else [{"role": role, "content": str(cell)}]


def encode_pairs(frame: pd.DataFrame, tokenizer, max_length: int, split: str, columns=("chosen", "rejected")
                 ) -> Encoded:
    """One row per pair: the first column's chat ids then the second's (each as causal-lm lays it out, cut at
    max_length), positions restarting at the second so each attends only to itself."""
    first, second = (encode_chats(frame[c].tolist(), tokenizer, max_length, use_cache=True) for c in columns)
    ids, labels, positions = [], [], []
    for i, (a, b, la, lb) in enumerate(zip(first.input_ids, second.input_ids, first.labels, second.labels)):
        if (la == IGNORE).all() or (lb == IGNORE).all():
            chat = frame[columns[0]].iloc[i]
            prompt = chat[-2]["content"] if len(chat) > 1 else ""
            raise DataError(f"{split} example {i + 1} (prompt '{prompt[:40]}'): its prompt fills data.max_length "
                            f"({max_length} tokens), so no answer token is left to learn; raise data.max_length or "
                            f"shorten the prompt")
        ids.append(np.concatenate([a, b]))
        labels.append(np.concatenate([la, lb]))
        positions.append(np.concatenate([np.arange(len(a)), np.arange(len(b))]).astype(np.int32))
    return Encoded(ids, None, labels, position_ids=positions)
