"""Settings the config leaves unset are chosen from the data (ftune.recipe): the rule, and a run that uses it."""

from __future__ import annotations

import json

import pytest

import ftune
from ftune import recipe
from helpers import synthetic_reviews
from ftune.config import default_learning_rate, load_config


def test_unset_epochs_stay_unset_until_a_run_sees_the_data():
    assert load_config().train.epochs is None
    assert load_config(overrides=["train.epochs=2"]).train.epochs == 2


@pytest.mark.parametrize("texts", [16, 100, 480, 1_000, 2_880, 10_000, 30_000, 200_000])
def test_the_step_count_is_what_the_rule_holds(texts):
    train = load_config().train
    epochs, reason = recipe.choose_epochs(texts, train)
    steps = epochs * recipe.steps_per_epoch(texts, train)
    assert 1 <= epochs <= recipe.MAX_EPOCHS and f"{epochs} epochs" in reason
    if epochs == recipe.MAX_EPOCHS:  # a split of a few dozen texts: the passes stop at the cap
        assert steps < recipe.MIN_STEPS and "capped" in reason
    elif epochs > recipe.DEFAULT_EPOCHS:
        assert recipe.MIN_STEPS <= steps < recipe.MIN_STEPS + recipe.steps_per_epoch(texts, train)
    elif epochs < recipe.DEFAULT_EPOCHS or steps > recipe.MAX_STEPS:
        assert steps <= recipe.MAX_STEPS or epochs == 1
    else:
        assert recipe.MIN_STEPS <= steps <= recipe.MAX_STEPS


def test_a_small_split_gets_more_passes_and_a_large_one_fewer():
    train = load_config().train
    assert recipe.choose_epochs(480, train)[0] == 20  # 15 steps an epoch: 300 steps
    assert recipe.choose_epochs(2_880, train)[0] == 4  # 90 an epoch: 3 would be 270
    assert recipe.choose_epochs(5_000, train)[0] == 3
    assert recipe.choose_epochs(100_000, train)[0] == 1  # 3,125 an epoch


def test_the_batch_processes_and_accumulation_count():
    small = load_config(overrides=["train.batch_size=8"]).train
    accumulated = load_config(overrides=["train.batch_size=8", "train.gradient_accumulation_steps=4"]).train
    assert recipe.steps_per_epoch(480, small) == 60
    assert recipe.steps_per_epoch(480, accumulated) == recipe.steps_per_epoch(480, small, processes=4) == 15


def test_resolved_is_a_copy_and_leaves_set_values(tiny_config):
    config = tiny_config(**{"train.epochs": None})
    chosen = recipe.resolved(config, 480)
    assert config.train.epochs is None and chosen.train.epochs == 10  # batch 16: 30 steps an epoch
    assert chosen._chosen["epochs"]["value"] == 10 and "300" in chosen._chosen["epochs"]["reason"]
    assert recipe.resolved(tiny_config(**{"train.epochs": 2}), 480)._chosen == {}


def test_a_run_with_epochs_unset_says_its_choice_and_keeps_it(tiny_config, tmp_path, capsys):
    config = tiny_config(**{"train.epochs": None, "train.batch_size": 128, "data.max_train_samples": 120,
                            "train.baselines": False})
    run = ftune.train(config)
    written = load_config(str(run.path / "config.yaml"))
    chosen = json.loads((run.path / "run.json").read_text())["chosen_from_data"]
    assert written.train.epochs == chosen["epochs"]["value"] == recipe.MAX_EPOCHS  # 1 step an epoch: capped
    assert json.loads((run.path / "metrics.json").read_text())["train"]["steps"] == recipe.MAX_EPOCHS
    printed = capsys.readouterr().err
    assert f"epochs {recipe.MAX_EPOCHS}: chosen from the data" in printed
    assert f"train.epochs {recipe.MAX_EPOCHS}, chosen from the data" in (run.path / "report.md").read_text()
    assert config.train.epochs is None  # the caller's config is not changed
    # 120 texts over the tiny reviews' 2 labels: few a label, so the method is chosen too, and kept
    assert written.method.name == chosen["method"]["value"] == "contrastive" and config.method.name == "full"
    assert "method contrastive: chosen from the data" in printed and "--method sets another" in printed


def test_few_texts_a_label_get_the_contrastive_method_unless_the_config_names_one(tiny_config):
    config = tiny_config()
    chosen = recipe.resolved(config, 120, classes=2)
    assert chosen.method.name == "contrastive" and config.method.name == "full"
    assert chosen._chosen["method"]["key"] == "--method" and "120 training texts over 2 labels" in \
        chosen._chosen["method"]["reason"]
    assert recipe.resolved(config, 2 * recipe.FEW_PER_CLASS + 1, classes=2).method.name == "full"
    assert recipe.resolved(tiny_config(**{"method.name": "full"}), 120, classes=2).method.name == "full"
    assert recipe.resolved(tiny_config(task="regression"), 20).method.name == "full"
    student = tiny_config(**{"distill.teacher": "runs/teacher"})
    assert recipe.resolved(student, 120, classes=2).method.name == "full"  # it learns from the teacher's answers
    unset_rate = load_config(overrides={"data.train": "mr"})
    assert recipe.resolved(unset_rate, 16, classes=2).train.learning_rate == \
        default_learning_rate("classification", "contrastive")
    assert recipe.left_to_data(config) == ("method.",)
    assert recipe.left_to_data(unset_rate) == ("train.epochs", "method.")


@pytest.mark.e2e
def test_a_validation_split_too_small_to_choose_by_keeps_the_last_weights(tiny_config, tmp_path):
    synthetic_reviews(80).to_csv(tmp_path / "few.csv", index=False)  # 16 test, 7 validation texts
    run = ftune.train(tiny_config(**{"data.train": str(tmp_path / "few.csv"), "train.epochs": 4,
                                     "method.name": "full"}), quiet=True)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["validation"]["kept"] == "last" and metrics["validation"]["best_step"] == metrics["train"]["steps"]
    assert "The last weights are kept and scored: the validation split has fewer than 30 texts" in \
        (run.path / "report.md").read_text()
    assert recipe.chooses_checkpoint(recipe.MIN_VALIDATION) and not recipe.chooses_checkpoint(recipe.MIN_VALIDATION - 1)
