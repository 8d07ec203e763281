"""The simple models every fine-tuned one must beat, scored on the same test split: a small grid of linear models
over TF-IDF features (or, for tagging, over each word's features), the one with the best validation score on the
task's headline kept and only then scored on test, so the comparison is with a tuned classical model, never one
picked by its test score; and the constant label set.

Each vectorizer is fitted once on the training split and every model of the grid reuses its matrices. The grid stays
a few seconds on thousands of texts: character n-grams only where the training texts are short enough
(CHAR_BUDGET), class weights only where the classes are imbalanced, C values where each model is good on TF-IDF."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from ftune.lazy import lazy
from ftune.tasks.scoring import micro_f1

pd = lazy("pandas")
sk_linear = lazy("sklearn.linear_model")
sk_multiclass = lazy("sklearn.multiclass")
sk_pipeline = lazy("sklearn.pipeline")
sk_svm = lazy("sklearn.svm")
sk_text = lazy("sklearn.feature_extraction.text")
sk_features = lazy("sklearn.feature_extraction")
sparse = lazy("scipy.sparse")

SPLITS = ("train", "validation", "test")
CHAR_BUDGET = 1_000_000  # character n-grams are tried up to this many training characters: counting them costs
# about a second per million, and on long documents word n-grams already carry what they add
BALANCE_FROM = 1.5  # class weights are tried when the largest training class is this many times the smallest
LOGISTIC_C = (1.0, 10.0, 100.0)  # TF-IDF rows have unit norm: logistic regression wants little regularization...
SVM_C = (0.1, 0.3, 1.0)  # ...a linear SVM more (its fits also slow down sharply above C=1)
RIDGE_ALPHA = (0.1, 1.0, 10.0, 100.0)
TAGGER_C = (0.1, 0.3, 1.0)
TAGGER_WORDS = 100_000  # the feature tagger learns from at most this many training words: its fit grows faster
# than linearly with them (oanc-pos on 2 busy cores: 22 s and 95.8% here; all 260,000 words 54 s and 96.9%)
SEED = 0  # liblinear's coordinate order: fixed, so a baseline is the same for every train.seed on one split
WORD_NGRAMS = {"ngram_range": (1, 2)}  # the two TF-IDF feature sets: text_features fits them, fit_chosen again
CHAR_NGRAMS = {"analyzer": "char_wb", "ngram_range": (2, 5), "min_df": 2}


@dataclass
class Choice:
    """The validation winner of a grid: what it is, its validation score, its outputs on the test split."""

    chosen: str
    validation: float
    test: np.ndarray | list
    seconds: float  # the whole search: features, every fit, the winner's test outputs
    validation_outputs: np.ndarray | None = None  # what `score` read (e.g. probabilities to fix thresholds from)

    def fields(self) -> dict:
        """What a baseline's metrics gain: the chosen model in words, its validation headline, the search's time."""
        return {"chosen": self.chosen, "validation": self.validation, "seconds": round(self.seconds, 2)}


def choose(features: dict[str, list], grid: dict[str, Callable], y, output: Callable, score: Callable[..., float],
           lower_is_better: bool = False, started: float | None = None) -> Choice:
    """Each model of `grid` (its description -> a new estimator) fitted on each feature set's training matrix
    (`features`: name -> [train, validation, test] matrices) with the training targets `y`; the one whose validation
    outputs (`output(model, matrix)`) get the best `score`, and its test outputs. Both are ordered simplest first and
    a tie keeps the earlier, so a tie goes to the simpler model. The winner is not fitted again on train+validation:
    it learns from the texts the fine-tuned model learns from, and validation only chooses, as it does for the model.
    `started`: when the caller began (the features' time)."""
    started = time.perf_counter() if started is None else started
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence at the weakest regularization, constant labels: nothing to act on
        for name, (train, validation, test) in features.items():
            for description, make in grid.items():
                model = make().fit(train, y)
                outputs = output(model, validation)
                value = float(score(outputs))
                if best is None or (value < best[0] if lower_is_better else value > best[0]):
                    best = (value, f"{name}, {description}", model, test, outputs)
        value, chosen, model, test, outputs = best
        tested = output(model, test)
    return Choice(chosen, value, tested, time.perf_counter() - started, outputs)


# --- texts ----------------------------------------------------------------------------------------------------------

def joined_texts(frame: pd.DataFrame) -> list[str]:
    """A split's texts as the baselines read them: a text pair joined with [SEP]."""
    if "text_pair" in frame:
        return (frame["text"] + " [SEP] " + frame["text_pair"]).tolist()
    return frame["text"].tolist()


def text_features(splits) -> dict[str, list]:
    """{name: [train, validation, test] TF-IDF matrices}: word 1-2-grams; and where the training texts hold at most
    CHAR_BUDGET characters, those beside character 2-5-grams within words (what a FeatureUnion of the two gives)."""
    texts = [joined_texts(getattr(splits, split)) for split in SPLITS]
    words = _tfidf(texts, **WORD_NGRAMS)
    features = {"word n-grams": words}
    if sum(map(len, texts[0])) <= CHAR_BUDGET:
        chars = _tfidf(texts, **CHAR_NGRAMS)
        features["word+char n-grams"] = [sparse.hstack(pair, format="csr") for pair in zip(words, chars)]
    return features


def _tfidf(texts: list[list[str]], **settings) -> list:
    vectorizer = sk_text.TfidfVectorizer(sublinear_tf=True, **settings)
    return [vectorizer.fit_transform(texts[0]), *(vectorizer.transform(split) for split in texts[1:])]


def logistic(c: float, weight: str | None = None):
    """Logistic regression, one per class against the rest: liblinear's dual solver, fast where features outnumber
    texts (TF-IDF)."""
    return sk_multiclass.OneVsRestClassifier(sk_linear.LogisticRegression(
        C=c, solver="liblinear", dual=True, max_iter=1000, class_weight=weight, random_state=SEED))


def linear_svm(c: float, weight: str | None = None):
    return sk_svm.LinearSVC(C=c, dual=True, class_weight=weight, random_state=SEED)


def classifier_grid(labels: np.ndarray) -> dict[str, Callable]:
    """Logistic regression and a linear SVM over their C values; with class weights too where the classes are
    imbalanced (on balanced classes the weights are about 1: the same fits again)."""
    counts = np.bincount(labels)
    weights = [None, "balanced"] if counts.max() >= BALANCE_FROM * counts[counts > 0].min() else [None]
    return {f"{name}, C={c:g}{', balanced' if weight else ''}": partial(make, c, weight)
            for weight in weights for name, make, cs in (("logistic regression", logistic, LOGISTIC_C),
                                                         ("linear SVM", linear_svm, SVM_C)) for c in cs}


def tuned_classifier(splits, score: Callable[[np.ndarray, np.ndarray], float], lower_is_better: bool = False
                     ) -> Choice:
    """A class id per test text, from the model of the grid (text features x classifier_grid) whose validation
    predictions get the best `score(truth, predicted)`."""
    started = time.perf_counter()
    y, truth = splits.train["label"].to_numpy(), splits.validation["label"].to_numpy()
    return choose(text_features(splits), classifier_grid(y), y, lambda model, x: model.predict(x),
                  lambda predicted: score(truth, predicted), lower_is_better, started)


def fit_chosen(splits, chosen: str):
    """The model `tuned_classifier` chose (its Choice.chosen), fitted again on the same training split as one
    scikit-learn Pipeline(FeatureUnion of its vectorizers, classifier) that reads raw texts (joined_texts): every
    fit is deterministic, so it predicts as the chosen one did. None where `chosen` names no model of this grid."""
    features, _, description = chosen.partition(", ")
    vectorizers = {"word n-grams": [("words", WORD_NGRAMS)],
                   "word+char n-grams": [("words", WORD_NGRAMS), ("chars", CHAR_NGRAMS)]}.get(features)
    y = splits.train["label"].to_numpy()
    make = classifier_grid(y).get(description)
    if vectorizers is None or make is None:
        return None
    union = sk_pipeline.FeatureUnion([(name, sk_text.TfidfVectorizer(sublinear_tf=True, **settings))
                                      for name, settings in vectorizers])  # columns in text_features' order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in choose: convergence at the weakest regularization
        return sk_pipeline.Pipeline([("features", union), ("model", make())]).fit(joined_texts(splits.train), y)


def tuned_ridge(splits) -> Choice:
    """A number per test text, from ridge regression over the text features with the alpha of the best validation
    RMSE."""
    started = time.perf_counter()
    y, truth = (getattr(splits, split)["label"].to_numpy(dtype=np.float64) for split in ("train", "validation"))
    grid = {f"ridge regression, alpha={a:g}": partial(sk_linear.Ridge, alpha=a) for a in reversed(RIDGE_ALPHA)}
    rmse = lambda predicted: np.sqrt(np.mean((predicted - truth) ** 2))  # noqa: E731
    return choose(text_features(splits), grid, y, lambda model, x: model.predict(x).astype(np.float64), rmse,
                  lower_is_better=True, started=started)


def tuned_one_vs_rest(splits, truth: np.ndarray, validate: Callable[[np.ndarray], float]) -> Choice:
    """Each label's probability per test text, from one logistic regression per label over the text features, fitted
    on `truth` (the training split's (texts, labels) 0/1 matrix), with the C whose validation probabilities get the
    best `validate(probabilities)`. A label every training text has (or none has) gets a constant probability."""
    started = time.perf_counter()
    grid = {f"one-vs-rest logistic regression, C={c:g}": partial(logistic, c) for c in LOGISTIC_C}
    return choose(text_features(splits), grid, np.asarray(truth, bool).astype(np.int64),
                  lambda model, x: model.predict_proba(x), validate, started=started)


def most_frequent_labels(truth: np.ndarray) -> np.ndarray:
    """The constant label set: the m most frequent labels of `truth` (ties: the first label), m from 1 to every
    label, whichever scores the best micro-F1 on `truth` itself (ties: the fewest labels)."""
    truth = np.asarray(truth, bool)
    order = np.argsort(-truth.sum(0), kind="stable")
    best, best_score = None, -1.0
    for m in range(1, truth.shape[1] + 1):
        chosen = np.zeros(truth.shape[1], bool)
        chosen[order[:m]] = True
        score = micro_f1(truth, np.broadcast_to(chosen, truth.shape))
        if score > best_score + 1e-12:
            best, best_score = chosen, score
    return best


# --- pairs of answers -----------------------------------------------------------------------------------------------

def tuned_pairwise(splits) -> Choice:
    """A classical reward model: per test pair, > 0 where it prefers the chosen answer (0: a tie). Logistic regression
    on the difference of the two answers' TF-IDF features (each answer read with its prompt's messages, word
    1-2-grams, the vocabulary of the training pairs), fitted on the training pairs both ways round, with the C of the
    best validation accuracy. `splits` hold chats in columns `chosen` and `rejected` (ftune.tasks.preference)."""
    started = time.perf_counter()
    vectorizer = sk_text.TfidfVectorizer(sublinear_tf=True, **WORD_NGRAMS)
    vectorizer.fit(chat_texts(splits.train["chosen"]) + chat_texts(splits.train["rejected"]))
    diffs = [vectorizer.transform(chat_texts(getattr(splits, split)["chosen"])) -
             vectorizer.transform(chat_texts(getattr(splits, split)["rejected"])) for split in SPLITS]
    both_ways = sparse.vstack([diffs[0], -diffs[0]], format="csr")
    y = np.r_[np.ones(diffs[0].shape[0], np.int64), np.zeros(diffs[0].shape[0], np.int64)]
    grid = {f"pairwise logistic regression, C={c:g}": partial(logistic, c) for c in LOGISTIC_C}
    return choose({"word n-grams": [both_ways, *diffs[1:]]}, grid, y,
                  lambda model, x: model.decision_function(x).ravel(), pairwise_accuracy, started=started)


def chat_texts(chats) -> list[str]:
    """Each chat (a list of {role, content} messages) as one text for TF-IDF: its messages' contents, joined."""
    return [" ".join(m["content"] for m in chat) for chat in chats]


def pairwise_accuracy(margins: np.ndarray) -> float:
    """The share of pairs whose chosen answer scores higher; a tie counts half (50% is chance)."""
    margins = np.asarray(margins, dtype=np.float64)
    return float(((margins > 0) + 0.5 * (margins == 0)).mean()) if len(margins) else 0.5


# --- tags -----------------------------------------------------------------------------------------------------------

def tuned_tagger(splits) -> Choice:
    """A tag id per test word (a list of arrays, one per sentence): a linear SVM over each word's features
    (word_features), learned from at most TAGGER_WORDS training words, with the C of the best validation word
    accuracy."""
    started = time.perf_counter()
    train = capped(splits.train, TAGGER_WORDS)
    vectorizer = sk_features.DictVectorizer()
    matrices = [vectorizer.fit_transform(token_dicts(train))] + [
        vectorizer.transform(token_dicts(getattr(splits, split))) for split in ("validation", "test")]
    matrices = [_int32(m) for m in matrices]  # liblinear takes only 32-bit indices; DictVectorizer gives 64
    y, truth = (np.concatenate([np.asarray(t, dtype=np.int64) for t in frame["tags"]] or [np.zeros(0, np.int64)])
                for frame in (train, splits.validation))
    grid = {f"linear SVM, C={c:g}": partial(linear_svm, c) for c in TAGGER_C}
    choice = choose({"word features": matrices}, grid, y, lambda model, x: model.predict(x),
                    lambda predicted: np.mean(predicted == truth) if len(truth) else np.nan, started=started)
    words = [len(tokens) for tokens in splits.test["tokens"]]
    choice.test = np.split(choice.test, np.cumsum(words)[:-1])
    learned, every = sum(map(len, train["tokens"])), sum(map(len, splits.train["tokens"]))
    if learned < every:
        choice.chosen += f", on {learned:,} of the {every:,} training words"
    return choice


def capped(frame: pd.DataFrame, words: int) -> pd.DataFrame:
    """Whole sentences of `frame`, in a fixed random order, up to about `words` words (all of them if fewer)."""
    order = np.random.default_rng(SEED).permutation(len(frame))
    lengths = frame["tokens"].map(len).to_numpy()[order]
    keep = order[:max(1, np.searchsorted(np.cumsum(lengths), words, side="right"))]
    return frame.iloc[np.sort(keep)]


def word_features(word: str) -> list[str]:
    """What a word says of its tag by itself: the word lowercased, its last 1-3 and first 1-2 letters, its shape."""
    low = word.lower()
    found = [f"w={low}", f"s1={low[-1:]}", f"s2={low[-2:]}", f"s3={low[-3:]}", f"p1={low[:1]}", f"p2={low[:2]}"]
    shape = {"title": word.istitle(), "upper": word.isupper(), "digit": any(c.isdigit() for c in word),
             "hyphen": "-" in word}
    return found + [name for name, holds in shape.items() if holds]


def token_dicts(frame: pd.DataFrame) -> list[dict]:
    """Each word's features (word_features, computed once per distinct word) and its neighbours': the previous and
    next word lowercased and their last 3 letters."""
    own: dict[str, list[str]] = {}
    rows = []
    for words in frame["tokens"]:
        low = ["<s>"] + [w.lower() for w in words] + ["</s>"]
        for i, word in enumerate(words):
            found = own.get(word) or own.setdefault(word, word_features(word))
            before, after = low[i], low[i + 2]
            rows.append(dict.fromkeys(found + [f"-1w={before}", f"+1w={after}", f"-1s3={before[-3:]}",
                                               f"+1s3={after[-3:]}"], 1))
    return rows


def _int32(matrix):
    return sparse.csr_matrix((matrix.data, matrix.indices.astype(np.int32), matrix.indptr.astype(np.int32)),
                             shape=matrix.shape)
