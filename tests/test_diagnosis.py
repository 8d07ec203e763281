"""A run that learned nothing says so, with the cause read from the run; a run that learned says nothing."""

import json

import pytest

import ftune
from ftune.diagnosis import diagnose, lines
from ftune.runs import run_row
from helpers import ftune_cli


def test_a_learning_rate_far_too_low_is_named_and_a_good_run_gets_no_diagnosis(tiny_config, tiny_model, reviews_csv,
                                                                               tmp_path, monkeypatch, capsys):
    code, printed, err = ftune_cli(monkeypatch, capsys, "train", "--model", tiny_model, "--data", str(reviews_csv),
                                   "--text-column", "review", "--label-column", "stars", "--output-dir",
                                   str(tmp_path / "stuck"), "--tracking", "none", "--quiet", "--set",
                                   "data.max_length=32", "--set", "train.learning_rate=1e-7", "--set", "train.log_steps=2")
    assert code == 0, err
    stuck = ftune.Run(tmp_path / "stuck")
    found = stuck.metrics["diagnosis"]
    assert found["verdict"] == "learned nothing"
    assert any(f.startswith("the loss never fell: validation loss 0.69") for f in found["findings"])
    assert found["causes"][0] == "the loss stayed flat from the start: learning rate 1e-07 is too low for full"
    # 3x, not 10x: a step up from the rate tried, within what full fine-tuning takes (diagnosis.MAX_RATE)
    assert found["try"] == (f"ftune train {stuck.path}/config.yaml --set train.learning_rate=3e-07 "
                            f"--output-dir {stuck.path}-retry")
    assert "diagnosis: this run learned nothing" in printed and "try: ftune train" in printed
    assert "learned nothing" in (stuck.path / "report.md").read_text()
    assert "learned nothing" in run_row(stuck.path)["status"]

    good = ftune.train(tiny_config(**{"train.log_steps": 2, "output_dir": str(tmp_path / "good")}), quiet=True)
    assert good.metrics["test"]["finetuned"]["accuracy"] > 0.9
    assert good.metrics["diagnosis"] is None and run_row(good.path)["status"] == "complete"
    assert "Diagnosis" not in (good.path / "report.md").read_text()


def run_metrics(accuracy=0.9, ci=(0.85, 0.95), base=0.5, tfidf=0.8, steps=100, history=()):
    return {"test": {"finetuned": {"accuracy": accuracy, "accuracy_ci95": list(ci), "loss": 0.3},
                     "base_model": {"accuracy": base}, "tfidf": {"accuracy": tfidf}},
            "validation": {"metric": "accuracy", "history": list(history), "base_model": {"loss": 0.69}},
            "train": {"steps": steps}}


CONFIG = {"train": {"learning_rate": 5e-5, "warmup_ratio": 0.1, "epochs": 3}, "method": {"name": "lora"}}


@pytest.mark.parametrize("metrics, losses, verdict, cause, fix", [
    (run_metrics(), [0.5, 0.4, 0.3], None, None, None),
    (run_metrics(0.51, (0.47, 0.55)), [0.69] * 3, "learned nothing", "too low for lora", "learning_rate=0.00015"),
    (run_metrics(0.5, (0.46, 0.54)), [0.9, 1.8, 2.5], "learned nothing", "too high for lora", "learning_rate=5e-06"),
    (run_metrics(0.7, (0.66, 0.74)), [0.6, 0.4], "learned little", "too few to learn much", "train.epochs=9"),
])
def test_diagnosis_rules(metrics, losses, verdict, cause, fix):
    metrics["train"]["steps"] = 12 if cause == "too few to learn much" else 100
    history = [{"type": "train", "step": i, "loss": v} for i, v in enumerate(losses)]
    metrics["validation"]["base_model"]["loss"] = losses[0]
    found = diagnose(metrics, history, CONFIG, "runs/x")
    if verdict is None:
        assert found is None and lines(found) == []
        return
    assert found["verdict"] == verdict and cause in found["causes"][0] and fix in found["try"]


def test_overfitting_is_read_from_the_validation_curve():
    history = [{"validation": {"accuracy": a}} for a in (0.8, 0.75, 0.7)]
    metrics = run_metrics(0.7, (0.66, 0.74), history=history)
    found = diagnose(metrics, [{"type": "train", "loss": 0.6}, {"type": "train", "loss": 0.1}], CONFIG, "runs/x")
    assert found["verdict"] == "learned little" and "overfitting" in found["causes"][0]
    assert json.loads(json.dumps(found)) == found  # it is saved in metrics.json


def test_a_few_labeled_texts_a_label_is_named_instead_of_a_hard_task():
    metrics = run_metrics(0.5, (0.46, 0.54))
    metrics["data"] = {"classes": {"train": {"negative": 7, "positive": 8}}}
    found = diagnose(metrics, [{"type": "train", "loss": v} for v in (0.7, 0.5, 0.4)], CONFIG, "runs/x")
    assert found["causes"] == ["few labeled texts: 7 in training for 'negative' (7–8 a label), too few for this model "
                               "to learn the task reliably: label more texts"]
    metrics["data"]["classes"]["train"] = {"negative": 700, "positive": 800}
    assert "the task may be hard" in diagnose(metrics, [{"type": "train", "loss": v} for v in (0.7, 0.5, 0.4)],
                                              CONFIG, "runs/x")["causes"][0]
