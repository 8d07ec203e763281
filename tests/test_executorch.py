"""ExecuTorch export on the tiny model: .pte programs lowered to XNNPACK, run through ExecuTorch's own Python runtime
for the parity check, for prediction, evaluation and the service; a classifier (full and LoRA, int8) and a tagger."""

import json
import subprocess
import sys

import numpy as np
import pytest

import ftune
from ftune.export import export_model
from ftune.export_executorch import export_executorch
from ftune.predictors import Predictor, load_predictor
from helpers import TINY_DATA, ftune_cli, full_and_lora_runs

pytest.importorskip("executorch")  # in the lock's test extra; a user's install takes it with ftune[edge]
pytestmark = pytest.mark.e2e  # trains whole runs: make test-quick leaves this module out

TEXTS = ["a superb film", "dull", "the acting was really quite excellent and the story was long but wonderful"]


@pytest.fixture(scope="module")
def runs(tiny_model, reviews_csv, tmp_path_factory):
    full, lora = full_and_lora_runs(tiny_model, reviews_csv, tmp_path_factory.mktemp("et-runs"), **{
        "train.epochs": 2, "train.learning_rate": 3e-3, "train.warmup_ratio": 0.0, "train.baselines": False})
    return {"full": full.path, "lora": lora.path}


def test_pte_matches_pytorch_through_the_executorch_runtime(runs, tmp_path):
    folder = export_executorch(runs["lora"], tmp_path / "pte", quantize="int8")
    info = json.loads((folder / "export.json").read_text())
    parity = info["parity"]
    assert info["format"] == "executorch" and info["files"] == {"fp32": "model.pte", "int8": "model.int8.pte"}
    assert info["inputs"] == ["input_ids", "token_type_ids"]  # one unpadded text: no attention mask
    assert parity["executorch-fp32"]["max_abs_diff"] < 1e-4  # the LoRA adapter merged, run by XNNPACK's kernels
    assert parity["executorch-fp32"]["accuracy"] == parity["pytorch"]["accuracy"]
    assert parity["executorch-int8"]["bytes"] < parity["executorch-fp32"]["bytes"] / 2  # embeddings are int8 too
    assert parity["executorch-int8"]["same_label_as_pytorch"] >= 0.9

    fp32 = load_predictor(folder, "fp32")  # texts of different lengths: the sequence length is dynamic
    assert fp32.kind == "executorch-fp32" and fp32.describe()["device"] == "XNNPACK (CPU)"
    assert np.abs(fp32.logits(TEXTS) - Predictor(runs["lora"]).logits(TEXTS)).max() < 1e-4
    int8 = load_predictor(folder)
    assert int8.kind == "executorch-int8" and len(int8.predict(TEXTS)) == 3
    readme = (folder / "README.md").read_text()
    assert "# lora: ExecuTorch export" in readme and "| executorch-int8 |" in readme
    snippet = readme.split("```python\n")[1].split("```")[0].replace('"a text to label"', f'"{TEXTS[0]}"')
    ran = subprocess.run([sys.executable, "-c", snippet + "print(logits.tolist())"], cwd=folder, capture_output=True,
                         text=True)  # the README's code, with ExecuTorch and tokenizers alone
    assert ran.returncode == 0, ran.stderr
    assert np.abs(np.array(json.loads(ran.stdout.splitlines()[-1])) - fp32.logits(TEXTS[:1])).max() < 1e-5

    from fastapi.testclient import TestClient

    from ftune.serve import create_app

    with TestClient(create_app(int8)) as client:  # `ftune serve EXPORT`: the service runs the .pte too
        answer = client.post("/v1/predict", json={"texts": TEXTS})
        model = client.get("/v1/model").json()
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3, answer.text
    assert model["kind"] == "executorch-int8"


def test_cli_exports_predicts_evaluates_and_refuses(runs, reviews_csv, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "cli-pte"
    code, out, err = ftune_cli(monkeypatch, capsys, "export", str(runs["full"]), "--format", "executorch",
                               "--output", str(folder))
    assert code == 0, err
    assert "executorch-fp32" in out and "executorch-int8" not in out and (folder / "model.pte").is_file()
    code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(folder), "--text", "a superb film")
    assert code == 0 and err.startswith("using executorch-fp32") and json.loads(out)["label"] in ("neg", "pos")
    code, out, err = ftune_cli(monkeypatch, capsys, "eval", str(folder), "--data", str(reviews_csv), "--json")
    assert code == 0 and 0 <= json.loads(out)["accuracy"] <= 1, err

    for args, message in [
            (("predict", str(folder), "--text", "x", "--device", "cuda"), "an ExecuTorch export runs on the CPU"),
            (("predict", str(folder), "--text", "x", "--variant", "int8"), "--format executorch --quantize int8"),
            (("export", str(runs["full"]), "--format", "executorch", "--baseline"), "drop --format executorch"),
            (("export", str(runs["full"]), "--format", "tflite"), "use --format onnx, ort, executorch or gguf")]:
        code, out, err = ftune_cli(monkeypatch, capsys, *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_tagger_exports_and_tags_words(tiny_config, tmp_path):
    data = TINY_DATA["token-classification"](tmp_path)
    cfg = tiny_config(**{"task": "token-classification", "data.text_column": None, "data.label_column": None,
                         **data.keys, "train.epochs": 2, "output_dir": str(tmp_path / "tagger")})
    run = ftune.train(cfg, quiet=True)
    for format, export in (("executorch", export_executorch), ("onnx", export_model)):
        folder = export(run.path, tmp_path / format)
        parity = json.loads((folder / "export.json").read_text())["parity"]
        assert parity[f"{format}-fp32"]["max_abs_diff"] < 1e-4  # every token's logits
        [exported], [ran] = (p.predict(["john smith visited paris"]) for p in (load_predictor(folder), run))
        assert exported["tagged"] == ran["tagged"]  # a tag per word, from the first sub-token as for PyTorch
        assert [t["score"] for t in exported["tokens"]] == pytest.approx([t["score"] for t in ran["tokens"]],
                                                                         abs=1e-4)
    snippet = (folder / "README.md").read_text().split("```python\n")[1].split("```")[0]  # the ONNX folder's
    snippet = snippet.replace('"a first text to label"', '"john smith visited paris"')
    code = subprocess.run([sys.executable, "-c", snippet], cwd=folder, capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    assert json.loads(code.stdout.splitlines()[0])["tags"] == ran["tagged"].replace("/", " ").split()[1::2]
