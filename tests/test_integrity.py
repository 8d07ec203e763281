"""Run and export folders as data someone hands you: no user file deleted, no write through a symlink, no answer
from a half-copied or edited folder, no code run without --trust-remote-code, one line instead of a traceback,
and a LoRA adapter that loads elsewhere with its label names."""

import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import ftune
from ftune import integrity
from ftune.errors import ModelError, RunError
from ftune.export import export_onnx
from ftune.models import ALIASES, HUB_IDS
from ftune.predictors import Predictor, load_predictor
from ftune.run import write_json
from helpers import ftune_cli

TEXTS = ["a superb film", "dull", "the acting was really quite excellent and the story was long but wonderful"]
HUB_ID = "ftune-test/tiny-bert"  # a hub id the tiny model is cached under, offline


@pytest.fixture(scope="module")
def runs(tiny_model, reviews_csv, tmp_path_factory):
    """A full run, its ONNX export, and a LoRA run whose base model is an alias (like `minilm`) with a hub id."""
    root = tmp_path_factory.mktemp("integrity")
    base = {"model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
            "data.label_column": "stars", "data.max_length": 32, "train.epochs": 1, "train.batch_size": 16,
            "train.learning_rate": 3e-3, "train.warmup_ratio": 0.0, "train.baselines": False,
            "tracking.backend": "none"}
    full = ftune.train(ftune.load_config(overrides=base | {"output_dir": str(root / "full")}), quiet=True).path
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(ALIASES, "tiny", lambda: tiny_model)
        patch.setitem(HUB_IDS, "tiny", HUB_ID)
        lora = ftune.train(ftune.load_config(overrides=base | {
            "model.name": "tiny", "method.name": "lora", "method.r": 4, "train.learning_rate": 1e-2,
            "output_dir": str(root / "lora")}), quiet=True).path
    return {"full": full, "lora": lora, "export": export_onnx(full, root / "export")}


def copy(runs, which: str, where: Path, manifest: bool = True) -> Path:
    """A copy of a fixture folder; manifest=False makes it look written before manifests existed."""
    folder = Path(shutil.copytree(runs[which], where / which))
    if not manifest:
        path = folder / ("export.json" if which == "export" else "run.json")
        info = json.loads(path.read_text())
        del info["sha256"]
        path.write_text(json.dumps(info))
    return folder


def one_line_error(code: int, err: str, *parts: str) -> None:
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for part in parts:
        assert part in err, err


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# 2. An export never deletes what is not its own.

def test_export_replaces_an_earlier_export_but_never_a_users_files(runs, tmp_path, monkeypatch, capsys):
    out = Path(shutil.copytree(runs["export"], tmp_path / "exp"))
    (out / "NOTES.md").write_text("mine")
    (out / "k8s").mkdir()
    (out / "k8s" / "deploy.yaml").write_text("mine")
    code, _, err = ftune_cli(monkeypatch, capsys, "export", str(runs["full"]), "--output", str(out))
    one_line_error(code, err, "holds files an export does not write (NOTES.md, k8s/)", "move them out")
    assert (out / "NOTES.md").read_text() == "mine" and (out / "k8s" / "deploy.yaml").read_text() == "mine"
    assert (out / "model.onnx").is_file()

    (out / "NOTES.md").unlink()
    shutil.rmtree(out / "k8s")
    killed = tmp_path / f".exp-{dead_pid()}-abcd1234"  # staging of an export killed mid-way, and one of ftune 0.1
    killed.mkdir()
    (killed / "model.onnx").write_bytes(b"half a graph")
    legacy = tmp_path / ".exp-q7_xk2ab"
    legacy.mkdir()
    (legacy / "tokenizer.json").write_text("{}")
    mine = tmp_path / ".exp-backup01"  # named like one, but holds a user's file: kept
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    old_inode = (out / "model.onnx").stat().st_ino
    code, _, err = ftune_cli(monkeypatch, capsys, "export", str(runs["full"]), "--output", str(out))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".exp-backup01", "exp"]  # no staging or old export left
    assert (mine / "notes.txt").read_text() == "mine" and (out / "model.onnx").stat().st_ino != old_inode
    info = json.loads((out / "export.json").read_text())
    assert set(info["sha256"]) == {p.name for p in out.iterdir()} - {"export.json"}


def test_the_swap_renames_the_old_folder_aside_and_removes_it_last(tmp_path, monkeypatch):
    target = tmp_path / "exp"
    target.mkdir()
    (target / "model.onnx").write_text("old")
    events = []
    replace, rmtree = os.replace, shutil.rmtree

    def renamed(source, destination):
        events.append(("rename", Path(destination).name))
        replace(source, destination)

    def removed(path, **kwargs):
        events.append(("remove", Path(path).name))
        rmtree(path, **kwargs)

    monkeypatch.setattr(integrity.os, "replace", renamed)
    monkeypatch.setattr(integrity.shutil, "rmtree", removed)
    with integrity.staged_dir(target) as staging:
        (staging / "model.onnx").write_text("new")
    aside = events[0][1]
    assert aside.startswith(f".exp-{os.getpid()}-old-")
    assert events[:3] == [("rename", aside), ("rename", "exp"), ("remove", aside)]  # never delete-then-copy
    assert (target / "model.onnx").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["exp"]


# 3. A symlink in a run folder is replaced, never written through.

def test_report_replaces_symlinks_in_the_run_instead_of_writing_through_them(runs, tmp_path, monkeypatch, capsys):
    run = copy(runs, "full", tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("report.html", "report.md", "plots/curves.png", "metrics.json.tmp"):  # .tmp: the old writer's name
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(victim)
    code, _, err = ftune_cli(monkeypatch, capsys, "report", str(run))
    assert code == 0, err
    write_json(run / "metrics.json", json.loads((run / "metrics.json").read_text()))  # run.py's writer too
    assert victim.read_text() == "precious"
    assert not any((run / name).is_symlink() for name in ("report.html", "report.md", "plots/curves.png"))
    assert (run / "report.html").read_text().startswith("<!doctype html>")
    assert not [p for p in run.rglob("*") if p.name.endswith(integrity.TMP_SUFFIX)]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(run / "plots")
    (run / "plots").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = ftune_cli(monkeypatch, capsys, "report", str(run))
    one_line_error(code, err, "plots is a symbolic link", "remove it")
    assert not any(elsewhere.iterdir()) and victim.read_text() == "precious"


# 4. A missing or changed file is refused, naming the file and the fix.

def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("which, manifest, damage, file, message", [
    ("full", True, "remove", "model/tokenizer.json", "model/tokenizer.json is missing (listed in run.json)"),
    ("full", True, "cut", "model/model.safetensors", "model/model.safetensors is not the file that was written"),
    ("lora", True, "remove", "adapter/adapter_model.safetensors", "adapter_model.safetensors is missing"),
    ("export", True, "remove", "tokenizer.json", "tokenizer.json is missing (listed in export.json)"),
    ("export", True, "cut", "model.onnx", "model.onnx is not the file that was written"),
    ("full", False, "remove", "model/tokenizer.json", "has no vocabulary"),  # folders written before manifests
    ("export", False, "remove", "tokenizer.json", "has no vocabulary"),
])
def test_a_missing_or_changed_file_is_refused(which, manifest, damage, file, message, runs, tmp_path, monkeypatch,
                                              capsys):
    folder = copy(runs, which, tmp_path, manifest)
    _cut(folder / file) if damage == "cut" else (folder / file).unlink()
    code, _, err = ftune_cli(monkeypatch, capsys, "predict", str(folder), "--text", "dull")
    fix = "export the run again" if which == "export" else "train the run again"
    one_line_error(code, err, message, fix)


def test_folders_written_before_manifests_still_load(runs, tmp_path):
    expected = Predictor(runs["full"]).logits(TEXTS)
    old_run = copy(runs, "full", tmp_path, manifest=False)
    np.testing.assert_allclose(Predictor(old_run).logits(TEXTS), expected, atol=1e-6)
    assert load_predictor(copy(runs, "export", tmp_path, manifest=False)).predict(TEXTS)[0]["label"] in ("neg", "pos")


# 8. A run's config alone never makes ftune run code from its folder.

def test_a_run_asking_to_run_its_code_needs_trust_remote_code(runs, tmp_path, monkeypatch, capsys):
    run = copy(runs, "full", tmp_path)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("trust_remote_code: false", "trust_remote_code: true"))
    for args in (["predict", str(run), "--text", "dull"], ["eval", str(run), "--data", "x.csv"],
                 ["export", str(run), "--output", str(tmp_path / "exp")], ["serve", str(run), "--port", "1"]):
        code, _, err = ftune_cli(monkeypatch, capsys, *args)
        one_line_error(code, err, "config.yaml sets model.trust_remote_code: true", "pass --trust-remote-code")
    code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(run), "--text", "dull", "--trust-remote-code")
    assert code == 0 and json.loads(out)["label"] == Predictor(runs["full"]).predict(["dull"])[0]["label"], err
    with pytest.raises(RunError, match="trust_remote_code"):
        ftune.evaluate(run, "unused.csv")
    code, out, _ = ftune_cli(monkeypatch, capsys, "generate", "--help")
    assert code == 0 and "--trust-remote-code" in out


# 12. Labels out of the model's order, or of the wrong count.

def test_labels_out_of_order_or_of_the_wrong_count_are_refused(runs, tmp_path, monkeypatch, capsys):
    def predict(folder):
        return ftune_cli(monkeypatch, capsys, "predict", str(folder), "--text", "dull")

    full, lora, export = (copy(runs, name, tmp_path, manifest=False) for name in ("full", "lora", "export"))
    for run, trained_in in ((full, "model/config.json"), (lora, "adapter/labels.json")):
        (run / "labels.json").write_text('["pos", "neg"]')
        one_line_error(*predict(run)[::2], "labels.json names class 0 'pos' but the model was trained with 'neg'",
                       trained_in)
    swapped = copy(runs, "full", tmp_path / "with-manifest")
    (swapped / "labels.json").write_text('["pos", "neg"]')
    one_line_error(*predict(swapped)[::2], "labels.json is not the file that was written")
    (export / "labels.json").write_text('["pos"]')
    one_line_error(*predict(export)[::2], "names 1 labels but model.onnx gives 2 logits per text")
    (export / "labels.json").write_text('["neg", "pos", "meh"]')
    one_line_error(*predict(export)[::2], "names 3 labels but model.onnx gives 2 logits per text")


# 14. Tampered files: one line naming the file and the fix, never a traceback.

@pytest.mark.parametrize("which, name, content, message", [
    ("full", "labels.json", '{"neg": 0}', "labels.json is not a list of distinct label names"),
    ("full", "labels.json", '["neg", 1]', "labels.json is not a list of distinct label names"),
    ("full", "labels.json", '["neg", "neg"]', "labels.json is not a list of distinct label names"),
    ("full", "labels.json", '["neg", ', "labels.json cannot be read as JSON"),
    ("export", "labels.json", "", "labels.json cannot be read as JSON"),
    ("export", "export.json", "{not json", "export.json cannot be read as JSON"),
    ("export", "export.json", "[]", "export.json is not an ftune export description"),
    ("export", "export.json", {"max_length": None}, "'max_length' is missing or not a whole number"),
    ("export", "export.json", {"files": {"fp32": "../../etc/passwd"}}, "names '../../etc/passwd', which is not a"),
    ("export", "export.json", {"files": {"fp32": "/etc/passwd"}}, "names '/etc/passwd', which is not a file inside"),
    ("export", "export.json", {"sha256": {"../../etc/passwd": "0"}}, "names '../../etc/passwd', which is not a"),
    ("export", "export.json", {"files": {"fp16": "model.onnx"}}, "'files' must map fp32 and/or int8 to model files"),
])
def test_a_tampered_file_is_one_line(which, name, content, message, runs, tmp_path, monkeypatch, capsys):
    folder = copy(runs, which, tmp_path, manifest=name != "labels.json")  # labels.json: past the hash, to its checks
    if isinstance(content, dict):
        content = json.dumps(json.loads((folder / name).read_text()) | content)
    (folder / name).write_text(content)
    code, _, err = ftune_cli(monkeypatch, capsys, "predict", str(folder), "--text", "dull")
    one_line_error(code, err, message, "export the run again" if which == "export" else "train the run again")


def test_a_file_that_links_outside_its_folder_is_not_read(runs, tmp_path, monkeypatch, capsys):
    outside = tmp_path / "outside.json"
    outside.write_text('["secret-a", "secret-b"]')
    for folder, name in ((copy(runs, "export", tmp_path, manifest=False), "labels.json"),
                         (copy(runs, "full", tmp_path / "run", manifest=False), "labels.json")):
        (folder / name).unlink()
        (folder / name).symlink_to(outside)
        code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(folder), "--text", "dull")
        one_line_error(code, err, f"{name} is a symbolic link that leads outside")
        assert "secret" not in out + err


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cut_short_or_pickled_weights_are_one_line_without_weights_only_advice(runs, tiny_model, tmp_path, monkeypatch,
                                                                                capsys):
    marker = tmp_path / "code-ran"
    run = copy(runs, "full", tmp_path, manifest=False)
    _cut(run / "model" / "model.safetensors")
    one_line_error(*ftune_cli(monkeypatch, capsys, "predict", str(run), "--text", "dull")[::2],
                   "model/model.safetensors is not a whole safetensors file", "train the run again")
    (run / "model" / "model.safetensors").unlink()
    torch.save({"x": _RunsCode(str(marker))}, run / "model" / "pytorch_model.bin")
    code, _, err = ftune_cli(monkeypatch, capsys, "predict", str(run), "--text", "dull")
    one_line_error(code, err, "has no safetensors weights", "loads no pickled weights")

    base = Path(shutil.copytree(tiny_model, tmp_path / "base"))  # a base model folder (a LoRA run's) with a pickle
    (base / "model.safetensors").unlink()
    with open(base / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _RunsCode(str(marker))}, f)
    from ftune.models import load_classifier

    with pytest.raises(ModelError, match="pickled weights that hold more than tensors") as caught:
        load_classifier(str(base), ["neg", "pos"])
    assert "weights_only" not in str(caught.value) and "weights_only" not in err and not marker.exists()


# The LoRA adapter outside ftune.

def hub_cache(root: Path, repo_id: str, model_dir: str) -> Path:
    """The hub's cache layout (models--ORG--NAME/snapshots/REV and refs/main) holding a local model under `repo_id`."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return root


def test_the_lora_adapter_loads_elsewhere_with_the_runs_labels_and_predictions(runs, tiny_model, tmp_path):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    adapter = Path(shutil.copytree(runs["lora"] / "adapter", tmp_path / "elsewhere" / "adapter"))
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    assert f"base_model: {HUB_ID}" in (adapter / "README.md").read_text()  # peft's model card
    labels = json.loads((adapter / "labels.json").read_text())
    assert labels == ["neg", "pos"]
    cache = str(hub_cache(tmp_path / "hub", HUB_ID, tiny_model))  # the base model, found by its hub id offline
    names = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
             "label2id": {name: i for i, name in enumerate(labels)}}
    ours = Predictor(runs["lora"])  # ftune itself loads the base model from this machine (run.json's model_source)
    expected = ours.predict(TEXTS)

    model = AutoPeftModelForSequenceClassification.from_pretrained(str(adapter), cache_dir=cache, **names).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits.numpy()
    np.testing.assert_allclose(logits, ours.logits(TEXTS), atol=1e-5)
    assert [model.config.id2label[int(i)] for i in logits.argmax(1)] == [e["label"] for e in expected]

    classifier = pipeline("text-classification", model=str(adapter), model_kwargs={"cache_dir": cache, **names})
    got = classifier(TEXTS)
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)
