"""Instruction tuning of a decoder: the loss is taken on the response tokens only.

An example is a prompt and a response, or a chat (a list of {role, content} messages). It is
laid out with the tokenizer's chat template when it has one, else as PLAIN_PROMPT + response +
end-of-text. Each response starts where the template's prompt for that turn ends and runs
through the token(s) the template closes the turn with (`<|im_end|>`, `<|eot_id|>`...), so
every assistant turn is learned, where it stops included, and nothing the user wrote is. A
template that writes nothing after an answer gets the end-of-text token after the chat's last
one: a model that never sees an end never learns to stop.

A chat is rendered once and tokenized once (in batches, with character offsets): where each learned
span lies in the text comes from the template's layout for that sequence of roles, found once with
marker contents. A template that rewrites earlier turns gets the per-turn method (a prompt and a
chat rendered and tokenized per assistant turn), which gives the same ids and labels where both apply.
Encodings are kept in the token cache, as classification's are.

The loss never holds the logits of every position: the forward pass keeps the final hidden
states only where a response token is predicted, and the output layer and an fp32
cross-entropy run on those, CHUNK positions at a time (in training each chunk's logits are
recomputed in the backward pass rather than kept), so no [batch, seq, vocab] tensor exists.

Short training examples can be packed into full windows (task.packing): less padding. Each
packed example keeps its own positions (position_ids restart at 0), from which transformers
builds a block-diagonal causal mask: an example attends only to itself, and its loss is what
it would be alone. `packing: attend-across` is the older packing (TRL's first versions), where
examples also attend to their neighbours in the window.
"""

from __future__ import annotations

import inspect
import json
import math
from bisect import bisect_left
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from ftune.data import Encoded
from ftune.data.builtin import check_builtin_task
from ftune.data.prepare import column, complete_splits, given_splits
from ftune.data.sources import read_source
from ftune.data.summary import SPLITS, token_lengths
from ftune.data.tokenize import IGNORE, cache_path, load_ragged, save_ragged
from ftune.data.validate import window_warning
from ftune.errors import DataError, RunError
from ftune.lazy import lazy
from ftune.tasks.base import Task, TaskOptions

pd = lazy("pandas")
torch = lazy("torch")
F = lazy("torch.nn.functional")
torch_checkpoint = lazy("torch.utils.checkpoint")  # .checkpoint(...): activation checkpointing

PLAIN_PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"  # for tokenizers without a chat template
ROLES = ("system", "user", "assistant")
# Learned positions per output-layer call: at a 151,936-token vocabulary, 0.6 GB of fp32 logits (ftune.memory's
# estimate counts one chunk).
CHUNK = 1024
ANSWER = "ftune-answer-probe"  # rendered as an assistant's answer to find what the template writes after one
RENDER_BATCH = 1000  # chats rendered and tokenized per call
CACHE_FORMAT = "chat-labels-1"  # in the token cache's key: change it when the layout or the labelling changes


class CausalLMOptions(TaskOptions):
    name: Literal["causal-lm"] = "causal-lm"
    prompt_column: str = Field("prompt", description="column with the instruction")
    response_column: str = Field("response", description="column with the answer to learn")
    messages_column: str = Field("messages", description="column with chat messages (role, content), used instead "
                                                         "of prompt/response when present")
    packing: bool | Literal["attend-across"] = Field(
        False, description="join short training examples into sequences of data.max_length tokens, each attending "
                           "only to itself (positions restart per example); attend-across: the older packing, where "
                           "examples also attend to their neighbours")


class Generated(BaseModel):
    text: str


@dataclass
class Learned:
    """What the forward pass leaves for the loss: each learned token's negative log-likelihood (fp32, in the order of
    a boolean index), and where those tokens are ([batch, seq - 1]: the hidden state at t predicts token t + 1)."""

    nll: torch.Tensor
    taken: torch.Tensor


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
    serves = "chat"
    decoder = True

    def load_splits(self, seed: int):
        check_builtin_task(self.config.data.train, self.name)
        given = given_splits(self.config.data, read_source, lambda frame, cfg, where: select_chats(frame, self.options,
                                                                                                    where))
        return complete_splits(given, self.config.data, seed, [])

    def encode_splits(self, splits, tokenizer) -> dict[str, Encoded]:
        max_length = self.config.data.max_length
        data = {name: encode_chats(getattr(splits, name)["messages"].tolist(), tokenizer, max_length, use_cache=True)
                for name in SPLITS}
        if self.options.packing:
            data["train"] = pack(data["train"], max_length, isolate=self.options.packing != "attend-across")
        return data

    def summarize(self, splits, data: dict[str, Encoded]) -> tuple[dict, list[str]]:
        return summarize(splits, data, self.config.data.max_length, self.options.packing)

    def learned_example(self, splits, tokenizer) -> list[tuple[str, bool]]:
        """The first training chat laid out as in training (cut at max_length), in runs of learned and unlearned
        tokens: what a user checks when a model never stops (its end of turn must be learned) or learns the prompt."""
        data = encode_chats(splits.train["messages"].tolist()[:1], tokenizer, self.config.data.max_length)
        ids, learned = data.input_ids[0], data.labels[0] != IGNORE
        cuts = np.flatnonzero(np.diff(learned.astype(np.int8))) + 1
        return [(tokenizer.decode(ids[a:b].tolist(), skip_special_tokens=False), bool(learned[a]))
                for a, b in zip([0, *cuts], [*cuts, len(ids)])]

    def load_model(self, source: str, labels: list[str], trust_remote_code: bool, method=None):
        from ftune.models import load_causal_lm

        return load_causal_lm(source, trust_remote_code, method)

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Packed examples go in with their position_ids and no attention_mask: transformers builds the block-diagonal
        mask from the positions only then (padding, labelled IGNORE, becomes one-token examples of its own)."""
        drop = ("labels", "attention_mask") if "position_ids" in batch else ("labels",)
        return {k: v for k, v in batch.items() if k not in drop}

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Learned:
        """The model's final hidden states at the positions whose next token is learned, through the output layer
        and cross-entropy there only. The model is called as a whole (a DDP wrapper or peft sees a normal call);
        it computes one position's logits, and a hook on its decoder body keeps the hidden states."""
        inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        labels = batch["labels"][:, 1:]  # the hidden state at token t predicts token t + 1
        taken = labels != IGNORE
        with final_hidden_states(inner) as seen:
            model(**self.inputs(batch), use_cache=False, **few_logits(inner))  # no cache: it would undo packing
        # A boolean index waits for the device (the learned positions are ragged): one sync per batch, which is
        # what lets the output layer skip every prompt and padding position.
        # The text's own positions are the last ones: a method may put learned positions before them (prompt tuning).
        hidden = seen[-1][:, -batch["labels"].shape[1]:-1][taken]
        return Learned(token_nll(output_layer(inner), hidden, labels[taken], CHUNK), taken)

    def loss(self, out: Learned, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return out.nll.sum(), out.taken.sum().float()

    def rows(self, out: Learned, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """Each example's summed negative log-likelihood of its response tokens, and how many there are."""
        per_token = torch.zeros(out.taken.shape, dtype=out.nll.dtype, device=out.nll.device)
        sums = per_token.masked_scatter(out.taken, out.nll.detach()).sum(1)  # back in place: row-major, as indexed
        return [np.array([float(s), int(c)]) for s, c in zip(sums.cpu(), out.taken.sum(1).cpu())]

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


@contextmanager
def final_hidden_states(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """The last hidden states of the forward passes run inside: the output of the model's decoder body (after its
    final norm), which is what its output layer reads. `get_decoder` reaches through a peft wrapper."""
    seen: list[torch.Tensor] = []
    handle = model.get_decoder().register_forward_hook(lambda module, args, output: seen.append(output[0]))
    try:
        yield seen
    finally:
        handle.remove()


def few_logits(model: torch.nn.Module) -> dict:
    """Asks the model for the logits of one position only (`logits_to_keep`, in transformers' causal LMs): the loss
    takes the hidden states instead. A model without the option computes them all, as before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft's forward passes it on
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}


def output_layer(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hidden states -> logits as the model's own forward computes them: its output layer, called as a module (so a
    LoRA on it, or a sharding hook, applies), then the scaling a few families put after it."""
    head, config = model.get_output_embeddings(), model.config.get_text_config()
    scale = getattr(config, "logit_scale", None)  # Cohere
    divide = getattr(config, "logits_scaling", None)  # Granite
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2 and 3

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = head(hidden)
        out = out * scale if scale else out
        out = out / divide if divide else out
        return torch.tanh(out / cap) * cap if cap else out

    return logits


def token_nll(logits: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor,
              chunk: int = CHUNK) -> torch.Tensor:
    """Each target's negative log-likelihood (fp32) given its hidden state, `chunk` positions at a time: one chunk's
    logits exist at once, and with gradients each chunk's are recomputed in the backward pass instead of kept."""
    def part(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits(h).float(), y, reduction="none")

    parts = []
    for start in range(0, max(len(targets), 1), chunk):  # an empty batch runs one empty chunk: the loss keeps a graph
        h, y = hidden[start:start + chunk], targets[start:start + chunk]
        parts.append(torch_checkpoint.checkpoint(part, h, y, use_reentrant=False) if torch.is_grad_enabled() else part(h, y))
    return torch.cat(parts)


def encode_chats(chats: list[list[dict]], tokenizer, max_length: int, use_cache: bool = False,
                 per_turn: bool = False) -> Encoded:
    """Token ids per chat, labels = the ids of each assistant turn through the tokens that close it, IGNORE
    elsewhere; cut at max_length. `use_cache`: from the token cache when these chats, this tokenizer and length were
    seen before. `per_turn`: every chat by the per-turn method (the reference the one-render method equals)."""
    path = cache_path(list(_cache_texts(chats, tokenizer)), tokenizer, max_length) if use_cache and chats else None
    cached = load_ragged(path, len(chats)) if path is not None and path.is_file() else None
    if cached is not None and {"ids", "labels"} <= set(cached):
        return Encoded(cached["ids"], None, cached["labels"])
    unclosed = _end_for_unclosed_turns(tokenizer)
    rows: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(chats)
    for i, tokens, learn in [] if per_turn else _rendered_once(chats, tokenizer):
        rows[i] = _row(chats[i], tokens, learn, unclosed, max_length)  # arrays batch by batch: lists of ints are 9x
    for i, chat in enumerate(chats):
        if rows[i] is None:
            rows[i] = _row(chat, *_per_turn(tokenizer, chat), unclosed, max_length)
    ids, labels = [x for x, _ in rows], [y for _, y in rows]
    if path is not None:
        save_ragged(path, ids=ids, labels=labels)
    return Encoded(ids, None, labels)


def _row(chat: list[dict], tokens: list[int], learn, unclosed: list[int], max_length: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """A chat's ids and labels, cut at max_length, from its ids and which of them are learned."""
    if chat[-1]["role"] == "assistant":
        tokens, learn = tokens + unclosed, np.concatenate([learn, np.ones(len(unclosed), dtype=bool)])
    labels = np.where(learn, tokens, IGNORE)[:max_length]
    labels[0] = IGNORE  # nothing predicts the first token
    return np.asarray(tokens[:max_length], dtype=np.int32), labels.astype(np.int64)


def _per_turn(tokenizer, chat: list[dict]) -> tuple[list[int], list[bool]]:
    """A chat's ids and which are learned, one turn at a time: the prompt before each answer and the chat through it
    rendered and tokenized on their own (2 renders per assistant turn). Exact for any template that extends a chat by
    appending to it, so it is what a template that rewrites earlier turns gets."""
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
    return tokens, learn


@dataclass(frozen=True)
class _Layout:
    """What a chat template writes for one sequence of roles, the contents left out: a chat renders as
    pieces[0] + content 0 + pieces[1] + ... + pieces[n]. Each learned span (an answer and the text that closes it)
    is given by its start and end, each as (characters of template text before it, messages before it)."""

    pieces: list[str]
    spans: list[tuple[tuple[int, int], tuple[int, int]]]


def _layout(tokenizer, roles: tuple[str, ...]) -> _Layout | None:
    """The template's layout for these roles, from renders of a chat whose contents are unique markers, or None when
    the template rewrites earlier turns (a prompt or a chat through an answer is not the start of the whole chat's
    text) or alters the contents: those chats go one turn at a time."""
    markers = [f"ftune-message-{j}-probe" for j in range(len(roles))]
    chat = [{"role": role, "content": marker} for role, marker in zip(roles, markers)]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    pieces, starts, at = [], [], 0
    for marker in markers:
        start = text.find(marker, at)
        if start < 0 or text.count(marker) != 1:
            return None
        pieces.append(text[at:start])
        starts.append(start)
        at = start + len(marker)
    pieces.append(text[at:])
    before = list(accumulate(map(len, markers), initial=0))  # marker characters before message j
    spans = []
    for j, role in enumerate(roles):
        if role != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(chat[:j], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(chat[:j + 1], tokenize=False)
        previous_end = starts[j - 1] + len(markers[j - 1]) if j else 0
        next_start = starts[j + 1] if j + 1 < len(roles) else len(text)
        # The span the per-turn method learns: from the end of the prompt to the end of the chat through this
        # answer. Both texts must start the whole chat's text, and the span hold this answer and no other message.
        if not (text.startswith(prompt) and text.startswith(full) and previous_end <= len(prompt) <= starts[j]
                and starts[j] + len(markers[j]) <= len(full) <= next_start):
            return None
        spans.append(((len(prompt) - before[j], j), (len(full) - before[j + 1], j + 1)))
    return _Layout(pieces, spans)


def _rendered_once(chats: list[list[dict]], tokenizer) -> Iterator[tuple[int, list[int], np.ndarray]]:
    """(chat index, ids, learned) for the chats encoded from one render each: the whole chat rendered (in batches)
    and tokenized once (in batches) with character offsets, the learned tokens found from where the answers lie in
    the text. Chats left out go one turn at a time: no template, a tokenizer without exact offsets, a template that
    rewrites earlier turns, or a token across an answer's edge."""
    if not tokenizer.chat_template or not _exact_offsets(tokenizer):
        return
    layouts, todo = {}, []
    for i, chat in enumerate(chats):
        last = max((j for j, m in enumerate(chat) if m["role"] == "assistant"), default=None)
        if last is None:
            continue
        chat = chat[:last + 1]  # what follows the last answer teaches nothing: the per-turn method leaves it out too
        roles = tuple(m["role"] for m in chat)
        if roles not in layouts:
            layouts[roles] = _layout(tokenizer, roles)
        if layouts[roles] is not None:
            todo.append((i, chat, layouts[roles]))
    for start in range(0, len(todo), RENDER_BATCH):
        batch = todo[start:start + RENDER_BATCH]
        texts = tokenizer.apply_chat_template([chat for _, chat, _ in batch], tokenize=False)
        # as apply_chat_template(tokenize=True) tokenizes, plus the offsets (and nothing unused: a list per chat each)
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
                            return_token_type_ids=False)
        for (i, chat, layout), text, ids, offsets in zip(batch, texts, encoded["input_ids"], encoded["offset_mapping"]):
            learn = _learned(layout, chat, text, offsets)
            if learn is not None:
                yield i, ids, learn


def _exact_offsets(tokenizer) -> bool:
    """Whether the tokenizer gives each token's whole span in the text: a fast one, without a post-processor that
    trims spaces off the offsets (RoBERTa's, some ByteLevel ones: a token ' cold' would seem to start after its space,
    and a prompt ending in that space would seem to end between two tokens)."""
    if not tokenizer.is_fast:
        return False
    processor = tokenizer.backend_tokenizer.post_processor
    return processor is None or b'"trim_offsets":true' not in processor.__getstate__()  # its JSON definition


def _learned(layout: _Layout, chat: list[dict], text: str, offsets: list[tuple[int, int]]) -> np.ndarray | None:
    """Which tokens lie inside a learned span; None when the template wrote this chat other than its layout says
    (it altered a content) or a token crosses a span's edge (tokenized alone, the prompt would end differently)."""
    contents = [m["content"] for m in chat]
    if text != "".join(part for piece, content in zip(layout.pieces, contents + [""]) for part in (piece, content)):
        return None
    before = list(accumulate(map(len, contents), initial=0))  # content characters before message j
    learn = np.zeros(len(offsets), dtype=bool)
    for (template_a, messages_a), (template_b, messages_b) in layout.spans:
        a, b = template_a + before[messages_a], template_b + before[messages_b]
        # Offsets come in text order: a binary search finds the first token starting at or after each edge (made
        # into an array, the offsets would cost more than all the rest here), and the token before it must end there.
        first, stop = bisect_left(offsets, (a,)), bisect_left(offsets, (b,))
        if (first and offsets[first - 1][1] > a) or (stop and offsets[stop - 1][1] > b):
            return None
        learn[first:stop] = True
    return learn


def _cache_texts(chats: list[list[dict]], tokenizer) -> Iterator[str]:
    """What the token cache's key holds besides the tokenizer's vocabulary and rules and max_length: how chats are
    laid out and labelled here, the template and the special tokens it reads, and every message."""
    yield json.dumps([CACHE_FORMAT, PLAIN_PROMPT, tokenizer.chat_template, tokenizer.special_tokens_map,
                      tokenizer.eos_token_id], sort_keys=True)
    for chat in chats:
        for message in chat:
            yield message["role"]
            yield message["content"]
        yield "\x1d"  # not a role: where one chat ends is unambiguous


def prompt_ids(tokenizer, chat: list[dict]) -> list[int]:
    """The ids of a conversation so far, ending where the assistant's answer begins."""
    if tokenizer.chat_template:
        return _as_ids(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True))
    return tokenizer(plain_layout(chat))["input_ids"]


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special token(s) that close an assistant's turn, where generation should stop: those the chat template
    writes right after an answer (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`...), else the end-of-text token."""
    closing = _after_answer(tokenizer) or ""
    added = getattr(tokenizer, "added_tokens_decoder", {})  # special tokens some tokenizers do not list as such
    special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
    found = [i for i in tokenizer(closing, add_special_tokens=False)["input_ids"] if i in special]
    return found or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def _after_answer(tokenizer) -> str | None:
    """What the chat template writes right after an assistant's answer ('' for nothing); None without a template or
    when the template rewrites the answer."""
    if not tokenizer.chat_template:
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": ANSWER}],
                                         tokenize=False)
    return text[text.rindex(ANSWER) + len(ANSWER):] if ANSWER in text else None


def _end_for_unclosed_turns(tokenizer) -> list[int]:
    """[end-of-text] to learn after a chat's last answer when the template closes an answer with nothing (so the
    model still learns to stop); [] when it closes it (those tokens are learned with the turn) or there is no
    template (the plain layout ends with end-of-text)."""
    after = _after_answer(tokenizer)
    return [tokenizer.eos_token_id] if after is not None and not after.strip() and tokenizer.eos_token_id is not None \
        else []


def _template_ids(tokenizer, chat: list[dict]) -> list[int]:
    if tokenizer.chat_template:
        return _as_ids(tokenizer.apply_chat_template(chat, tokenize=True))
    answer = tokenizer(chat[-1]["content"], add_special_tokens=False)["input_ids"]
    return prompt_ids(tokenizer, chat[:-1]) + answer + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def plain_layout(chat: list[dict]) -> str:
    """Without a chat template: an optional system text, then the user's turn as the instruction."""
    if [m["role"] for m in chat if m["role"] != "system"] != ["user"]:
        raise DataError("multi-turn chats need a tokenizer with a chat template; this one has none: use one-turn "
                        "prompt/response data, or a model whose tokenizer has a template")
    system = "".join(f"{m['content']}\n\n" for m in chat if m["role"] == "system")
    return system + PLAIN_PROMPT.format(prompt=chat[-1]["content"])


def _as_ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def pack(data: Encoded, max_length: int, isolate: bool = True) -> Encoded:
    """Examples joined in order into sequences of at most max_length tokens (none is split). `isolate`: each token
    keeps its position within its own example (position_ids restart at 0), so the model masks attention to each
    example; the first token of every example is IGNORE (encode_chats), so none is predicted from its neighbour."""
    ids, labels, positions = [], [], []
    for x, y in zip(data.input_ids, data.labels):
        if ids and len(ids[-1]) + len(x) <= max_length:
            ids[-1] = np.concatenate([ids[-1], x])
            labels[-1] = np.concatenate([labels[-1], y])
            positions[-1] = np.concatenate([positions[-1], np.arange(len(x), dtype=np.int32)])
        else:
            ids.append(x)
            labels.append(y)
            positions.append(np.arange(len(x), dtype=np.int32))
    return Encoded(ids, None, labels, position_ids=positions if isolate else None)


def summarize(splits, data: dict[str, Encoded], max_length: int, packing: bool | str) -> tuple[dict, list[str]]:
    summary = {name: len(getattr(splits, name)) for name in SPLITS}
    summary["tokens"] = token_lengths({name: data[name].lengths for name in SPLITS}, max_length)
    summary["response_tokens"] = {name: int(sum((y != IGNORE).sum() for y in data[name].labels)) for name in SPLITS}
    if packing:
        summary["packed_train_sequences"] = len(data["train"])
    cut = {name: int((data[name].lengths >= max_length).sum()) for name in SPLITS if not
           (name == "train" and packing)}
    return summary, window_warning(cut, f"{{total}} examples fill the {max_length}-token window and are cut to it "
                                        f"({{per_split}}): their responses lose their ends; raise data.max_length")

