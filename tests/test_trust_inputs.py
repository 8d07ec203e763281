"""Input ftune reads but did not write (a prediction file, a received run folder, a space file, a token cache, a
storage URL): nothing lost, nothing exhausted, one line instead of a traceback (issue: trust in inputs)."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ftune
from ftune.config import load_config, to_yaml, validate
from ftune.errors import ConfigError, DataError, RunError
from ftune.run import Run
from helpers import ftune_cli, synthetic_reviews

BOMB = "".join(["a0: &a0 [x,x,x,x,x,x,x,x,x]\n"] +
               [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 8)])  # 9**8 values, 400 bytes


@pytest.fixture(scope="module")
def runs(tiny_model, reviews_csv, tmp_path_factory):
    """A finished classification run and a LoRA run whose base is given by a relative path."""
    root = tmp_path_factory.mktemp("trust-inputs")
    base = {"model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
            "data.label_column": "stars", "data.max_length": 32, "train.epochs": 1, "train.batch_size": 16,
            "train.learning_rate": 3e-3, "train.warmup_ratio": 0.0, "tracking.backend": "none",
            "train.baselines": False}
    full = ftune.train(load_config(overrides={**base, "output_dir": str(root / "full")}), quiet=True)
    shutil.copytree(tiny_model, root / "base" / "model")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        lora = ftune.train(load_config(overrides={**base, "model.name": "base/model", "method.name": "lora",
                                                  "output_dir": str(root / "lora")}), quiet=True)
    return {"root": root, "full": full.path, "lora": lora.path}


# 1. predict's JSON output keeps the input's fields; the output may be the input file
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_predict_json_output_keeps_every_input_field_even_over_the_input(runs, tmp_path, monkeypatch, capsys, suffix):
    data = tmp_path / "data.jsonl"
    rows = [{"id": 7, "review": "a superb film", "meta": {"by": ["ann"]}}, {"id": 8, "review": "dull", "note": "x"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = data if suffix == ".jsonl" else tmp_path / "out.json"
    code, _, err = ftune_cli(monkeypatch, capsys, "predict", str(runs["full"]), "--input", str(data), "--output",
                             str(target))
    assert code == 0, err
    text = target.read_text()
    written = [json.loads(line) for line in text.splitlines()] if suffix == ".jsonl" else json.loads(text)
    assert [(r["id"], r["review"]) for r in written] == [(7, "a superb film"), (8, "dull")]
    assert written[0]["meta"] == {"by": ["ann"]} and written[1]["note"] == "x" and written[0]["note"] is None
    assert all({"label", "score", "scores"} <= set(r) for r in written)
    assert not list(tmp_path.glob(".*ftune-tmp"))  # the temp file was renamed over the output


# 8. --output a folder, a missing folder, a file that is not ours to write; 9. a lone surrogate in --text
@pytest.mark.parametrize("args, message", [
    (["--text", "ok", "--output", "{tmp}"], "is a folder; pass a file name"),
    (["--text", "ok", "--output", "{tmp}/no/such/p.csv"], "does not exist; create it"),
    (["--text", "ok", "--output", "/proc/version"], "write predictions to a file ending in .csv"),
    (["--text", "ok", "--output", "/proc/p.csv"], "cannot write --output /proc/p.csv"),
    (["--text", "fine", "--text", "bad \udcff byte"], "--text 2: not valid UTF-8"),
])
def test_predict_bad_output_or_text_is_one_line(runs, tmp_path, monkeypatch, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(runs["full"]), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and out == ""
    assert Path("/proc/version").read_text().startswith("Linux")


# 2. a LoRA run names its base by absolute path and its weights' sha256; a base changed in place is refused
def test_lora_base_is_absolute_and_a_changed_base_is_refused(runs, monkeypatch, tmp_path, capsys):
    manifest = json.loads((runs["lora"] / "run.json").read_text())
    base = runs["root"] / "base" / "model"
    assert manifest["model_source"] == str(base.resolve())
    assert set(manifest["base_sha256"]) == {"model.safetensors"}
    elsewhere = tmp_path / "elsewhere"  # another folder with another runs/base/model: not used
    shutil.copytree(base, elsewhere / "base" / "model")
    monkeypatch.chdir(elsewhere)
    assert ftune.Run(runs["lora"]).predict(["a superb film"])[0]["label"] in ("pos", "neg")

    from safetensors.torch import load_file, save_file

    weights = load_file(base / "model.safetensors")
    original = (base / "model.safetensors").read_bytes()
    name = next(iter(weights))
    save_file({**weights, name: weights[name] + 1}, base / "model.safetensors", metadata={"format": "pt"})
    try:
        code, _, err = ftune_cli(monkeypatch, capsys, "predict", str(runs["lora"]), "--text", "a superb film")
    finally:
        (base / "model.safetensors").write_bytes(original)
    assert code == 2 and "that base's weights changed since training (model.safetensors" in err


# 3. a label column that is an id: every held-out label unseen
def test_an_id_as_label_column_is_refused_before_training(tiny_config, tmp_path):
    frame = synthetic_reviews(300).assign(id=[f"r{i:04d}" for i in range(300)])
    frame.to_csv(tmp_path / "ids.csv", index=False)
    with pytest.raises(DataError, match=r"label column 'id' has 300 distinct values .*set data.label_column"):
        ftune.train(tiny_config(**{"data.train": str(tmp_path / "ids.csv"), "data.label_column": "id"}), quiet=True)
    frame.assign(id=range(300)).to_csv(tmp_path / "numbers.csv", index=False)
    with pytest.raises(DataError, match="if it is a number to predict, use task: regression"):
        ftune.train(tiny_config(**{"data.train": str(tmp_path / "numbers.csv"), "data.label_column": "id"}), quiet=True)
    assert not (tmp_path / "run").exists()


# 4. YAML alias bombs in a received run's config.yaml and in a tune space file; oversized run json
def test_alias_bombs_in_a_run_folder_and_a_space_file_are_refused(runs, tiny_config, tmp_path, monkeypatch, capsys):
    run = tmp_path / "received"
    shutil.copytree(runs["full"], run)
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(BOMB + config.replace("task:\n  name: classification", "task:\n  name: *a7"))
    for command in (["predict", str(run), "--text", "hi"], ["report", str(run)], ["export", str(run)]):
        code, _, err = ftune_cli(monkeypatch, capsys, *command)
        assert code == 2 and "more than 100,000 values once YAML aliases are expanded" in err and len(err) < 400
    space = tmp_path / "space.yaml"
    space.write_text(BOMB + "train.epochs: {choices: *a7}\n")
    from ftune.tune import load_space

    with pytest.raises(ConfigError, match="100,000 values"):
        load_space(space, tiny_config())
    medium = "".join(["a0: &a0 [x,x,x,x,x,x,x,x,x]\n"] +  # 9**5 values: under the limit, still never printed
                     [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 5)])
    import yaml

    with pytest.raises(ConfigError) as caught:
        validate(yaml.safe_load(medium + "task: {name: *a4}\n"))
    assert "task.name must be one of" in str(caught.value) and len(str(caught.value)) < 400


def test_oversized_json_in_a_run_folder_is_refused(runs, tmp_path, monkeypatch):
    from ftune import integrity

    run = tmp_path / "received"
    shutil.copytree(runs["full"], run)
    monkeypatch.setattr(integrity, "MAX_JSON_BYTES", 20_000)  # the real limit, 64 MB, is too large to write in a test
    (run / "metrics.json").write_text(json.dumps({"test": {}, "pad": "x" * 30_000}))
    with pytest.raises(RunError, match="metrics.json is larger than 20,000 bytes, far more than ftune writes there"):
        Run(run)


# 5. one very long line on stdin: tokenized to the window, not echoed whole
def test_a_huge_stdin_line_is_read_to_the_window_and_not_echoed(runs, monkeypatch, capsys):
    words = ["great", "awful", "film", "plot", "the"] * 100_000  # 2.5 MB of text, one line
    text = " ".join(words)
    monkeypatch.setattr(sys, "stdin", io.StringIO(text + "\n"))
    code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(runs["full"]), "--input", "-")
    answer = json.loads(out)
    assert code == 0, err
    assert len(out) < 2_000 and answer["text_chars"] == len(text) and answer["text"].endswith("…")
    assert answer["label"] == ftune.Run(runs["full"]).predict([" ".join(words[:200])])[0]["label"]


def test_long_texts_tokenize_as_the_whole_text_would(tiny_model):
    from transformers import AutoTokenizer

    from ftune.data.tokenize import _truncated

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = ["short one", "word " * 30_000, "x" * 50_000, " " * 40_000 + "late words"]  # words, no blank, blanks
    whole = tokenizer(texts, truncation=True, max_length=32)
    assert _truncated(texts, None, tokenizer, 32)["input_ids"] == whole["input_ids"]


# 6. distill --layers of a LoRA teacher
def test_distilling_a_lora_teacher_by_layers_trains_the_student(runs, monkeypatch, capsys, tmp_path):
    code, out, err = ftune_cli(monkeypatch, capsys, "distill", str(runs["lora"]), "--layers", "1", "--epochs", "1",
                               "--output-dir", str(tmp_path / "student"), "--set", "tracking.backend=none", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "student" / "run.json").read_text())["status"] == "complete"


# 7. seeds outside what numpy takes
@pytest.mark.parametrize("args, message", [
    (["--seeds", "99999999999999999999999999,0"], "is not a seed (a whole number from 0 to 4294967295)"),
    (["--seeds", "4294967296,0"], "seeds are whole numbers from 0 to 4294967295"),
    (["--set", "train.seed=-1"], "train.seed: Input should be greater than or equal to 0"),
    (["--set", "train.seed=4294967296"], "train.seed: Input should be less than or equal to 4294967295"),
])
def test_seeds_numpy_cannot_take_are_refused_before_a_run_folder(tiny_model, reviews_csv, tmp_path, monkeypatch,
                                                                 capsys, args, message):
    code, _, err = ftune_cli(monkeypatch, capsys, "train", "--model", tiny_model, "--data", str(reviews_csv),
                             "--text-column", "review", "--label-column", "stars", "--output-dir",
                             str(tmp_path / "r"), *args)
    assert code == 2 and message in err and not (tmp_path / "r").exists()


# 10. report on a metrics.json of another shape
@pytest.mark.parametrize("metrics", [[], {"test": 5}, {"test": {}, "train": [], "validation": 3},
                                     {"test": {"finetuned": {"accuracy": "x"}}}])
def test_report_of_a_metrics_json_of_another_shape_is_one_line(runs, tmp_path, monkeypatch, capsys, metrics):
    run = tmp_path / "edited"
    shutil.copytree(runs["full"], run)
    (run / "metrics.json").write_text(json.dumps(metrics))
    code, _, err = ftune_cli(monkeypatch, capsys, "report", str(run))
    assert code == 2 and "metrics.json" in err and len(err.strip().splitlines()) == 1


# 11. a task name that is not a name, with a key older configs kept under data
def test_a_list_as_task_name_with_a_legacy_key_is_one_line():
    with pytest.raises(ConfigError, match=r"task.name must be one of .* \(got \['a'\]\)"):
        validate({"task": {"name": ["a"]}, "data": {"long_text": {"strategy": "chunk"}}})


# 12. a damaged token cache entry is a miss
@pytest.mark.parametrize("damage", [b"", b"\x93NUMPY random", b"PK\x03\x04 not a zip", "pickle"])
def test_a_damaged_token_cache_entry_is_rebuilt(tiny_model, tmp_path, monkeypatch, damage):
    from transformers import AutoTokenizer

    from ftune.data.tokenize import encode

    monkeypatch.setenv("FTUNE_CACHE", str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    frame = pd.DataFrame({"text": ["a superb film", "dull"], "label": [1, 0]})
    first = encode(frame, tokenizer, 32)
    [entry] = (tmp_path / "tokens").glob("*.npz")
    if damage == "pickle":
        np.save(open(entry, "wb"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        entry.write_bytes(damage)
    again = encode(frame, tokenizer, 32)
    assert [x.tolist() for x in again.input_ids] == [x.tolist() for x in first.input_ids]
    assert [x.tolist() for x in encode(frame, tokenizer, 32).input_ids] == [x.tolist() for x in first.input_ids]
    assert entry.stat().st_size > 100  # written again whole


# 13. compare across tasks; run names too long for a folder name
def test_compare_refuses_runs_of_two_tasks_and_takes_long_names(runs, tmp_path, monkeypatch, capsys):
    other = tmp_path / "lm"
    shutil.copytree(runs["full"], other)
    raw = Run(other).config.model_dump(mode="json")
    raw["task"], raw["train"]["metric"] = {"name": "causal-lm"}, "loss"
    (other / "config.yaml").write_text(to_yaml(validate(raw)))
    code, _, err = ftune_cli(monkeypatch, capsys, "runs", "compare", str(runs["full"]), str(other))
    assert code == 2 and "is a classification run and" in err and "a causal-lm run" in err
    long = [tmp_path / ("a" * 199 + str(i)) for i in range(2)]
    for path in long:
        shutil.copytree(runs["full"], path)
    code, out, err = ftune_cli(monkeypatch, capsys, "runs", "compare", *map(str, long))
    assert code == 0, err
    [folder] = tmp_path.glob("compare-*")
    assert len(folder.name) <= 100 and (folder / "compare.html").is_file()


# 14. regression targets whose squares overflow or underflow
@pytest.mark.parametrize("targets, message", [
    ([1e308, -1e308], r"is beyond ±1e\+150, where squared errors overflow"),
    ([1e199, 2e199], r"is beyond ±1e\+150"),
    ([2.5e-301, 3.5e-301], "the training targets differ by at most 1e-301"),
])
def test_regression_targets_beyond_float_arithmetic_are_one_line(tiny_config, tmp_path, targets, message):
    frame = synthetic_reviews(60).assign(stars=[targets[i % 2] for i in range(60)])
    frame.to_csv(tmp_path / "far.csv", index=False)
    with pytest.raises(DataError, match=message):
        ftune.train(tiny_config(**{"data.train": str(tmp_path / "far.csv"), "task.name": "regression"}), quiet=True)
    assert not (tmp_path / "run").exists()


# 15. a kill between the two renames of an export swap
def test_an_export_left_aside_by_a_kill_is_restored(runs, tmp_path, monkeypatch, capsys):
    from ftune.integrity import remove_stale

    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that is no longer running: the export that was killed
    aside = tmp_path / f".deploy-{gone.pid}-old-abcd1234"
    shutil.copytree(runs["full"], aside)  # stands in for the old export: any folder the swap had renamed aside
    code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(tmp_path / "deploy"), "--text", "a superb film")
    assert code == 0, err
    assert (tmp_path / "deploy" / "run.json").is_file() and not aside.exists()
    shutil.move(tmp_path / "deploy", aside)  # the next export puts it back before it clears stale folders
    remove_stale(tmp_path, "deploy", lambda folder: True)
    assert (tmp_path / "deploy" / "run.json").is_file() and not aside.exists()


# 16. --storage: SQLite in memory, a password, MLflow's database
def test_tune_storage_memory_password_and_mlflow_database(tiny_config, tmp_path, monkeypatch):
    from ftune.tune import _claiming, shown, tune

    monkeypatch.chdir(tmp_path)
    with _claiming("sqlite:///:memory:"):
        pass
    assert list(tmp_path.iterdir()) == []  # no ':memory:.lock'
    assert shown("postgresql://bob:hunter2@db:5432/optuna") == "postgresql://bob:***@db:5432/optuna"
    with pytest.raises(ConfigError) as caught:
        tune(tiny_config(), 1, tmp_path / "study", "postgresql://bob:hunter2@127.0.0.1:1/optuna")
    assert "hunter2" not in str(caught.value) and "bob:***@" in str(caught.value)

    from mlflow import MlflowClient
    import sqlite3

    store = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{store}").search_experiments()  # creates MLflow's tables
    before = {row[0] for row in sqlite3.connect(store).execute("select name from sqlite_master where type='table'")}
    with pytest.raises(ConfigError, match="is an MLflow tracking database"):
        tune(tiny_config(), 1, tmp_path / "study", f"sqlite:///{store}")
    after = {row[0] for row in sqlite3.connect(store).execute("select name from sqlite_master where type='table'")}
    assert after == before and "studies" not in after


# 17. learning_rate: auto on a run of a few steps
def test_auto_rate_on_a_run_of_a_few_steps_takes_the_default_without_a_test(tiny_config, tmp_path):
    synthetic_reviews(40).to_csv(tmp_path / "few.csv", index=False)
    run = ftune.train(tiny_config(**{"data.train": str(tmp_path / "few.csv"), "train.learning_rate": "auto",
                                     "train.epochs": 1, "train.baselines": False}), quiet=True)
    rate = json.loads((run.path / "run.json").read_text())["learning_rate"]
    assert rate["value"] == 5e-5 and "optimizer steps, under 16" in rate["source"]
    assert not (run.path / "lr_find.json").exists()
