"""An export folder as a first-class model: it documents itself (README.md, config.json), says which of its models
answers, and scores with `ftune eval` as its run does."""

import json
import re
import subprocess
import sys

import pytest

import ftune
from ftune.export import export_onnx
from ftune.predictors import load_predictor
from helpers import ftune_cli, synthetic_reviews

pytestmark = pytest.mark.e2e  # trains a run and exports it

TEXTS = ["a superb film", "dull", "the acting was really quite excellent and the story was long but wonderful",
         "story plot boring old", " ".join(["the movie was long and the plot was thin"] * 8) + " but brilliant"]
LOCAL_PATH = re.compile(r"(?<![\w.:/])/(?:tmp|home|root|work|Users|var|opt)/")


@pytest.fixture(scope="module")
def run_and_export(tiny_model, reviews_csv, tmp_path_factory):
    root = tmp_path_factory.mktemp("export-docs")
    cfg = ftune.load_config(overrides={
        "model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
        "data.label_column": "stars", "data.max_length": 32, "train.epochs": 3, "train.batch_size": 16,
        "train.learning_rate": 1e-2, "train.warmup_ratio": 0.0, "tracking.backend": "none",
        "output_dir": str(root / "run")})
    run = ftune.train(cfg, quiet=True)
    return run.path, export_onnx(run.path, root / "export", quantize="int8")


def test_the_export_folder_documents_itself(run_and_export):
    from transformers import AutoConfig

    run_dir, export = run_and_export
    config = AutoConfig.from_pretrained(str(export))  # what onnxruntime and optimum users read beside the graph
    assert config.id2label == {0: "neg", 1: "pos"} and config.label2id == {"neg": 0, "pos": 1}
    assert config.architectures == ["BertForSequenceClassification"]
    info = json.loads((export / "export.json").read_text())
    assert set(info["sha256"]) == {p.name for p in export.iterdir()} - {"export.json"}  # README and config covered
    assert info["label_column"] == "stars" and info["text_column"] == "review"

    readme = (export / "README.md").read_text()
    run = ftune.Run(run_dir)
    test = run.metrics["test"]["finetuned"]
    assert f"The run's test accuracy: {test['accuracy']:.4f}" in readme and "(labels: neg, pos)" in readme
    assert "a local model (" in readme and "method: full" in readme
    for name in ("model.onnx", "model.int8.onnx", "config.json", "tokenizer.json", "labels.json", "export.json"):
        assert f"| {name}" in readme
    parity = info["parity"]
    for name in ("onnx-fp32", "onnx-int8"):  # export.json's parity figures, as export printed them
        row = parity[name]
        assert (f"| {name} | {row['accuracy']:.4f} | {row['max_abs_diff']:.2g} | {row['same_label_as_pytorch']:.1%} | "
                f"{row['bytes'] / 1e6:.1f} |") in readme
    assert not LOCAL_PATH.search(readme), LOCAL_PATH.search(readme)


def run_snippet(code: str, folder) -> list[dict]:
    """The README's code on TEXTS, in a fresh interpreter, in the export folder: what a user pasting it gets."""
    code, swapped = re.subn(r"^texts = \[.*\]$", f"texts = {TEXTS!r}", code, flags=re.M)
    assert swapped == 1 and "ftune" not in code
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_readme_code_runs_without_ftune_and_agrees_with_predict(run_and_export, monkeypatch, capsys):
    from ftune.export_card import onnx_snippet

    _, export = run_and_export
    [code] = re.findall(r"```python\n(.*?)```", (export / "README.md").read_text(), re.S)
    assert "from tokenizers import Tokenizer" in code
    status, out, _ = ftune_cli(monkeypatch, capsys, "predict", str(export), "--variant", "fp32",
                               *sum((["--text", t] for t in TEXTS), []))
    ours = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and {r["label"] for r in ours} == {"neg", "pos"}  # a model that learned: a mix-up would show

    predictor = load_predictor(export, "fp32")
    slow = type("SlowTokenizer", (), {"is_fast": False})()  # a folder without tokenizer.json: transformers' tokenizer
    for snippet in (code, onnx_snippet(predictor.info, predictor.task, slow, len(predictor.labels))):
        theirs = run_snippet(snippet, export)
        assert [r["label"] for r in theirs] == [r["label"] for r in ours]
        assert [r["score"] for r in theirs] == pytest.approx([r["score"] for r in ours], abs=1e-5)


def test_predict_and_serve_say_which_model_answers(run_and_export, monkeypatch, capsys):
    from fastapi.testclient import TestClient

    from ftune.serve import create_app

    _, export = run_and_export
    agreed = json.loads((export / "export.json").read_text())["parity"]["onnx-int8"]["same_label_as_pytorch"]
    code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(export), "--text", "dull")
    assert code == 0 and json.loads(out)["label"] in ("neg", "pos")  # stdout: the answers only
    assert err == (f"using onnx-int8 (export folder {export}: same label as PyTorch on {agreed:.1%} of 80 held-out "
                   f"texts; --variant fp32 for the full-precision model)\n")
    code, _, err = ftune_cli(monkeypatch, capsys, "predict", str(export), "--variant", "fp32", "--text", "dull")
    assert code == 0 and err.startswith("using onnx-fp32 (export folder") and "--variant" not in err

    model = load_predictor(export).describe()
    assert model["kind"] == "onnx-int8" and model["variant"] == "int8" and model["variants"] == ["fp32", "int8"]
    with TestClient(create_app(load_predictor(export, "fp32"))) as client:
        served = client.get("/v1/model").json()
    assert served["variant"] == "fp32" and served["metrics"]["same_label_as_pytorch"] == 1.0


def test_eval_scores_an_export_as_it_scores_its_run(run_and_export, tmp_path, monkeypatch, capsys):
    run_dir, export = run_and_export
    data = tmp_path / "held_out.csv"
    synthetic_reviews(120, seed=7).to_csv(data, index=False)
    code, out, err = ftune_cli(monkeypatch, capsys, "eval", str(run_dir), "--data", str(data), "--json")
    assert code == 0, err
    of_run = json.loads(out)
    code, out, err = ftune_cli(monkeypatch, capsys, "eval", str(export), "--variant", "fp32", "--data", str(data),
                               "--json")
    assert code == 0 and err.startswith("using onnx-fp32"), err
    of_export = json.loads(out)
    assert of_export.keys() == of_run.keys() and of_export["n"] == of_run["n"] == 120
    for name in ("accuracy", "macro_f1", "loss"):  # the same model: equal to within float rounding
        assert of_export[name] == pytest.approx(of_run[name], abs=1e-6)
    assert of_export["accuracy_ci95"] == pytest.approx(of_run["accuracy_ci95"], abs=1e-6)

    code, out, err = ftune_cli(monkeypatch, capsys, "eval", str(export), "--data", str(data))  # the default: int8
    assert code == 0 and "using onnx-int8" in err
    assert re.match(rf"{re.escape(str(data))}: 120 examples, .*accuracy \d\.\d{{4}} \(95% CI ", out)
    code, _, err = ftune_cli(monkeypatch, capsys, "eval", str(run_dir), "--variant", "int8", "--data", str(data))
    assert code == 2 and "--variant applies to an export" in err
