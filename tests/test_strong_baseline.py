"""The report's baselines are tuned on the validation split, never on test: the search picks the validation winner
(ties: the simpler model), every task's tuned row says what it chose, its validation score and its time, and the
feature tagger beats the most-frequent-tag baseline where context and word endings matter."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from ftune.config import load_config
from ftune.data.prepare import Splits
from ftune.tasks import TASKS, baselines, task_for
from ftune.tasks.tagging import baselines as tagging_baselines
from helpers import TINY_DATA, synthetic_reviews

CONSTANT = {"mean", "most_frequent_labels", "most_frequent_tag", "longer_answer", "all_good"}  # nothing to tune


class Always:
    """An estimator that predicts one class whatever it is shown."""

    def __init__(self, label: int):
        self.label = label

    def fit(self, x, y):
        return self

    def predict(self, x):
        return np.full(x.shape[0], self.label)


def review_splits(validation_label: int, test_label: int) -> Splits:
    """Real texts; every validation text labeled `validation_label` and every test text `test_label`."""
    frame = synthetic_reviews(60).rename(columns={"review": "text"})
    frame["label"] = (frame.pop("stars") == "pos").astype(int)
    return Splits(frame.iloc[:40].reset_index(drop=True), frame.iloc[40:50].assign(label=validation_label),
                  frame.iloc[50:].assign(label=test_label), ["neg", "pos"])


def test_the_search_keeps_the_validation_winner_not_the_test_one():
    x, y = sparse.csr_matrix(np.ones((4, 1))), np.zeros(4)
    truth = {"validation": np.zeros(4), "test": np.ones(4)}  # validation says class 0; test would say class 1
    choice = baselines.choose({"f": [x, x, x]}, {"always 1": lambda: Always(1), "always 0": lambda: Always(0)},
                              y, lambda model, m: model.predict(m), lambda p: np.mean(p == truth["validation"]))
    assert choice.chosen == "f, always 0" and choice.validation == 1.0 and (choice.test == 0).all()
    assert choice.seconds >= 0 and (choice.validation_outputs == 0).all()


def test_a_tie_goes_to_the_earlier_simpler_model_and_lower_can_be_better():
    x, y = sparse.csr_matrix(np.ones((3, 1))), np.zeros(3)
    grid = {"simple": lambda: Always(0), "complex": lambda: Always(0), "wrong": lambda: Always(2)}
    tied = baselines.choose({"f": [x, x, x]}, grid, y, lambda model, m: model.predict(m), lambda p: 1.0)
    assert tied.chosen == "f, simple"
    error = baselines.choose({"f": [x, x, x]}, grid, y, lambda model, m: model.predict(m),
                             lambda p: np.abs(p - 2).mean(), lower_is_better=True)
    assert error.chosen == "f, wrong" and error.validation == 0.0


def test_the_chosen_model_learns_from_train_only():
    """Validation chooses, as it does for the fine-tuned model; the texts the baseline learns are train's."""
    class Memory:
        def fit(self, x, y):
            self.seen = len(y)
            return self

        def predict(self, x):
            return np.full(x.shape[0], self.seen)

    x = sparse.csr_matrix(np.ones((3, 1)))
    choice = baselines.choose({"f": [x, x[:2], x]}, {"memory": Memory}, np.zeros(3), lambda model, m: model.predict(m),
                              lambda p: 0.0)
    assert (choice.validation_outputs == 3).all() and (choice.test == 3).all()


def test_the_classification_row_is_chosen_on_validation(monkeypatch):
    """With validation all one class and test all the other, the chosen model is validation's, and its test accuracy
    shows that test had no say."""
    monkeypatch.setattr(baselines, "classifier_grid",
                        lambda labels: {"always pos": lambda: Always(1), "always neg": lambda: Always(0)})
    task = task_for(load_config(overrides={"task": "classification"}))
    row = task.baselines(review_splits(validation_label=0, test_label=1), seed=0)["tfidf"]
    assert row["chosen"].endswith("always neg") and row["validation"] == 1.0 and row["accuracy"] == 0.0
    assert tuple(row["accuracy_ci95"]) == (0.0, 0.0)  # the same bootstrap as the fine-tuned row


def test_text_features_fit_once_and_skip_characters_on_long_texts(monkeypatch):
    splits = review_splits(0, 1)
    features = baselines.text_features(splits)
    assert list(features) == ["word n-grams", "word+char n-grams"]
    words, both = features["word n-grams"], features["word+char n-grams"]
    assert [m.shape[0] for m in words] == [40, 10, 10] and len({m.shape[1] for m in words}) == 1
    assert both[0].shape[1] > words[0].shape[1]
    monkeypatch.setattr(baselines, "CHAR_BUDGET", 10)  # the training texts hold more characters than that
    assert list(baselines.text_features(splits)) == ["word n-grams"]


def test_class_weights_are_tried_only_on_imbalanced_classes():
    balanced = baselines.classifier_grid(np.array([0, 1] * 10))
    skewed = baselines.classifier_grid(np.array([0] * 18 + [1] * 2))
    assert not any("balanced" in name for name in balanced)
    assert sum("balanced" in name for name in skewed) == len(balanced) == len(baselines.LOGISTIC_C + baselines.SVM_C)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_tuned_baseline_says_what_it_chose(name, tmp_path):
    data = TINY_DATA[name](tmp_path)
    task = task_for(load_config(overrides={"task": name, "tracking.backend": "none", **data.keys}))
    splits = task.load_splits(0)
    rows = task.baselines(splits, seed=0)
    tuned = {key: row for key, row in rows.items() if key not in CONSTANT}
    if not rows:
        pytest.skip(f"{name} has no baselines")
    assert tuned, f"{name}: no tuned baseline beside {sorted(rows)}"
    head = task.headline()
    for key, row in tuned.items():
        assert isinstance(row["chosen"], str) and row["chosen"], key
        assert math.isfinite(row["validation"]) and row["seconds"] >= 0, key
        low, high = row[f"{head}_ci95"]
        assert low <= high, key  # the interval the fine-tuned row has, by the same helper
        assert key in task.titles, f"{name}: the report names {key} by its title"


# --- tagging ----------------------------------------------------------------------------------------------------------

NOUNS = "dog cat house tree car river book city road song".split()
VERBS = "walk run jump sing read play cook paint swim climb".split()
ADVERBS = "slowly quickly quietly loudly happily sadly gently boldly calmly warmly".split()
AMBIGUOUS = ["run", "walk", "play"]


def tagged_sentences(n: int, seed: int, verbs: list[str], adverbs: list[str]) -> list[tuple[list[str], list[str]]]:
    """Determiner-noun-verb-adverb sentences, where an AMBIGUOUS word is a noun after "the" and a verb after "they",
    and words of each kind share an ending (-ly adverbs; -s, -ed and -ing verb forms)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < 0.25:
            rows.append((["the", rng.choice(AMBIGUOUS), "is", "here"], ["DT", "NN", "VBZ", "RB"]))
        elif rng.random() < 0.33:
            rows.append((["they", rng.choice(AMBIGUOUS), rng.choice(adverbs)], ["PRP", "VBP", "RB"]))
        else:
            ending, tag = rng.choice([("s", "VBZ"), ("ed", "VBD"), ("ing", "VBG")])
            rows.append((["the", rng.choice(NOUNS), rng.choice(verbs) + ending, rng.choice(adverbs)],
                         ["DT", "NN", tag, "RB"]))
    return rows


def tagged_splits() -> Splits:
    """Test verbs and adverbs the training split never has (their endings tell), and words whose tag the word
    before decides."""
    names = sorted({"DT", "NN", "VBZ", "RB", "PRP", "VBP", "VBD", "VBG"})

    def frame(rows):
        return pd.DataFrame({"tokens": [w for w, _ in rows], "tags": [[names.index(t) for t in ts] for _, ts in rows]})

    seen, unseen = (VERBS[:6], ADVERBS[:6]), (VERBS[6:], ADVERBS[6:])
    return Splits(frame(tagged_sentences(300, 0, *seen)), frame(tagged_sentences(60, 1, *seen)),
                  frame(tagged_sentences(200, 2, *unseen)), names)


def test_the_feature_tagger_beats_the_most_frequent_tag():
    splits = tagged_splits()
    rows = tagging_baselines(splits, seed=0)
    tagger, frequent = rows["feature_tagger"], rows["most_frequent_tag"]
    assert tagger["accuracy"] > frequent["accuracy"] + 0.1, (tagger["accuracy"], frequent["accuracy"])
    assert tagger["chosen"].startswith("word features, linear SVM, C=") and "of the" not in tagger["chosen"]
    assert tagger["n"] == frequent["n"] == len(splits.test)


def test_the_tagger_learns_from_a_capped_number_of_words(monkeypatch):
    monkeypatch.setattr(baselines, "TAGGER_WORDS", 200)
    splits = tagged_splits()
    tagger = tagging_baselines(splits, seed=0)["feature_tagger"]
    every = sum(map(len, splits.train["tokens"]))
    assert tagger["chosen"].endswith(f"of the {every:,} training words")
    learned = int(tagger["chosen"].split(", on ")[1].split(" of ")[0].replace(",", ""))
    assert 190 <= learned <= 200
