"""The diagnosis reads the run's loss curves: a loss still falling at the end asks for more steps, a flat one for a
higher rate within the method's ceiling, a rising one for a lower rate; and the suggested retry does better."""

import json
import re
import shlex

import pytest

import ftune
from ftune.diagnosis import MAX_RATE, diagnose, lines
from helpers import entity_sentences, ftune_cli

TAGGING = {"metrics": ["accuracy", "macro_f1", "entity_f1", "loss"], "lower_is_better": ["loss"],
           "titles": {"most_frequent_tag": "most frequent tag per word"}}


def run(accuracy, ci, base, baseline, steps, evaluations=(), start=None, trained=(), baseline_name="tfidf"):
    """metrics.json and the metrics.jsonl history of a finished run: `evaluations` (validation accuracy, validation
    loss) per evaluation, `start` the validation loss before training, `trained` the logged training losses."""
    history = [{"step": steps * (i + 1) // len(evaluations), "epoch": i + 1,
                "validation": {"accuracy": a, "loss": loss}} for i, (a, loss) in enumerate(evaluations)]
    metrics = {"scores": TAGGING,
               "test": {"finetuned": {"accuracy": accuracy, "accuracy_ci95": list(ci)},
                        "base_model": {"accuracy": base}, baseline_name: {"accuracy": baseline}},
               "validation": {"metric": "accuracy", "history": history,
                              "base_model": {"loss": start} if start is not None else {}},
               "train": {"steps": steps}}
    logged = [{"type": "train", "step": (i + 1) * max(1, steps // max(len(trained), 1)), "loss": loss}
              for i, loss in enumerate(trained)]
    return metrics, logged


def config(method="full", lr=5e-5, epochs=3):
    return {"train": {"learning_rate": lr, "warmup_ratio": 0.1, "epochs": epochs}, "method": {"name": method}}


def rate_in(found: dict) -> float | None:
    """The learning rate the `try` line suggests, if it suggests one."""
    match = re.search(r"train\.learning_rate=(\S+)", found["try"] or "")
    return float(match.group(1)) if match else None


def test_a_tagger_stopped_while_its_loss_still_fell_is_told_too_few_steps_and_given_more_epochs():
    # 800 sentences, 69 steps at 5e-5: 56.6% against the most-frequent-tag baseline's 78.8%, the loss falling steeply
    metrics, history = run(0.566, (0.551, 0.581), 0.05, 0.788, 69, [(0.41, 2.94), (0.52, 2.33), (0.566, 2.12)],
                           start=3.05, trained=[3.0, 2.9, 2.7, 2.6, 2.4, 2.3], baseline_name="most_frequent_tag")
    found = diagnose(metrics, history, config(), "runs/tags")
    assert found["verdict"] == "learned little"  # far above its base model, below the baseline
    assert found["causes"][0] == ("the loss was still falling at the last step (validation loss 2.94 → 2.33 → 2.12, "
                                  "the lowest at the last evaluation): too few steps (69) or too small a learning rate")
    assert found["try"] == "ftune train runs/tags/config.yaml --set train.epochs=9 --output-dir runs/tags-retry"
    assert not any("hard for this model" in c for c in found["causes"])
    assert lines(found)[-1] == f"try: {found['try']}"


def test_twelve_steps_well_above_the_base_model_did_not_learn_nothing_and_get_more_steps_not_a_rate_jump():
    # One noisy logged batch loss (0.70) above the step-0 validation loss (0.69) is not a loss that never fell.
    metrics, history = run(0.86, (0.82, 0.9), 0.52, 0.95, 12, [(0.7, 0.62), (0.8, 0.52), (0.86, 0.47)],
                           start=0.69, trained=[0.70])
    found = diagnose(metrics, history, config("lora", 1e-3), "runs/spam")
    assert found["verdict"] == "learned little"
    text = "\n".join(lines(found))
    assert "learned nothing" not in text and "never fell" not in text
    assert "still falling" in found["causes"][0] and "train.epochs=9" in found["try"]
    assert rate_in(found) is None


@pytest.mark.parametrize("trained", [[0.70], [0.69, 0.71]])
def test_fewer_than_three_points_say_nothing_about_a_flat_loss(trained):
    metrics, history = run(0.55, (0.5, 0.6), 0.5, 0.9, 100, start=0.69, trained=trained)
    found = diagnose(metrics, history, config("lora", 1e-3), "runs/x")
    assert not any("never fell" in f for f in found["findings"]) and rate_in(found) is None


@pytest.mark.parametrize("method", sorted(MAX_RATE))
def test_a_flat_loss_raises_the_rate_3x_at_most_to_the_methods_ceiling_then_asks_for_more_steps(method):
    ceiling = MAX_RATE[method]
    metrics, history = run(0.5, (0.45, 0.55), 0.5, 0.9, 100, [(0.5, 0.693), (0.5, 0.692)], start=0.693,
                           trained=[0.694, 0.693, 0.692, 0.693])
    low = diagnose(metrics, history, config(method, ceiling / 30), "runs/x")
    assert low["verdict"] == "learned nothing" and any(f.startswith("the loss never fell") for f in low["findings"])
    assert "too low for" in low["causes"][0] and rate_in(low) == pytest.approx(ceiling / 10)
    near = diagnose(metrics, history, config(method, ceiling / 2), "runs/x")
    assert rate_in(near) == pytest.approx(ceiling)  # 3x would pass the ceiling: the ceiling
    at = diagnose(metrics, history, config(method, ceiling), "runs/x")
    assert rate_in(at) is None and "--set train.epochs=9" in at["try"]
    assert f"at or above the highest rate ftune suggests for {method}" in at["causes"][0]


def test_lora_at_1e_3_with_a_flat_loss_is_never_told_1e_2():
    metrics, history = run(0.5, (0.45, 0.55), 0.5, 0.9, 100, [(0.5, 0.69)] * 3, start=0.69, trained=[0.69] * 6)
    assert rate_in(diagnose(metrics, history, config("lora", 1e-3), "runs/x")) == pytest.approx(3e-3)


@pytest.mark.parametrize("evaluations, trained", [
    ([(0.5, 0.9), (0.5, 1.4), (0.5, 2.2)], [0.8, 1.0, 1.7, 2.4, 2.6, 3.1]),  # both curves rose
    ([(0.5, 0.9), (0.5, 1.4), (0.5, 2.2)], []),  # no logged training loss: the validation loss never fell, and rose
])
def test_a_rising_loss_still_lowers_the_rate(evaluations, trained):
    metrics, history = run(0.5, (0.45, 0.55), 0.5, 0.9, 100, evaluations, start=0.7, trained=trained)
    found = diagnose(metrics, history, config("lora", 1e-3), "runs/x")
    assert found["causes"][0].startswith("the loss rose during training") and "too high for lora" in found["causes"][0]
    assert rate_in(found) == pytest.approx(1e-4)


def test_overfitting_is_still_overfitting_not_too_few_steps():
    # validation best at the first evaluation and worse after, while the training loss falls fast
    metrics, history = run(0.7, (0.66, 0.74), 0.5, 0.8, 100, [(0.8, 0.45), (0.75, 0.55), (0.7, 0.7)], start=0.69,
                           trained=[0.6, 0.4, 0.2, 0.1, 0.05, 0.02])
    found = diagnose(metrics, history, config(), "runs/x")
    assert "overfitting" in found["causes"][0] and "early_stopping_patience=1" in found["try"]
    assert not any("still falling" in c or "rose" in c for c in found["causes"])


def test_a_curve_that_levelled_off_is_not_still_falling():
    metrics, history = run(0.7, (0.66, 0.74), 0.5, 0.8, 100, [(0.68, 0.40), (0.7, 0.35), (0.7, 0.345)], start=0.69,
                           trained=[0.6, 0.45, 0.4, 0.36, 0.35, 0.35])
    found = diagnose(metrics, history, config(), "runs/x")
    assert found["causes"][0].startswith("the task may be hard for this model") and found["try"] is None


def test_with_one_evaluation_the_slope_of_the_last_third_of_the_training_loss_is_read():
    falling = [2.0 - 0.1 * i for i in range(12)]  # steps 8 .. 96, still going down at 0.1 a log line
    metrics, history = run(0.5, (0.45, 0.55), 0.3, 0.8, 96, [(0.5, 1.2)], start=2.1, trained=falling)
    found = diagnose(metrics, history, config("lora", 1e-4), "runs/x")
    assert found["causes"][0].startswith("the loss was still falling at the last step (training loss 1.2 → 0.9 on a "
                                         "line fitted to the last 4 logged, steps 72–96)")
    noisy = [1.0, 0.95, 0.9, 0.85, 0.8, 0.8, 0.82, 0.78, 0.81, 0.79, 0.8, 0.8]  # levelled off: no clear slope
    metrics, history = run(0.5, (0.45, 0.55), 0.3, 0.8, 96, [(0.5, 0.8)], start=1.1, trained=noisy)
    assert not any("still falling" in c for c in diagnose(metrics, history, config("lora", 1e-4), "runs/x")["causes"])


def test_the_diagnosis_is_plain_json():
    metrics, history = run(0.566, (0.551, 0.581), 0.05, 0.788, 69, [(0.41, 2.94), (0.52, 2.33), (0.566, 2.12)],
                           start=3.05, trained=[3.0, 2.9, 2.7])
    found = diagnose(metrics, history, config(), "runs/x")
    assert json.loads(json.dumps(found)) == found  # it is saved in metrics.json


@pytest.mark.e2e
def test_the_retry_the_diagnosis_suggests_scores_better(tiny_config, tmp_path, monkeypatch, capsys):
    """A tagger stopped after 2 epochs (28 steps: not too few by count) while its loss still fell: the `try` line,
    run as printed, does better."""
    data = tmp_path / "ner.jsonl"
    data.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in entity_sentences(150)))
    first = ftune.train(tiny_config(**{"task": "token-classification", "data.train": str(data),
                                       "data.text_column": None, "data.label_column": None, "train.epochs": 2,
                                       "train.batch_size": 8, "train.learning_rate": 1e-3, "train.log_steps": 2,
                                       "output_dir": str(tmp_path / "first")}), quiet=True)
    found = first.metrics["diagnosis"]
    assert found and found["causes"][0].startswith("the loss was still falling at the last step")
    assert f"too few steps ({first.metrics['train']['steps']})" in found["causes"][0]
    command = shlex.split(found["try"])
    assert command[:2] == ["ftune", "train"] and "train.epochs=6" in command
    code, _, err = ftune_cli(monkeypatch, capsys, *command[1:], "--quiet")
    assert code == 0, err
    retry = ftune.Run(tmp_path / "first-retry")
    before, after = first.metrics["test"]["finetuned"]["accuracy"], retry.metrics["test"]["finetuned"]["accuracy"]
    assert after > before + 0.05, (before, after)  # measured: 0.493 -> 1.0 on the tiny model
    assert retry.metrics["validation"]["best"] > first.metrics["validation"]["best"]
