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
