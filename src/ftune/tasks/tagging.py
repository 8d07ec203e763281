"""Token classification: a tag per word (part of speech, named entities), scored per word.

Words are tokenized into sub-word tokens; a word's tag sits on its first token, and the other
tokens either repeat it (task.label_all_subtokens) or take no part in the loss. Predictions
read each word's tag from its first token, so what is scored is exactly one tag per word.
A word with no token (beyond the window, or one the tokenizer drops whole, such as a zero-width
space) gets no tag and counts as wrong; so does a word whose tag is absent from train.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from ftune.data import Encoded
from ftune.data.builtin import check_builtin_task
from ftune.data.prepare import complete_splits, given_splits
from ftune.data.summary import SPLITS, token_lengths
from ftune.data.tagged import read_tagged, select_tagged
from ftune.data.tokenize import IGNORE
from ftune.data.validate import window_warning
from ftune.errors import ConfigError
from ftune.lazy import lazy
from ftune.tasks.base import Task, TaskOptions, class_weights, cross_entropy_sum
from ftune.tasks.baselines import tuned_tagger
from ftune.tasks.scoring import bootstrap_accuracy, softmax

pd = lazy("pandas")
torch = lazy("torch")

CONFUSION_TAGS = 10  # the report's confusion matrix: the most frequent tags
ENTITY_PREFIXES = ("B-", "I-", "E-", "S-", "L-", "U-")
BEYOND_WINDOW, NO_TOKENS = -1, -2  # predicted "tags" of words the model never saw: both are wrong


@dataclass
class TaggedEncoded(Encoded):
    """Encoded sentences plus what scoring per word needs."""

    word_ids: list[np.ndarray] = field(default_factory=list)  # the word of each token, -1 for special tokens
    word_tags: list[np.ndarray] | None = None  # each sentence's tag ids, for every word (also beyond the window)
    no_tokens: list[np.ndarray] | None = None  # with tags: which words the tokenizer turns into no token at all
    unseen_tags: list[str] = field(default_factory=list)  # names of the tag ids from len(labels): not in train

    def subset(self, indices: np.ndarray) -> "TaggedEncoded":
        pick = lambda items: None if items is None else [items[i] for i in indices]  # noqa: E731
        return TaggedEncoded(**vars(super().subset(indices)), word_ids=pick(self.word_ids),
                             word_tags=pick(self.word_tags), no_tokens=pick(self.no_tokens),
                             unseen_tags=self.unseen_tags)


class TaggingOptions(TaskOptions):
    name: Literal["token-classification"] = "token-classification"
    label_all_subtokens: bool = Field(False, description="every sub-token of a word carries its tag in the loss "
                                                         "(default: the first only; the rest are ignored)")


class TaggedWord(BaseModel):
    word: str
    tag: str | None = Field(description="null for a word beyond the model's window")
    score: float | None


class TaggedText(BaseModel):
    """A token-classification model's answer: the text's words (split at whitespace), each with its tag."""
    tokens: list[TaggedWord]
    tagged: str = Field(description="word/TAG pairs joined by spaces")


class Tagging(Task):
    name = "token-classification"
    description = "a tag per word: parts of speech, named entities (BIO tags)"
    Options = TaggingOptions
    Prediction = TaggedText
    peft_type = "TOKEN_CLS"  # peft keeps the new tagging head trainable and saved
    weighs_classes = True
    exportable = True  # logits per token; the predictor maps them to words as for the PyTorch model
    metrics = ("accuracy", "macro_f1", "entity_f1", "loss")  # entity_f1: only with BIO/BIOES tags
    note = ("Accuracy over all words (each tagged by its first sub-token; words beyond the window count as wrong), "
            "with the 95% bootstrap interval for the fine-tuned model.")
    unit = "sentences"
    titles = {"most_frequent_tag": "most frequent tag per word",
              "feature_tagger": "feature-based tagger (linear, tuned on validation)"}
    default_label_column = "tags"
    distills = True  # the teacher's logits per token
    weight: torch.Tensor | None = None

    def load_splits(self, seed: int):
        splits = load_splits(self.config, seed)
        if self.config.train.metric == "entity_f1" and not is_entity_scheme(splits.labels):
            raise ConfigError(f"train.metric=entity_f1 needs BIO/BIOES tags (B-PER, I-PER, O, ...); the tags of "
                              f"{self.config.data.train} ({', '.join(splits.labels[:6])}, ...) are not: choose "
                              f"train.metric=accuracy or macro_f1")
        return splits

    def encode_splits(self, splits, tokenizer) -> dict[str, Encoded]:
        return encode_splits(splits, tokenizer, self.config.data.max_length, self.options.label_all_subtokens)

    def summarize(self, splits, data: dict[str, Encoded]) -> tuple[dict, list[str]]:
        return summarize(splits, data, self.config.data.max_length)

    def load_model(self, source: str, labels: list[str], trust_remote_code: bool, method=None):
        from ftune.models import load_token_classifier

        return load_token_classifier(source, labels, trust_remote_code, method)

    def prepare_loss(self, train: Encoded, labels: list[str], device) -> None:
        if self.config.train.class_weights:
            self.weight = class_weights(np.concatenate(train.labels), len(labels), device)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return cross_entropy_sum(logits, batch["labels"], self.weight)

    def rows(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        return token_rows(logits, batch)

    def score(self, rows: list, data: TaggedEncoded, labels: list[str], interval_seed: int | None = None):
        return score(rows, data, labels, interval_seed)

    def baselines(self, splits, seed: int) -> dict:
        return baselines(splits, seed)

    def predictions(self, splits, outputs, labels: list[str]) -> pd.DataFrame:
        return word_predictions(splits, outputs, labels)

    def predict(self, predictor, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        return tag_texts(predictor, texts)


def load_splits(config, seed: int):
    check_builtin_task(config.data.train, Tagging.name)
    given = given_splits(config.data, read_tagged, select_tagged)
    labels = sorted({tag for tags in given["train"]["tags"] for tag in tags})
    # A tag that only held-out data has is normal (a rare tag), not an error: the model cannot output it, so its words
    # count as wrong, and summarize() warns. Such tags get the ids after the model's.
    unseen = sorted({tag for frame in given.values() for tags in frame["tags"] for tag in tags} - set(labels))
    index = {name: i for i, name in enumerate(labels + unseen)}
    given = {name: frame.assign(tags=[[index[t] for t in tags] for tags in frame["tags"]])
             for name, frame in given.items()}
    splits = complete_splits(given, config.data, seed, labels)
    splits.unseen_labels = unseen
    return splits


def encode_splits(splits, tokenizer, max_length: int, label_all_subtokens: bool) -> dict[str, Encoded]:
    encoded = {name: encode_words(getattr(splits, name), tokenizer, max_length, label_all_subtokens,
                                  n_tags=len(splits.labels)) for name in SPLITS}
    for data in encoded.values():
        data.unseen_tags = splits.unseen_labels
    return encoded


def encode_words(frame: pd.DataFrame, tokenizer, max_length: int, label_all_subtokens: bool = False,
                 n_tags: int | None = None) -> TaggedEncoded:
    """Sub-word ids for sentences given as word lists, each token labeled with its word's tag (or IGNORE; also for tag
    ids from `n_tags` on, the tags the model has no output for)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"token classification needs a fast tokenizer (it maps tokens to words); "
                          f"{type(tokenizer).__name__} is not one")
    enc = tokenizer(frame["tokens"].tolist(), is_split_into_words=True, truncation=True, max_length=max_length)
    ids, types, word_ids, labels = [], [], [], []
    tags = frame["tags"].tolist() if "tags" in frame else None
    for i, tokens in enumerate(enc["input_ids"]):
        words = np.asarray([-1 if w is None else w for w in enc.word_ids(i)], dtype=np.int64)
        ids.append(np.asarray(tokens, dtype=np.int32))
        word_ids.append(words)
        if "token_type_ids" in enc:
            types.append(np.asarray(enc["token_type_ids"][i], dtype=np.int8))
        if tags is not None:
            first = _first_tokens(words, len(tags[i]))
            keep = words >= 0 if label_all_subtokens else np.isin(np.arange(len(words)), first)
            token_tags = np.where(keep, np.asarray(tags[i], dtype=np.int64)[np.maximum(words, 0)], IGNORE)
            if n_tags is not None:
                token_tags[token_tags >= n_tags] = IGNORE
            labels.append(token_tags)
    if tags is None:
        return TaggedEncoded(ids, types or None, None, word_ids=word_ids)
    vocabulary = sorted({w for words in frame["tokens"] for w in words})
    empty = {w for w, t in zip(vocabulary, tokenizer(vocabulary, add_special_tokens=False)["input_ids"]) if not t}
    return TaggedEncoded(ids, types or None, labels, word_ids=word_ids,
                         word_tags=[np.asarray(t, dtype=np.int64) for t in tags],
                         no_tokens=[np.asarray([w in empty for w in words], dtype=bool) for words in frame["tokens"]])


def token_rows(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Each sentence's token logits, without its padding."""
    lengths = batch["attention_mask"].sum(1).tolist()
    logits = logits.float().cpu().numpy()
    return [logits[row, :n] for row, n in enumerate(lengths)]


def score(token_logits: list[np.ndarray], data: TaggedEncoded, labels: list[str], interval_seed: int | None = None
          ) -> tuple[dict, list[np.ndarray]]:
    """Per-word metrics (and the loss over the tokens that carry a tag), and each sentence's word logits."""
    nll, count = 0.0, 0
    for logits, token_tags in zip(token_logits, data.labels):
        tagged = token_tags[:len(logits)] != IGNORE
        log_probs = np.log(np.clip(softmax(logits[tagged].astype(np.float64)), 1e-12, None))
        nll -= log_probs[np.arange(tagged.sum()), token_tags[:len(logits)][tagged]].sum()
        count += int(tagged.sum())
    truth = data.word_tags
    word_logits = [_word_logits(logits, words, len(t)) for logits, words, t in zip(token_logits, data.word_ids, truth)]
    predicted = [np.where(dropped, NO_TOKENS, _predicted(w)) for w, dropped in zip(word_logits, data.no_tokens)]
    metrics = tagging_metrics(truth, predicted, labels, interval_seed, unseen=data.unseen_tags)
    return {"loss": nll / max(count, 1), **metrics}, word_logits


def tagging_metrics(truth: list[np.ndarray], predicted: list[np.ndarray], names: list[str],
                    interval_seed: int | None = None, unseen: list[str] = ()) -> dict:
    """Word accuracy, macro-F1 over the model's tags, per-tag scores, the confusion of the most frequent tags, and for
    BIO/BIOES tags entity-level precision/recall/F1 (seqeval). Words the model gave no tag (predicted BEYOND_WINDOW
    or NO_TOKENS) are wrong, and so are words whose tag is one of the `unseen` (truth ids from len(names) on)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    y, p = np.concatenate(truth), np.concatenate(predicted)
    ids = list(range(len(names)))
    every = list(names) + list(unseen)
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=list(range(len(every))), zero_division=0)
    top = [int(i) for i, _ in Counter(y.tolist()).most_common(CONFUSION_TAGS)]
    metrics = {
        "accuracy": float((y == p).mean()),
        "macro_f1": float(f1_score(y, p, labels=ids, average="macro", zero_division=0)),
        "per_class": {every[i]: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                                 "support": int(support[i])} for i in range(len(every)) if support[i]},
        "confusion": confusion_matrix(y, p, labels=top).tolist(), "confusion_labels": [every[i] for i in top],
        "n": len(truth), "words": int(len(y)), "words_beyond_window": int((p == BEYOND_WINDOW).sum()),
        "words_without_tokens": int((p == NO_TOKENS).sum()), "words_with_unseen_tags": int((y >= len(names)).sum()),
    }
    if interval_seed is not None:
        metrics["accuracy_ci95"] = bootstrap_accuracy((y == p).astype(np.float64), seed=interval_seed)
    if is_entity_scheme(names):
        from seqeval.metrics import f1_score as entity_f1, precision_score, recall_score

        tag = lambda seq: [every[i] if i >= 0 else "O" for i in seq]  # noqa: E731
        gold, guess = [tag(t) for t in truth], [tag(s) for s in predicted]
        metrics.update({f"entity_{name}": float(score(gold, guess, zero_division=0)) for name, score in
                        (("precision", precision_score), ("recall", recall_score), ("f1", entity_f1))})
    return metrics


def is_entity_scheme(names: list[str]) -> bool:
    """BIO / BIOES tags (O, B-PER, I-PER, ...): entity spans, scored as wholes."""
    return any(n.startswith(ENTITY_PREFIXES) for n in names) and all(n == "O" or n.startswith(ENTITY_PREFIXES)
                                                                      for n in names)


def baselines(splits, seed: int = 0) -> dict:
    """The classic tagging baseline, each word's most frequent tag in train (unseen words get the commonest tag); and
    a linear tagger over each word's features with C chosen on validation word accuracy (tasks.baselines), with the
    interval the fine-tuned model's accuracy has. That needs two tags in train to tell apart."""
    counts: dict[str, Counter] = {}
    for words, tags in zip(splits.train["tokens"], splits.train["tags"]):
        for word, tag in zip(words, tags):
            counts.setdefault(word, Counter())[tag] += 1
    overall = Counter(t for tags in splits.train["tags"] for t in tags).most_common(1)[0][0]
    best = {word: c.most_common(1)[0][0] for word, c in counts.items()}
    truth = [np.asarray(t) for t in splits.test["tags"]]
    predicted = [np.asarray([best.get(w, overall) for w in words]) for words in splits.test["tokens"]]
    found = {"most_frequent_tag": tagging_metrics(truth, predicted, splits.labels, unseen=splits.unseen_labels)}
    if len(splits.labels) > 1:
        choice = tuned_tagger(splits)
        found["feature_tagger"] = {**tagging_metrics(truth, choice.test, splits.labels, seed,
                                                     unseen=splits.unseen_labels), **choice.fields()}
    return found


def summarize(splits, data: dict[str, Encoded], max_length: int) -> tuple[dict, list[str]]:
    """Sentences and words per split, words per tag, sub-word tokens per sentence, and words cut at the window."""
    summary = {name: len(getattr(splits, name)) for name in SPLITS}
    summary["classes"] = {name: _tag_counts(getattr(splits, name), splits.labels) for name in SPLITS}
    summary["tokens"] = token_lengths({name: data[name].lengths for name in SPLITS}, max_length)
    no_tag = {name: [_first_tokens(w, len(t)) < 0 for t, w in zip(getattr(splits, name)["tokens"], data[name].word_ids)]
              for name in SPLITS}
    dropped = {name: int(sum(d.sum() for d in data[name].no_tokens)) for name in SPLITS}
    cut = {name: int(sum(n.sum() for n in no_tag[name])) - dropped[name] for name in SPLITS}
    summary["words_beyond_window"] = cut
    found = window_warning(cut, f"{{total}} words lie beyond the {max_length}-token window ({{per_split}}): "
                                f"they get no tag and count as wrong; raise data.max_length")
    if any(dropped.values()):
        example = next(w for name in SPLITS for words, d in zip(getattr(splits, name)["tokens"], data[name].no_tokens)
                       for w, empty in zip(words, d) if empty)
        per_split = ", ".join(f"{name} {n}" for name, n in dropped.items() if n)
        found.append(f"{sum(dropped.values())} words become no token at all for this tokenizer ({per_split}; e.g. "
                     f"{example!r}): they get no tag and count as wrong; remove such characters from the data")
    unseen = {name: Counter(splits.unseen_labels[t - len(splits.labels)] for tags in getattr(splits, name)["tags"]
                            for t in tags if t >= len(splits.labels)) for name in SPLITS}
    if any(unseen.values()):
        per_split = "; ".join(f"{name}: " + ", ".join(f"{tag} {n}" for tag, n in counts.most_common(5))
                              for name, counts in unseen.items() if counts)
        found.append(f"{sum(sum(c.values()) for c in unseen.values())} words have tags that never occur in train "
                     f"({per_split}): the model cannot output them, so they count as wrong; add training sentences "
                     f"with these tags for it to learn them")
    return summary, found


def word_predictions(splits, word_logits: list[np.ndarray], labels: list[str]) -> pd.DataFrame:
    """A row per test word: the word in its context, its true tag, the predicted one and that tag's probability."""
    rows = []
    names = labels + splits.unseen_labels
    for s, (words, tags, logits) in enumerate(zip(splits.test["tokens"], splits.test["tags"], word_logits)):
        scored = ~np.isnan(logits).any(-1)
        probs = softmax(np.nan_to_num(logits.astype(np.float64)))
        for i, (word, tag) in enumerate(zip(words, tags)):
            context = " ".join(words[max(0, i - 5):i] + [f"[{word}]"] + words[i + 1:i + 6])
            rows.append({"sentence": s, "word": word, "text": context, "label": names[tag],
                         "predicted": labels[int(probs[i].argmax())] if scored[i] else "",
                         "score": float(probs[i].max()) if scored[i] else 0.0})
    return pd.DataFrame(rows)


def tag_texts(predictor, texts: list[str]) -> list[dict]:
    """Tags for the words of each text (split at whitespace): word/tag pairs with the tag's probability."""
    words = [text.split() for text in texts]
    data = encode_words(pd.DataFrame({"tokens": words}), predictor.tokenizer, predictor.max_length)
    results = []
    for sentence, logits, ids in zip(words, predictor.outputs(data, token_rows), data.word_ids):
        word_logits = _word_logits(logits, ids, len(sentence))
        scored = ~np.isnan(word_logits).any(-1)
        probs = softmax(np.nan_to_num(word_logits.astype(np.float64)))
        tokens = [{"word": w, "tag": predictor.labels[int(probs[i].argmax())] if scored[i] else None,
                   "score": float(probs[i].max()) if scored[i] else None} for i, w in enumerate(sentence)]
        results.append({"tokens": tokens, "tagged": " ".join(f"{t['word']}/{t['tag']}" for t in tokens)})
    return results


def _first_tokens(word_ids: np.ndarray, n_words: int) -> np.ndarray:
    """Position of each of the `n_words` words' first token; -1 for a word with none (beyond the window, or dropped
    whole by the tokenizer: then the words after it keep their own positions, not the next word's)."""
    first = np.full(n_words, -1, dtype=np.int64)
    words, positions = np.unique(word_ids, return_index=True)
    first[words[words >= 0]] = positions[words >= 0]
    return first


def _word_logits(token_logits: np.ndarray, word_ids: np.ndarray, n_words: int) -> np.ndarray:
    """Each word's logits, read at its first token; a row of NaN for a word with no token."""
    first = _first_tokens(word_ids, n_words)
    out = np.full((n_words, token_logits.shape[-1]), np.nan, dtype=token_logits.dtype)
    out[first >= 0] = token_logits[first[first >= 0]]
    return out


def _predicted(word_logits: np.ndarray) -> np.ndarray:
    """Each word's tag id; BEYOND_WINDOW for a word without logits."""
    scored = ~np.isnan(word_logits).any(-1)
    return np.where(scored, np.nan_to_num(word_logits).argmax(-1), BEYOND_WINDOW)


def _tag_counts(frame: pd.DataFrame, names: list[str]) -> dict[str, int]:
    counts = Counter(t for tags in frame["tags"] for t in tags)
    return {name: int(counts.get(i, 0)) for i, name in enumerate(names)}

