"""`ftune train --seeds`: a run per seed on one split, the summary across them, resume, compare, bad values."""

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import ftune
from ftune.cli import main
from ftune.config import DataConfig
from ftune.data import load_splits
from ftune.errors import RunError
from ftune.runs import compare_runs
from ftune.seeds import train_seeds
from helpers import ftune_cli

pytestmark = pytest.mark.e2e  # trains whole runs: make test-quick leaves this module out

SEEDS = [0, 1, 2]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich folds table cells to the terminal width


@pytest.fixture(scope="module")
def seeds_cli(tiny_model, reviews_csv, tmp_path_factory):
    """`ftune train --seeds 0,1,2` once for the module: the seeds folder and what the command printed."""
    root = tmp_path_factory.mktemp("seeds") / "out"
    args = ["ftune", "train", "--model", tiny_model, "--data", str(reviews_csv), "--text-column", "review",
            "--label-column", "stars", "--set", "data.max_length=32", "--batch-size", "16", "--epochs", "1",
            "--set", "data.max_train_samples=64", "--set", "data.max_eval_samples=40",  # 4 steps: seconds a seed
            "--set", "train.learning_rate=3e-3", "--tracking", "none", "--output-dir", str(root), "--quiet",
            "--seeds", ",".join(map(str, SEEDS))]
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        mp.setattr(sys, "argv", args)
        mp.setenv("COLUMNS", "200")
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code or 0
    assert code == 0, stderr.getvalue()
    return root, stdout.getvalue()


def test_one_run_per_seed_on_one_split_and_a_summary_of_their_scores(seeds_cli):
    root, _ = seeds_cli
    runs = [ftune.Run(root / f"seed-{s}") for s in SEEDS]  # each a complete, ordinary run
    assert [r.config.train.seed for r in runs] == SEEDS and {r.config.data.split_seed for r in runs} == {0}
    assert len({r.manifest["data_hash"] for r in runs}) == 1  # the same split for every seed
    summary = json.loads((root / "summary.json").read_text())
    assert summary["seeds"] == SEEDS and summary["split_seed"] == 0
    assert {"accuracy", "macro_f1", "loss"} <= set(summary["finetuned"])
    for metric, s in summary["finetuned"].items():
        scores = [r.metrics["test"]["finetuned"][metric] for r in runs]
        assert s["values"] == {str(seed): v for seed, v in zip(SEEDS, scores)}
        assert s["mean"] == pytest.approx(np.mean(scores)) and s["sd"] == pytest.approx(np.std(scores, ddof=1))
        assert (s["min"], s["max"]) == (min(scores), max(scores))
        lo, hi = s["ci95"]
        half, top = 4.3027 * s["sd"] / np.sqrt(3), np.inf if metric == "loss" else 1.0  # t(0.975, 2) = 4.3027
        assert lo <= s["mean"] <= hi
        assert (lo, hi) == pytest.approx((max(s["mean"] - half, 0), min(s["mean"] + half, top)), rel=1e-4)
    tfidf = summary["baselines"]["tfidf"]["accuracy"]
    assert tfidf["sd"] == 0 and tfidf["mean"] == runs[0].metrics["test"]["tfidf"]["accuracy"]
    accuracy = summary["finetuned"]["accuracy"]
    row = f"| accuracy | {accuracy['mean']:.4f} ± {accuracy['sd']:.4f} |"
    assert row in (root / "summary.md").read_text()
    assert f"<td>{accuracy['mean']:.4f} ± {accuracy['sd']:.4f}</td>" in (root / "summary.html").read_text()


def test_the_command_ends_with_the_table_across_seeds(seeds_cli):
    root, out = seeds_cli
    accuracy = json.loads((root / "summary.json").read_text())["finetuned"]["accuracy"]
    row = next(line for line in out.splitlines() if line.startswith("│ accuracy"))
    lo, hi = accuracy["ci95"]
    assert f"{accuracy['mean']:.4f} ± {accuracy['sd']:.4f}" in row and f"{lo:.4f} – {hi:.4f}" in row
    assert all(f"{accuracy['values'][str(s)]:.4f}" in row for s in SEEDS)
    assert "seed 0" in out and "seed 2" in out and "TF-IDF + linear model (tuned on validation)" in out
    assert "t = 4.30 (2 degrees of freedom)" in out and "mean ± 2.48 sd" in out
    assert f"seeds folder: {root}" in out
    flagged = [s for s in SEEDS if json.loads((root / f"seed-{s}" / "metrics.json").read_text()).get("diagnosis")]
    assert [s for s in SEEDS if f"diagnosis: seed {s} " in out] == flagged  # a seed that learned nothing is named


def test_runs_compare_takes_a_seeds_folder_as_one_entry(seeds_cli, tmp_path, monkeypatch, capsys):
    root, _ = seeds_cli
    code, out, err = ftune_cli(monkeypatch, capsys, "runs", "compare", str(root), str(root / "seed-1"),
                               "--output", str(tmp_path / "cmp"))
    assert code == 0, err
    accuracy = json.loads((root / "summary.json").read_text())["finetuned"]["accuracy"]
    one = accuracy["values"]["1"]
    row = next(line for line in out.splitlines() if "test accuracy " in line and "CI" not in line)
    assert f"{accuracy['mean']:.4f} ± {accuracy['sd']:.4f}" in row and f"{one:.4f}" in row
    assert f"{one - accuracy['mean']:+.4f}" in row


def test_resume_refuses_a_finished_seed_trained_with_other_settings(seeds_cli, tiny_config):
    root, _ = seeds_cli
    with pytest.raises(RunError, match=r"seed-0: train.epochs is 2 now but the finished seed used 1"):
        train_seeds(tiny_config(**{"train.epochs": 2, "data.max_train_samples": 64, "data.max_eval_samples": 40,
                                    "output_dir": str(root)}), SEEDS, resume=True, quiet=True)


def test_resume_skips_complete_seeds_and_continues_the_unfinished_one(tiny_config, monkeypatch, capsys):
    import ftune.training as training

    real_finish = training.write_run

    def cut_at_seed_1(config, *args, **kwargs):
        if config.train.seed == 1:
            raise RuntimeError("power cut")
        return real_finish(config, *args, **kwargs)

    cfg = tiny_config(**{"train.epochs": 1, "data.max_train_samples": 64, "data.max_eval_samples": 40,
                         "train.baselines": False})
    monkeypatch.setattr(training, "write_run", cut_at_seed_1)
    with pytest.raises(RuntimeError, match="power cut"):
        train_seeds(cfg, [0, 1], quiet=True)
    monkeypatch.setattr(training, "write_run", real_finish)
    root = Path(cfg.output_dir)
    first = (root / "seed-0" / "run.json").read_text()
    assert json.loads((root / "seed-1" / "run.json").read_text())["status"] == "failed"
    assert not (root / "summary.json").exists()
    with pytest.raises(RunError, match="holds seed runs but no summary.json yet; finish them"):
        compare_runs([root, root / "seed-0"])
    with pytest.raises(RunError, match="already holds files; pass --resume"):
        train_seeds(cfg, [0, 1], quiet=True)

    summary = train_seeds(cfg, [0, 1], resume=True)
    err = capsys.readouterr().err
    assert (root / "seed-0" / "run.json").read_text() == first  # not trained again
    assert f"seed 0: {root / 'seed-0'} is complete, skipped" in err and "resuming from step-" in err
    resumed = json.loads((root / "seed-1" / "run.json").read_text())
    assert resumed["status"] == "complete" and "resumed_at" in resumed
    assert summary.finetuned["accuracy"].values == {
        s: ftune.Run(root / f"seed-{s}").metrics["test"]["finetuned"]["accuracy"] for s in (0, 1)}
    assert json.loads((root / "summary.json").read_text())["seeds"] == [0, 1]


@pytest.mark.parametrize("args, message", [
    (["--seeds", "a,b"], "--seeds: 'a' is not a seed (a whole number from 0 to 4294967295)"),
    (["--seeds", ""], "--seeds is empty"),
    (["--seeds", " , "], "--seeds is empty"),
    (["--seeds", "0,1,1"], "--seeds: seed 1 is given twice"),
    (["--seeds", "0,-1"], "--seeds: '-1' is not a seed"),
    (["--seeds", "3"], "--seeds needs at least two seeds to measure a spread (got 1)"),
    (["--seeds", "0,1", "--nproc", "2"], "--seeds trains its seeds one after another in one process"),
])
def test_bad_seeds_are_one_line_errors_with_exit_2(args, message, monkeypatch, capsys):
    code, _, err = ftune_cli(monkeypatch, capsys, "train", "--tracking", "none", *args)
    assert code == 2 and err.count("\n") == 1 and message in err


def test_split_seed_holds_the_split_and_defaults_to_train_seed(reviews_csv):
    data = {"train": str(reviews_csv), "text_column": "review", "label_column": "stars"}
    default = load_splits(DataConfig(**data), seed=3)
    held = load_splits(DataConfig(**data, split_seed=3), seed=0)
    assert DataConfig().split_seed is None and default.fingerprint() == held.fingerprint()
    assert load_splits(DataConfig(**data), seed=0).fingerprint() != held.fingerprint()
