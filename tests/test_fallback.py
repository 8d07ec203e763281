"""The honest fallback: when a baseline beat the fine-tuned model on validation, the run says so first."""

from __future__ import annotations

from ftune.diagnosis import better_baseline


def metrics(ours: float, theirs: float | None, metric: str = "accuracy", lower: bool = False) -> dict:
    baseline = {metric: 0.7, **({"validation": theirs} if theirs is not None else {})}
    return {"scores": {"metrics": [metric], "lower_is_better": [metric] if lower else [],
                       "titles": {"tfidf": "TF-IDF + linear model (tuned on validation)"}},
            "validation": {"metric": metric, "best": ours},
            "test": {"finetuned": {metric: 0.7}, "base_model": {metric: 0.5}, "tfidf": baseline}}


def test_a_baseline_better_on_validation_is_named_with_both_scores():
    found = better_baseline(metrics(0.698, 0.77), "runs/x", ships=True)
    assert found["baseline"] == "tfidf"
    assert "TF-IDF + linear model (tuned on validation) baseline beat the fine-tuned model on validation " \
           "(accuracy 77.0% against 69.8%)" in found["line"] and "ftune export runs/x --baseline" in found["line"]


def test_a_task_whose_baseline_does_not_export_is_not_told_to_export_it():
    line = better_baseline(metrics(0.9, 0.8, "rmse", lower=True), "runs/x")["line"]
    assert "--baseline" not in line and "a model to prefer over this run" in line


def test_nothing_is_said_when_the_model_is_as_good_or_no_baseline_has_a_validation_score():
    assert better_baseline(metrics(0.77, 0.77), "r") is None
    assert better_baseline(metrics(0.80, 0.77), "r") is None
    assert better_baseline(metrics(0.60, None), "r") is None  # a run written before baselines had one


def test_lower_is_better_scores_compare_the_other_way():
    assert better_baseline(metrics(0.9, 0.8, "rmse", lower=True), "r")["baseline"] == "tfidf"
    assert better_baseline(metrics(0.8, 0.9, "rmse", lower=True), "r") is None


def test_a_run_choosing_on_another_metric_is_not_compared():
    m = metrics(0.5, 0.9)
    m["validation"]["metric"] = "macro_f1"  # train.metric: the run's best is not the baseline's score
    assert better_baseline(m, "r") is None


def test_a_validation_split_too_small_to_choose_by_is_compared_on_test_and_says_so():
    few = metrics(0.5, 1.0)  # e.g. 2 validation texts: the baseline's 100% is 2 of 2
    few["validation"]["kept"] = "last"
    few["test"]["finetuned"]["accuracy"] = 0.604
    few["test"]["tfidf"]["accuracy"] = 0.634
    line = better_baseline(few, "runs/x", ships=True)["line"]
    assert "baseline beat the fine-tuned model on test (the validation split is too small to compare on) (accuracy " \
           "63.4% against 60.4%)" in line
    few["test"]["tfidf"]["accuracy"] = 0.55
    assert better_baseline(few, "r") is None
