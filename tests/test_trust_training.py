"""Training under unlucky and hostile input: no writes outside the run, no silent resume of the wrong thing,
no NaN model, and one line instead of a traceback (issue: trust under hostile and unlucky input)."""

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import ftune
import ftune.train_setup
from ftune.config import DEFAULT_LEARNING_RATES, load_config
from ftune.errors import ConfigError, RunError

pytestmark = pytest.mark.e2e  # trains whole runs: make test-quick leaves this module out


def interrupted_copy(run, where: Path, keep_checkpoints: int) -> Path:
    """The run as a kill after its first `keep_checkpoints` checkpoints would have left it."""
    shutil.copytree(run.path, where)
    for extra in sorted((where / "checkpoints").glob("step-*"))[keep_checkpoints:]:
        shutil.rmtree(extra)
    for name in ("model", "metrics.json", "labels.json", "report.md", "report.html"):
        shutil.rmtree(where / name) if (where / name).is_dir() else (where / name).unlink(missing_ok=True)
    manifest = json.loads((where / "run.json").read_text())
    (where / "run.json").write_text(json.dumps({**manifest, "status": "running"}))
    return where


def test_home_in_output_dir_is_expanded_everywhere(tiny_config, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "test_predictions.csv").write_text("mine\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert tiny_config(output_dir="~/runs/exp1").output_dir == str(home / "runs" / "exp1")
    with pytest.raises(RunError, match="already holds files"):  # `--output-dir '~'` is the home folder, not a new one
        ftune.train(tiny_config(output_dir="~"), quiet=True)
    assert (home / "test_predictions.csv").read_text() == "mine\n" and not (tmp_path / "~").exists()


def test_resume_refuses_data_that_changed_since_the_run_started(tiny_config, reviews_csv, tmp_path):
    data = tmp_path / "reviews.csv"
    shutil.copy(reviews_csv, data)
    cfg = tiny_config(**{"data.train": str(data), "train.epochs": 1})
    run = ftune.train(cfg, quiet=True)
    manifest = json.loads((run.path / "run.json").read_text())
    (run.path / "run.json").write_text(json.dumps({**manifest, "status": "failed"}))
    frame = pd.read_csv(data)
    frame["stars"] = frame["stars"].map({"pos": "neg", "neg": "pos"})  # every label flipped, same file name
    frame.to_csv(data, index=False)
    with pytest.raises(RunError, match=r"the data \(.*reviews.csv\) changed since the run started"):
        ftune.train(cfg, resume=True, quiet=True)


def test_a_second_resume_while_the_first_still_trains_is_refused(tiny_config, tmp_path):
    run = ftune.train(tiny_config(**{"train.epochs": 2, "train.save_total_limit": 5}), quiet=True)
    cut = interrupted_copy(run, tmp_path / "cut", keep_checkpoints=1)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(cut / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # another process is training this run
        with pytest.raises(RunError, match="is being trained by another ftune process right now"):
            ftune.train(tiny_config(**{"train.epochs": 2, "train.save_total_limit": 5, "output_dir": str(cut)}),
                        resume=True, quiet=True)
    finally:
        holder.kill()
        holder.wait()
    # Once that process is gone (however it ended), the lock goes with it and the resume runs.
    resumed = ftune.train(tiny_config(**{"train.epochs": 2, "train.save_total_limit": 5, "output_dir": str(cut)}),
                          resume=True, quiet=True)
    assert resumed.metrics["train"]["steps"] == run.metrics["train"]["steps"]


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tiny_config, tmp_path, capsys):
    cfg = tiny_config(**{"train.epochs": 2, "train.save_total_limit": 5})
    run = ftune.train(cfg, quiet=True)
    cut = interrupted_copy(run, tmp_path / "cut", keep_checkpoints=2)
    latest = sorted((cut / "checkpoints").glob("step-*"))[-1]
    weights = latest / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a save cut short
    resumed = ftune.train(cfg.model_copy(update={"output_dir": str(cut)}), resume=True)
    printed = capsys.readouterr().err
    assert f"checkpoint {latest.name} cannot be read" in printed and "resuming from step-" in printed
    assert (cut / "checkpoints" / f"{latest.name}.damaged").is_dir()  # set aside, not deleted
    assert resumed.metrics["train"]["steps"] == run.metrics["train"]["steps"]
    assert resumed.metrics["test"]["finetuned"]["loss"] == pytest.approx(run.metrics["test"]["finetuned"]["loss"],
                                                                         abs=1e-6)


def test_a_refused_run_leaves_the_users_empty_folder_in_place(tiny_config, tmp_path, monkeypatch):
    folder = tmp_path / "made-by-hand"
    folder.mkdir()
    monkeypatch.setattr(ftune.train_setup, "free_bytes", lambda device: 10_000_000)  # refused before training
    with pytest.raises(ConfigError, match="this run needs about"):
        ftune.train(tiny_config(output_dir=str(folder)), quiet=True)
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_divergence_stops_the_run_before_nan_weights_are_saved(tiny_config):
    cfg = tiny_config(**{"train.learning_rate": 5e5, "train.epochs": 2, "train.log_steps": 1})
    with pytest.raises(RunError, match=r"training diverged: the training loss became nan at step \d+ \(learning rate "
                                       r"500000\).*smaller train.learning_rate \(e.g. 50000\)"):
        ftune.train(cfg, quiet=True)
    manifest = json.loads((Path(cfg.output_dir) / "run.json").read_text())
    assert manifest["status"] == "failed" and not (Path(cfg.output_dir) / "model").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"train.epochs": 1_000_000_000}, "train.epochs: Input should be less than or equal to 1000"),
    ({"data.max_length": 4096}, r"data.max_length=4096 is more than .* reads \(128 tokens\); set data.max_length=128"),
])
def test_settings_a_run_cannot_use_are_refused_before_the_run_directory(tiny_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        ftune.train(tiny_config(**overrides), quiet=True)
    assert not (tmp_path / "run").exists()


def test_an_output_dir_that_is_a_file_is_one_line(tiny_config, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RunError, match="output_dir .*file is a file, not a folder"):
        ftune.train(tiny_config(output_dir=str(tmp_path / "file")), quiet=True)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ["anchors:", '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\nmodel:\n  name: *a8\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="more than 100,000 values once YAML aliases are expanded"):
        load_config(tmp_path / "bomb.yaml")
    assert time.perf_counter() - start < 30  # 9**9 values if expanded; refused without expanding them
    with pytest.raises(ConfigError, match=r"model.name: Input should be a valid string \(got \[\[\[.*\.\.\."):
        load_config(overrides={"model.name": [[[["deep"] * 50] * 50] * 50]})  # the value is shown cut short


def test_lora_without_a_learning_rate_gets_the_lora_default_and_says_so(tiny_config, capsys):
    cfg = tiny_config(**{"method.name": "lora", "train.learning_rate": None, "train.epochs": 1,
                         "train.baselines": False})
    assert cfg.train.learning_rate == DEFAULT_LEARNING_RATES["lora"] == 1e-3
    run = ftune.train(cfg)
    assert "learning rate 0.001: the default for lora" in capsys.readouterr().err
    manifest = json.loads((run.path / "run.json").read_text())
    assert manifest["learning_rate"] == {"value": 1e-3, "source": "default for lora"}
    assert run.config.train.learning_rate == 1e-3  # config.yaml holds the number the run used
    explicit = tiny_config(**{"method.name": "lora", "train.learning_rate": 3e-3})
    assert explicit.train.learning_rate == 3e-3 and not explicit._learning_rate_is_default
    assert load_config(overrides={"method.name": "freeze"}).train.learning_rate == 1e-3
    assert load_config(overrides={"method.name": "full"}).train.learning_rate == 5e-5
    assert math.isclose(load_config(overrides={"task": "causal-lm", "method.name": "lora"}).train.learning_rate, 2e-4)
