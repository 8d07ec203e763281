"""Two processes on CPU (torchrun, gloo): same result as one process with the same global batch, one run
directory, exact resume; and the launcher's and strategies' errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import ftune
from ftune.distributed import torchrun_command, without_launch_options
from ftune.errors import ConfigError, RunError
from helpers import ftune_cli

# Global micro-batch 8 and 2 accumulation steps in both runs: 1 process x 8, or 2 processes x 4.
COMMON = {"data.max_length": 32, "train.epochs": 2, "train.learning_rate": 3e-3, "train.warmup_ratio": 0.0,
          "train.group_by_length": False, "train.gradient_accumulation_steps": 2, "train.save_total_limit": 5,
          "tracking.backend": "none"}


def ftune_subprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftune", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def train_args(tiny_model, reviews_csv, output_dir, batch_size: int) -> list[str]:
    args = ["train", "--model", tiny_model, "--data", str(reviews_csv), "--text-column", "review", "--label-column",
            "stars", "--batch-size", str(batch_size), "--output-dir", str(output_dir), "--quiet"]
    for key, value in COMMON.items():
        args += ["--set", f"{key}={value}"]
    return args


@pytest.fixture(scope="module")
def runs(tiny_model, reviews_csv, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    one = ftune.train(ftune.load_config(overrides={
        "model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
        "data.label_column": "stars", "train.batch_size": 8, "output_dir": str(root / "one"), **COMMON}), quiet=True)
    done = ftune_subprocess(*train_args(tiny_model, reviews_csv, root / "two", 4), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    return root, one, ftune.Run(root / "two"), done


@pytest.mark.e2e
def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    root, one, two, done = runs
    a, b = one.metrics, two.metrics
    assert b["train"]["processes"] == 2 and a["train"]["processes"] == 1
    assert b["train"]["steps"] == a["train"]["steps"] and b["train"]["samples_seen"] == a["train"]["samples_seen"]
    assert b["test"]["finetuned"]["loss"] == pytest.approx(a["test"]["finetuned"]["loss"], abs=1e-4)
    assert b["test"]["finetuned"]["accuracy"] == a["test"]["finetuned"]["accuracy"]
    assert [h["validation"]["loss"] for h in b["validation"]["history"]] == \
        pytest.approx([h["validation"]["loss"] for h in a["validation"]["history"]], abs=1e-4)
    assert b["test"]["finetuned"]["n"] == a["test"]["finetuned"]["n"]  # every test text scored once, none twice
    assert done.stdout.count("run directory:") == 1  # one process reports
    assert sorted(p.name for p in root.iterdir()) == ["one", "two"]  # one run directory
    assert sorted(p.name for p in (two.path / "checkpoints").iterdir()) == ["best", "step-0000018", "step-0000036"]


@pytest.mark.e2e
def test_an_interrupted_two_process_run_resumes_to_the_same_end(runs, tiny_model, reviews_csv):
    root, _, two, _ = runs
    cut = root / "cut"  # as if killed right after epoch 1's checkpoint: drop everything written later
    shutil.copytree(two.path, cut)
    shutil.rmtree(cut / "checkpoints" / "step-0000036")
    for name in ("model", "metrics.json", "labels.json", "report.md", "report.html"):
        shutil.rmtree(cut / name) if (cut / name).is_dir() else (cut / name).unlink()
    shutil.copytree(cut / "checkpoints" / "step-0000018", cut / "checkpoints" / "best", dirs_exist_ok=True)
    manifest = json.loads((cut / "run.json").read_text())
    (cut / "run.json").write_text(json.dumps({**manifest, "status": "running"}))
    try:
        with pytest.raises(RunError, match=r"written by 2 process\(es\); resume with --nproc 2"):
            ftune.train(ftune.load_config(overrides={
                "model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
                "data.label_column": "stars", "train.batch_size": 4, "output_dir": str(cut), **COMMON}),
                resume=True, quiet=True)
        # Launched by torchrun itself this time, as a cluster script would.
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "ftune", *train_args(tiny_model, reviews_csv, cut, 4), "--resume"],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        resumed = ftune.Run(cut)
        assert resumed.metrics["test"]["finetuned"]["loss"] == pytest.approx(two.metrics["test"]["finetuned"]["loss"],
                                                                             abs=1e-6)
        assert resumed.metrics["train"]["steps"] == two.metrics["train"]["steps"]
    finally:
        shutil.rmtree(cut)


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharded_strategies_on_cpu_stop_before_launching(strategy, monkeypatch, capsys, tmp_path):
    code, _, err = ftune_cli(monkeypatch, capsys, "train", "--nproc", "2", "--set", f"distributed.strategy={strategy}",
                             "--output-dir", str(tmp_path / "run"))
    assert code == 2 and f"distributed.strategy={strategy} shards the model across GPU memory and needs CUDA" in err
    assert not (tmp_path / "run").exists()


def test_launcher_options_stay_with_the_launcher():
    argv = ["train", "cfg.yaml", "--nproc", "2", "--nnodes=2", "--node-rank", "1", "--master-addr", "10.0.0.1",
            "--master-port=29501", "--set", "train.epochs=1"]
    assert without_launch_options(argv) == ["train", "cfg.yaml", "--set", "train.epochs=1"]
    command = torchrun_command(argv, 2, 2, 1, "10.0.0.1", 29501)
    assert command[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1",
                           "--master-addr", "10.0.0.1", "--master-port", "29501", "-m", "ftune", "train", "cfg.yaml",
                           "--set", "train.epochs=1"]
    with pytest.raises(ConfigError, match="--nnodes > 1 needs --master-addr"):
        torchrun_command(argv, 2, 2, 1, None, 29500)
