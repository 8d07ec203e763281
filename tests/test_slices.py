"""`ftune eval RUN --data FILE --slice-by COLUMN`: every metric per group (Fairlearn's MetricFrame, the task's own
scores), with counts, intervals, the largest gap and the groups too small to judge."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import ftune
from helpers import ftune_cli, synthetic_reviews


@pytest.fixture(scope="module")
def run(tiny_model, reviews_csv, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sliced")
    config = ftune.load_config(overrides={
        "model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
        "data.label_column": "stars", "data.max_length": 32, "train.epochs": 3, "train.batch_size": 16,
        "train.learning_rate": 3e-3, "train.warmup_ratio": 0.0, "method.name": "full", "tracking.backend": "none",
        "output_dir": str(folder / "run")})
    return ftune.train(config, quiet=True)


def test_each_group_is_scored_apart_with_the_gap_and_the_small_groups_named(run, tmp_path, monkeypatch, capsys):
    """Three groups: plain reviews, the same kind with their labels swapped (the model is wrong on them by
    construction), and 5 rows: too few to judge."""
    plain = synthetic_reviews(60, seed=3).assign(group="plain")
    swapped = synthetic_reviews(40, seed=4)
    swapped = swapped.assign(stars=swapped.stars.map({"pos": "neg", "neg": "pos"}), group="swapped")
    small = synthetic_reviews(5, seed=5).assign(group="tiny")
    pd.concat([plain, swapped, small]).to_csv(tmp_path / "eval.csv", index=False)
    code, printed, err = ftune_cli(monkeypatch, capsys, "eval", str(run.path), "--data", str(tmp_path / "eval.csv"),
                                   "--slice-by", "group", "--json")
    assert code == 0, err
    sliced = json.loads(printed)["slices"]
    groups = sliced["groups"]
    assert {name: g["n"] for name, g in groups.items()} == {"plain": 60, "swapped": 40, "tiny": 5}
    predicted = [a["label"] for a in run.predict(plain.review.tolist())]
    assert groups["plain"]["accuracy"] == pytest.approx((pd.Series(predicted) == plain.stars.to_numpy()).mean())
    assert groups["plain"]["accuracy"] > 0.9 > 0.1 > groups["swapped"]["accuracy"]
    low, high = groups["plain"]["accuracy_ci95"]
    assert low <= groups["plain"]["accuracy"] <= high and "macro_f1" in groups["plain"]
    assert sliced["too_small"] == ["tiny"]
    assert sliced["gap"]["best"] == "plain" and sliced["gap"]["worst"] == "swapped"
    assert sliced["gap"]["value"] == pytest.approx(groups["plain"]["accuracy"] - groups["swapped"]["accuracy"])
    code, printed, _ = ftune_cli(monkeypatch, capsys, "eval", str(run.path), "--data", str(tmp_path / "eval.csv"),
                                 "--slice-by", "group")
    assert "group=tiny: accuracy" in printed and "too few to judge" in printed
    assert "largest gap: accuracy" in printed and "between group=plain and group=swapped" in printed


def test_a_missing_slice_column_is_one_line(run, tmp_path, monkeypatch, capsys):
    synthetic_reviews(20).to_csv(tmp_path / "eval.csv", index=False)
    code, _, err = ftune_cli(monkeypatch, capsys, "eval", str(run.path), "--data", str(tmp_path / "eval.csv"),
                             "--slice-by", "source")
    assert code == 2 and "--slice-by source" in err and "no such column" in err, err


def test_slice_columns_score_the_test_split_by_group_in_metrics_report_and_compare(tiny_model, tmp_path, monkeypatch,
                                                                                   capsys):
    """data.slice_columns: the test split (a file of plain reviews and reviews with swapped labels) is scored per
    group at the end of training, for the base model too; the report and `runs compare` show it."""
    train = synthetic_reviews(300, seed=1).assign(group="plain")
    swapped = synthetic_reviews(40, seed=4)
    test = pd.concat([synthetic_reviews(60, seed=3).assign(group="plain"),
                      swapped.assign(stars=swapped.stars.map({"pos": "neg", "neg": "pos"}), group="swapped"),
                      synthetic_reviews(5, seed=5).assign(group="tiny")])
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    settings = {"model.name": tiny_model, "data.train": str(tmp_path / "train.csv"),
                "data.test": str(tmp_path / "test.csv"), "data.text_column": "review", "data.label_column": "stars",
                "data.slice_columns": "[group]", "data.max_length": 32, "train.epochs": 3, "train.batch_size": 16,
                "train.learning_rate": 3e-3, "method.name": "full", "tracking.backend": "none"}
    sets = [f"{k}={v}" for k, v in settings.items()]  # as the command line gives them: "[group]" is a YAML list
    runs = [ftune.train(ftune.load_config(overrides=[*sets, f"output_dir={tmp_path / 'run0'}"]), quiet=True)]
    code, printed, err = ftune_cli(monkeypatch, capsys, "train", *(f"--set={s}" for s in sets),
                                   "--set", "train.seed=1", "--output-dir", str(tmp_path / "run1"))
    assert code == 0 and "group=swapped: accuracy" in printed and "largest gap: accuracy" in printed, err
    runs.append(ftune.Run(tmp_path / "run1"))
    test_scores = runs[0].metrics["test"]
    sliced = test_scores["finetuned"]["slices"]["group"]
    assert {name: g["n"] for name, g in sliced["groups"].items()} == {"plain": 60, "swapped": 40, "tiny": 5}
    assert sliced["groups"]["plain"]["accuracy"] > 0.75 > 0.25 > sliced["groups"]["swapped"]["accuracy"]
    assert sliced["gap"]["best"] == "plain" and sliced["too_small"] == ["tiny"]
    assert set(test_scores["base_model"]["slices"]["group"]["groups"]) == {"plain", "swapped", "tiny"}
    report = (runs[0].path / "report.md").read_text()
    assert "Scores by slice: group (test split)" in report and "Largest gap: accuracy" in report
    assert "| tiny | 5 |" in report and "too few to judge" in report
    code, printed, err = ftune_cli(monkeypatch, capsys, "runs", "compare", str(runs[0].path), str(runs[1].path),
                                   "--output", str(tmp_path / "compared"))
    assert code == 0, err
    assert "test accuracy group=plain" in printed and "largest group gap in accuracy" in printed

    test.drop(columns="group").to_csv(tmp_path / "test.csv", index=False)  # a file without the column: one line
    code, _, err = ftune_cli(monkeypatch, capsys, "train", "--set", f"model.name={tiny_model}", "--set",
                             f"data.train={tmp_path / 'train.csv'}", "--set", f"data.test={tmp_path / 'test.csv'}",
                             "--set", "data.text_column=review", "--set", "data.label_column=stars", "--set",
                             "data.slice_columns=[group]", "--output-dir", str(tmp_path / "refused"))
    assert code == 2 and "data.slice_columns names 'group', which is not a column" in err, err


@pytest.mark.parametrize("settings, said", [
    ({"task.name": "causal-lm"}, "a causal-lm run does not do"),
    ({"task.long_text.strategy": "chunk"}, "reading long texts in windows"),
])
def test_slice_columns_are_refused_where_texts_are_not_scored_one_by_one(settings, said):
    with pytest.raises(ftune.ConfigError, match=said):
        ftune.load_config(overrides={"data.slice_columns": ["group"], **settings})
