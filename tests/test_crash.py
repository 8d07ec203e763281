"""Crash safety: SIGKILL at random steps then --resume ends like an uninterrupted run; SIGTERM saves a
checkpoint and exits cleanly; what a kill mid-write leaves behind is repaired or ignored."""

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import pytest

import ftune
from ftune.checkpoint import repair
from ftune.run import read_history
from helpers import ftune_message

SETTINGS = {"data.max_length": 32, "train.epochs": 3, "train.batch_size": 16, "train.learning_rate": 3e-3,
            "train.warmup_ratio": 0.0, "train.log_steps": 1, "train.save_steps": 2, "train.save_total_limit": 2,
            "tracking.backend": "none"}


def train_command(tiny_model, reviews_csv, output_dir) -> list[str]:
    command = [sys.executable, "-m", "ftune", "train", "--model", tiny_model, "--data", str(reviews_csv),
               "--text-column", "review", "--label-column", "stars", "--output-dir", str(output_dir), "--quiet"]
    for key, value in SETTINGS.items():
        command += ["--set", f"{key}={value}"]
    return command


def start_and_signal_at_step(command: list[str], output_dir, step: int, signum: int) -> subprocess.CompletedProcess:
    """Start training, and send `signum` as soon as optimizer step `step` is in the log."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if any(e["type"] == "train" and e["step"] >= step for e in read_history(output_dir)):
            process.send_signal(signum)
            break
        time.sleep(0.02)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def follow(message: str) -> subprocess.CompletedProcess:
    """Run the command a message quotes in backticks, as printed (`ftune` as this interpreter's module)."""
    hint = shlex.split(message.split("`")[1])
    assert hint[0] == "ftune", message
    return subprocess.run([sys.executable, "-m", "ftune", *hint[1:]], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "FTUNE_PROGRESS_SECONDS": "0"})


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, reviews_csv, tmp_path_factory):
    cfg = ftune.load_config(overrides={"model.name": tiny_model, "data.train": str(reviews_csv),
                                       "data.text_column": "review", "data.label_column": "stars", **SETTINGS,
                                       "output_dir": str(tmp_path_factory.mktemp("crash") / "whole")})
    return ftune.train(cfg, quiet=True)


@pytest.mark.e2e
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_step_then_resume_ends_like_the_uninterrupted_run(seed, uninterrupted, tiny_model,
                                                                              reviews_csv, tmp_path):
    step = random.Random(seed).randint(2, uninterrupted.metrics["train"]["steps"] - 4)
    command = train_command(tiny_model, reviews_csv, tmp_path / "run")
    killed = start_and_signal_at_step(command, tmp_path / "run", step, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, f"the run ended before step {step}: {killed.stderr[-2000:]}"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "running"

    # what a user meets next: the run refused with a hint, which is followed exactly as printed, from the folder alone
    refused = subprocess.run([sys.executable, "-m", "ftune", "predict", str(tmp_path / "run"), "--text", "good"],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    message = ftune_message(refused.stderr)
    assert refused.returncode == 2 and "(status: interrupted)" in message, refused.stderr[-2000:]
    resumed = follow(message)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train step" in resumed.stderr  # not a terminal: plain progress lines
    a, b = uninterrupted.metrics, ftune.Run(tmp_path / "run").metrics
    assert b["train"]["steps"] == a["train"]["steps"]
    assert b["test"]["finetuned"]["loss"] == pytest.approx(a["test"]["finetuned"]["loss"], abs=1e-6), f"killed at {step}"
    assert b["validation"]["best_step"] == a["validation"]["best_step"]


@pytest.mark.e2e
def test_sigterm_saves_a_checkpoint_exits_cleanly_and_resume_finishes_the_same(uninterrupted, tiny_model,
                                                                              reviews_csv, tmp_path):
    command = train_command(tiny_model, reviews_csv, tmp_path / "run")
    stopped = start_and_signal_at_step(command, tmp_path / "run", 7, signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    message = ftune_message(stopped.stderr)
    assert message.startswith("stopped: stopped by SIGTERM at step") and "--resume" in message
    assert len(message.splitlines()) <= 2  # one line, folded by the terminal width at most
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    step = int(message.split("at step ")[1].split(":")[0])
    assert (tmp_path / "run" / "checkpoints" / f"step-{step:07d}").is_dir()

    resumed = follow(message)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ftune.Run(tmp_path / "run").metrics["test"]["finetuned"]["loss"] == \
        pytest.approx(uninterrupted.metrics["test"]["finetuned"]["loss"], abs=1e-6)


def test_a_kill_between_the_two_renames_of_a_save_is_repaired(tmp_path):
    best = tmp_path / "checkpoints" / "best"
    (tmp_path / "checkpoints" / "best.old").mkdir(parents=True)  # best renamed aside, new one not yet in place
    (tmp_path / "checkpoints" / "best.old" / "trainable.safetensors").write_text("weights")
    repair(tmp_path)
    assert (best / "trainable.safetensors").read_text() == "weights"


def test_a_half_written_log_line_is_ignored(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"type": "train", "step": 1, "loss": 0.5}\n{"type": "train", "st')
    assert read_history(tmp_path) == [{"type": "train", "step": 1, "loss": 0.5}]


def test_a_full_disk_stops_with_one_clear_error_and_keeps_the_earlier_checkpoints(uninterrupted, tiny_model,
                                                                                  reviews_csv, tmp_path, monkeypatch):
    import errno

    import ftune.checkpoint
    from ftune.errors import RunError

    saves = {"n": 0}
    real_save_file = ftune.checkpoint.save_file

    def fill_up_at_the_fourth_save(tensors, path):
        saves["n"] += 1
        if saves["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save_file(tensors, path)

    monkeypatch.setattr(ftune.checkpoint, "save_file", fill_up_at_the_fourth_save)
    cfg = ftune.load_config(overrides={"model.name": tiny_model, "data.train": str(reviews_csv),
                                       "data.text_column": "review", "data.label_column": "stars", **SETTINGS,
                                       "output_dir": str(tmp_path / "run")})
    with pytest.raises(RunError, match=r"cannot write step-0000008 in .*checkpoints \(No space left on device\); the "
                                       r"earlier checkpoints \(step-0000004, step-0000006\) are intact: free space"):
        ftune.train(cfg, quiet=True)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"

    monkeypatch.setattr(ftune.checkpoint, "save_file", real_save_file)  # space freed
    resumed = ftune.train(cfg, resume=True, quiet=True)
    assert resumed.metrics["test"]["finetuned"]["loss"] == \
        pytest.approx(uninterrupted.metrics["test"]["finetuned"]["loss"], abs=1e-6)
