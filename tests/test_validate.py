"""Pre-flight data checks: warnings for data that trains but misleads, in `ftune data validate` and in the report."""

import numpy as np
import pandas as pd

import ftune
from ftune.data import Encoded, Splits
from ftune.data.validate import data_warnings
from helpers import ftune_cli, synthetic_reviews


def splits_of(train: list[tuple[str, int]], test: list[tuple[str, int]], labels=("neg", "pos")) -> Splits:
    frame = lambda rows: pd.DataFrame(rows, columns=["text", "label"])  # noqa: E731
    return Splits(frame(train), frame([("held out", 0)]), frame(test), list(labels))


def lengths_of(splits: Splits, long: int = 0) -> dict[str, Encoded]:
    encoded = {}
    for name in ("train", "validation", "test"):
        n = len(getattr(splits, name))
        ids = [np.zeros(16 if i < long and name == "train" else 5, dtype=np.int32) for i in range(n)]
        encoded[name] = Encoded(ids, None, getattr(splits, name)["label"].to_numpy())
    return encoded


def test_clean_data_has_no_warnings():
    splits = splits_of([("good", 1), ("bad", 0), ("fine", 1), ("poor", 0)], [("new", 1)])
    assert data_warnings(splits, lengths_of(splits), 16) == []


def test_each_problem_is_named_with_its_count_and_an_example():
    splits = splits_of([("good", 1), ("good", 1), ("odd", 1), ("odd", 0)] + [("x%d" % i, 1) for i in range(20)],
                       [("good", 1), ("new", 0)])
    found = data_warnings(splits, lengths_of(splits, long=3), 16)
    assert len(found) == 5
    assert found[0].startswith("train: 1 duplicate rows")
    assert found[1].startswith("train: 1 texts appear with different labels, e.g. 'odd'")
    assert found[2].startswith("test: 1 texts also occur in train (e.g. 'good')")
    assert "classes are very imbalanced ('pos' 23 rows, 'neg' 1)" in found[3] and "class_weights" in found[3]
    assert found[4].startswith("3 texts fill the 16-token window") and "data.max_length" in found[4]


def test_data_validate_lists_warnings_and_strict_fails_on_them(tmp_path, monkeypatch, capsys):
    data = synthetic_reviews(200)
    data = pd.concat([data, data.head(4)])
    data.to_csv(tmp_path / "train.csv", index=False)
    args = ["data", "validate", "--data", str(tmp_path / "train.csv"), "--text-column", "review",
            "--label-column", "stars", "--model", "minilm"]
    code, out, _ = ftune_cli(monkeypatch, capsys, *args)
    assert code == 0 and "duplicate rows" in out and "warning(s); no errors" in out
    code, _, _ = ftune_cli(monkeypatch, capsys, *args, "--strict")
    assert code == 1
    code, _, err = ftune_cli(monkeypatch, capsys, *args[:-4], "--text-column", "reviews", "--label-column", "stars")
    assert code == 2 and "no column 'reviews' (columns: review, stars); did you mean 'review'?" in err


def test_a_run_with_warnings_reports_them(tiny_config, tmp_path):
    data = synthetic_reviews(300)
    pd.concat([data, data.head(6)]).to_csv(tmp_path / "dupes.csv", index=False)
    run = ftune.train(tiny_config(**{"data.train": str(tmp_path / "dupes.csv"), "train.epochs": 1}), quiet=True)
    assert any("duplicate rows" in w for w in run.metrics["data"]["warnings"])
    report = (run.path / "report.md").read_text()
    assert "## Data warnings" in report and "duplicate rows" in report
