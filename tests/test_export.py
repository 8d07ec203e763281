"""ONNX export on the tiny model: parity with PyTorch, int8, LoRA merge, and prediction from the export."""

import json

import numpy as np
import onnx
import pytest

import ftune
from ftune.export import export_onnx
from ftune.predictors.onnx import OnnxPredictor
from ftune.predictors import Predictor, load_predictor
from helpers import ftune_cli

pytestmark = pytest.mark.e2e  # trains whole runs: make test-quick leaves this module out

TEXTS = ["a superb film", "dull", "the acting was really quite excellent and the story was long but wonderful",
         "story plot boring old"]


@pytest.fixture(scope="module")
def runs(tiny_model, reviews_csv, tmp_path_factory):
    """A full run and a LoRA run (adapter only, not merged) of the tiny model."""
    root = tmp_path_factory.mktemp("export-runs")
    base = {"model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
            "data.label_column": "stars", "data.max_length": 32, "train.epochs": 2, "train.batch_size": 16,
            "train.learning_rate": 3e-3, "train.warmup_ratio": 0.0, "train.baselines": False, "tracking.backend": "none"}
    full = ftune.train(ftune.load_config(overrides=base | {"output_dir": str(root / "full")}), quiet=True)
    lora = ftune.train(ftune.load_config(overrides=base | {"method.name": "lora", "method.r": 4,
                                                           "output_dir": str(root / "lora")}), quiet=True)
    return {"full": full.path, "lora": lora.path}


def test_export_matches_pytorch_and_int8_is_smaller(runs, tmp_path):
    folder = export_onnx(runs["full"], tmp_path / "export", quantize="int8")
    info = json.loads((folder / "export.json").read_text())
    parity = info["parity"]
    assert parity["texts"] == 80 and parity["onnx-fp32"]["max_abs_diff"] < 1e-4
    assert parity["onnx-fp32"]["accuracy"] == parity["pytorch"]["accuracy"]
    assert parity["onnx-int8"]["bytes"] < parity["onnx-fp32"]["bytes"]
    assert {p.name for p in folder.iterdir()} >= {"model.onnx", "model.int8.onnx", "labels.json", "tokenizer.json"}

    graph = onnx.load(str(folder / "model.onnx")).graph
    names = [i.name for i in graph.input]
    assert names == info["inputs"] == ["input_ids", "token_type_ids", "attention_mask"]  # the tokenizer's own
    for tensor in graph.input:  # batch and sequence axes are symbolic, so any size runs
        assert all(d.dim_param for d in tensor.type.tensor_type.shape.dim)

    torch_logits = Predictor(runs["full"]).logits(TEXTS)
    for texts in (TEXTS, TEXTS[:1]):  # a mixed-length batch, and a single text
        onnx_logits = OnnxPredictor(folder, "fp32").logits(texts)
        assert np.abs(onnx_logits - torch_logits[: len(texts)]).max() < 1e-4
    int8 = load_predictor(folder)  # int8 activations are scaled per batch: labels agree, not logits
    assert int8.kind == "onnx-int8" and int8.describe()["labels"] == ["neg", "pos"]
    assert parity["onnx-int8"]["same_label_as_pytorch"] >= 0.9 and len(int8.predict(TEXTS)) == 4


def test_lora_run_is_merged_before_export(runs, tmp_path):
    folder = export_onnx(runs["lora"], tmp_path / "lora-export")
    parity = json.loads((folder / "export.json").read_text())["parity"]
    assert parity["onnx-fp32"]["max_abs_diff"] < 1e-4 and "onnx-int8" not in parity
    assert not any("lora" in node.name.lower() for node in onnx.load(str(folder / "model.onnx")).graph.node)
    assert load_predictor(folder).kind == "onnx-fp32"


def test_cli_export_then_predict_from_the_export(runs, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "cli-export"
    code, out, err = ftune_cli(monkeypatch, capsys, "export", str(runs["full"]), "--format", "onnx", "--quantize", "int8",
                               "--output", str(folder))
    assert code == 0, err
    assert "onnx-int8" in out and "parity on 80 held-out texts" in out
    code, out, _ = ftune_cli(monkeypatch, capsys, "predict", str(folder), "--variant", "fp32", *sum((["--text", t] for t in TEXTS), []))
    expected = [r["label"] for r in Predictor(runs["full"]).predict(TEXTS)]
    assert code == 0 and [json.loads(line)["label"] for line in out.splitlines()] == expected

    before = (folder / "model.onnx").stat().st_mtime_ns  # a failed export leaves the earlier one as it was
    code, _, err = ftune_cli(monkeypatch, capsys, "export", str(runs["full"]), "--output", str(folder),
                             "--data", str(tmp_path / "missing.csv"))
    assert code == 2 and "missing.csv" in err and (folder / "model.onnx").stat().st_mtime_ns == before


@pytest.mark.parametrize("args, message", [
    (["export", "{full}", "--quantize", "int4"], "--quantize 'int4' is not supported"),
    (["export", "{full}", "--format", "tflite"], "--format 'tflite' is not supported"),
    (["export", "{full}", "--output", "{busy}"], "exists and is not an ftune export"),
    (["predict", "{full}", "--variant", "int8", "--text", "x"], "--variant applies to an export"),
])
def test_export_user_errors(args, message, runs, tmp_path, monkeypatch, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    args = [a.format(full=runs["full"], busy=tmp_path / "busy") for a in args]
    code, _, err = ftune_cli(monkeypatch, capsys, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"


def test_ort_format_is_onnx_runtimes_mobile_file_and_answers_as_the_graph(runs, tmp_path):
    from ftune.export import export_model

    folder = export_model(runs["full"], tmp_path / "ort", quantize="int8", format="ort")
    info = json.loads((folder / "export.json").read_text())
    assert info["files"] == {"fp32": "model.ort", "int8": "model.int8.ort"} and not list(folder.glob("*.onnx"))
    assert info["parity"]["ort-fp32"]["max_abs_diff"] < 1e-4 and info["parity"]["ort-int8"]["same_label_as_pytorch"] >= 0.9
    predictor = load_predictor(folder, "fp32")
    assert predictor.kind == "ort-fp32"
    assert np.abs(predictor.logits(TEXTS) - Predictor(runs["full"]).logits(TEXTS)).max() < 1e-4
    assert "ORT format" in (folder / "README.md").read_text() and load_predictor(folder).kind == "ort-int8"
