"""Instruction tuning of a decoder: the loss is taken on the response tokens only.

An example is a prompt and a response, or a chat (a list of {role, content} messages). It is
laid out with the tokenizer's chat template when it has one, else as PLAIN_PROMPT + response +
end-of-text. Each response starts where the template's prompt for that turn ends, so every
assistant turn is learned and nothing the user wrote is. Short examples can be packed into
full windows (task.packing): less padding, at the price of examples attending to their
neighbours in the same window (the simple packing of TRL's first versions).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd
import torch

from pydantic import BaseModel, Field

from ftune.data import Encoded
from ftune.data.builtin import check_builtin_task
from ftune.data.prepare import column, complete_splits, given_splits
from ftune.data.sources import read_source
from ftune.data.summary import SPLITS, token_lengths
from ftune.data.tokenize import IGNORE
from ftune.data.validate import window_warning
from ftune.errors import DataError, RunError
from ftune.tasks.base import Task, TaskOptions, cross_entropy_sum

PLAIN_PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"  # for tokenizers without a chat template
ROLES = ("system", "user", "assistant")


class CausalLMOptions(TaskOptions):
    name: Literal["causal-lm"] = "causal-lm"
    prompt_column: str = Field("prompt", description="column with the instruction")
    response_column: str = Field("response", description="column with the answer to learn")
    messages_column: str = Field("messages", description="column with chat messages (role, content), used instead "
                                                         "of prompt/response when present")
    packing: bool = Field(False, description="join short training examples into sequences of data.max_length tokens")


class Generated(BaseModel):
    text: str


class CausalLM(Task):
    name = "causal-lm"
    description = "instruction tuning of a decoder: the loss on the responses only (`ftune generate` answers)"
    Options = CausalLMOptions
    Prediction = Generated
    peft_type = "CAUSAL_LM"
    metrics = ("loss", "perplexity")
    note = "Mean loss per response token and its perplexity (exp of the loss)."
    lower_is_better = frozenset({"loss", "perplexity"})
    labeled = False

    def load_splits(self, seed: int):
        check_builtin_task(self.config.data.train, self.name)
        given = given_splits(self.config.data, read_source, lambda frame, cfg, where: select_chats(frame, self.options,
                                                                                                    where))
        return complete_splits(given, self.config.data, seed, [])

    def encode_splits(self, splits, tokenizer) -> dict[str, Encoded]:
        max_length = self.config.data.max_length
        data = {name: encode_chats(getattr(splits, name)["messages"].tolist(), tokenizer, max_length) for name in SPLITS}
        if self.options.packing:
            data["train"] = pack(data["train"], max_length)
        return data

    def summarize(self, splits, data: dict[str, Encoded]) -> tuple[dict, list[str]]:
        return summarize(splits, data, self.config.data.max_length, self.options.packing)

    def load_model(self, source: str, labels: list[str], trust_remote_code: bool, method=None):
        from ftune.models import load_causal_lm

        return load_causal_lm(source, trust_remote_code, method)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return cross_entropy_sum(logits[:, :-1], batch["labels"][:, 1:])  # the logits at token t predict token t + 1

    def rows(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        return loss_rows(logits, batch)

    def score(self, rows: list, data: Encoded, labels: list[str], interval_seed: int | None = None) -> tuple[dict, list]:
        """Mean loss per response token and its perplexity."""
        nll, count = np.sum(rows, axis=0) if rows else (0.0, 0)
        loss = float(nll / max(count, 1))
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "n": len(data), "tokens": int(count)}, rows

    def predict(self, predictor, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        raise RunError("a causal-lm run writes text rather than labels; use `ftune generate RUN --prompt TEXT`")


def select_chats(frame: pd.DataFrame, options: CausalLMOptions, where: str) -> pd.DataFrame:
    """Every example as a chat: its messages column, or a user prompt and an assistant response."""
    if options.messages_column in frame.columns:
        chats = [_checked_chat(m, where, row) for row, m in enumerate(frame[options.messages_column])]
    else:
        prompts = column(frame, options.prompt_column, "prompt_column", where)
        responses = column(frame, options.response_column, "response_column", where)
        chats = [_checked_chat([{"role": "user", "content": p}, {"role": "assistant", "content": r}], where, row)
                 for row, (p, r) in enumerate(zip(prompts, responses))]
    return pd.DataFrame({"messages": chats})


def _checked_chat(messages, where: str, row: int) -> list[dict]:
    messages = messages.tolist() if hasattr(messages, "tolist") else messages
    ok = isinstance(messages, list) and all(isinstance(m, dict) and m.get("role") in ROLES and
                                            isinstance(m.get("content"), str) and m["content"].strip() for m in messages)
    if not ok or not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where} row {row + 1}: expected a non-empty prompt and response, or messages as a list of "
                        f"{{role: system|user|assistant, content: text}} with at least one assistant turn; fix that row")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def encode_chats(chats: list[list[dict]], tokenizer, max_length: int) -> Encoded:
    """Token ids per chat, labels = the ids on assistant turns and IGNORE elsewhere; cut at max_length."""
    ids, labels = [], []
    for chat in chats:
        tokens, learn = [], []
        for i, message in enumerate(chat):
            if message["role"] != "assistant":
                continue
            prompt = prompt_ids(tokenizer, chat[:i])
            full = _template_ids(tokenizer, chat[:i + 1])
            if full[:len(tokens)] != tokens or full[:len(prompt)] != prompt:
                raise DataError("the tokenizer's chat template does not extend a conversation by appending to it; "
                                "use a model whose template does, or one-turn prompt/response data")
            learn += [False] * (len(prompt) - len(tokens)) + [True] * (len(full) - len(prompt))
            tokens = full
        labels_row = np.where(learn, tokens, IGNORE)[:max_length]
        labels_row[0] = IGNORE  # nothing predicts the first token
        ids.append(np.asarray(tokens[:max_length], dtype=np.int32))
        labels.append(labels_row.astype(np.int64))
    return Encoded(ids, None, labels)


def prompt_ids(tokenizer, chat: list[dict]) -> list[int]:
    """The ids of a conversation so far, ending where the assistant's answer begins."""
    if tokenizer.chat_template:
        return _as_ids(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True))
    return tokenizer(_plain(chat))["input_ids"]


def _template_ids(tokenizer, chat: list[dict]) -> list[int]:
    if tokenizer.chat_template:
        return _as_ids(tokenizer.apply_chat_template(chat, tokenize=True))
    answer = tokenizer(chat[-1]["content"], add_special_tokens=False)["input_ids"]
    return prompt_ids(tokenizer, chat[:-1]) + answer + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def _plain(chat: list[dict]) -> str:
    """Without a chat template: an optional system text, then the user's turn as the instruction."""
    if [m["role"] for m in chat if m["role"] != "system"] != ["user"]:
        raise DataError("multi-turn chats need a tokenizer with a chat template; this one has none: use one-turn "
                        "prompt/response data, or a model whose tokenizer has a template")
    system = "".join(f"{m['content']}\n\n" for m in chat if m["role"] == "system")
    return system + PLAIN_PROMPT.format(prompt=chat[-1]["content"])


def _as_ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def pack(data: Encoded, max_length: int) -> Encoded:
    """Examples joined in order into sequences of at most max_length tokens (none is split)."""
    ids, labels = [], []
    for x, y in zip(data.input_ids, data.labels):
        if ids and len(ids[-1]) + len(x) <= max_length:
            ids[-1] = np.concatenate([ids[-1], x])
            labels[-1] = np.concatenate([labels[-1], y])
        else:
            ids.append(x)
            labels.append(y)
    return Encoded(ids, None, labels)


def loss_rows(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Each example's summed negative log-likelihood of its response tokens, and how many there are."""
    logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    counts = (labels != IGNORE).sum(1)
    return [np.array([float(s), int(c)]) for s, c in zip(nll.sum(1).cpu(), counts.cpu())]


def summarize(splits, data: dict[str, Encoded], max_length: int, packing: bool) -> tuple[dict, list[str]]:
    summary = {name: len(getattr(splits, name)) for name in SPLITS}
    summary["tokens"] = token_lengths({name: data[name].lengths for name in SPLITS}, max_length)
    summary["response_tokens"] = {name: int(sum((y != IGNORE).sum() for y in data[name].labels)) for name in SPLITS}
    if packing:
        summary["packed_train_sequences"] = len(data["train"])
    cut = {name: int((data[name].lengths >= max_length).sum()) for name in SPLITS if not
           (name == "train" and packing)}
    return summary, window_warning(cut, f"{{total}} examples fill the {max_length}-token window and are cut to it "
                                        f"({{per_split}}): their responses lose their ends; raise data.max_length")

