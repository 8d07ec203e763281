"""Training on a tiny local model: learning, run directory, methods, resume, failure modes."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

import ftune
import ftune.train_setup
import ftune.training
from ftune.errors import RunError
from ftune.run import Run

pytestmark = pytest.mark.e2e  # trains whole runs: make test-quick leaves this module out


def test_full_fine_tuning_learns_and_writes_a_complete_run(tiny_config):
    run = ftune.train(tiny_config(), quiet=True)
    test = run.metrics["test"]
    assert test["finetuned"]["accuracy"] >= 0.95
    assert test["base_model"]["accuracy"] < 0.7  # the untrained head is a coin flip
    assert "tfidf" in test and test["finetuned"]["accuracy_ci95"][0] <= test["finetuned"]["accuracy"]
    for name in ("run.json", "config.yaml", "labels.json", "metrics.json", "metrics.jsonl", "report.md",
                 "model/config.json", "model/model.safetensors", "model/tokenizer.json"):
        assert (run.path / name).is_file(), name
    manifest = json.loads((run.path / "run.json").read_text())
    assert manifest["status"] == "complete" and manifest["seed"] == 0 and len(manifest["data_hash"]) == 64
    assert "transformers" in manifest["versions"]
    report = (run.path / "report.md").read_text()
    assert "base model, untrained head" in report and "TF-IDF" in report and "fine-tuned" in report
    evals = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in evals if e["type"] == "eval"] == [1.0, 2.0, 3.0]


def test_saved_model_loads_in_transformers_and_pipeline_agrees_with_predict(tiny_config):
    run = ftune.train(tiny_config(), quiet=True)
    model = AutoModelForSequenceClassification.from_pretrained(run.path / "model")
    assert model.config.id2label == {0: "neg", 1: "pos"}
    texts = ["the film was superb and brilliant", "a dull and boring plot", "acting awful", "great story"]
    classifier = pipeline("text-classification", model=str(run.path / "model"))
    expected = classifier(texts)
    got = run.predict(texts)
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)
    assert [g["label"] for g in got] == ["pos", "neg", "neg", "pos"]


def test_lora_saves_an_adapter_that_peft_loads_and_merge_writes_full_weights(tiny_config):
    from peft import PeftModel

    run = ftune.train(tiny_config(**{"method.name": "lora", "method.r": 4, "method.merge": True}), quiet=True)
    trained = run.metrics["train"]
    assert trained["trainable_parameters"] < trained["total_parameters"] / 5
    assert (run.path / "adapter" / "adapter_config.json").is_file()
    base = AutoModelForSequenceClassification.from_pretrained(run.config.model.name, num_labels=2)
    adapted = PeftModel.from_pretrained(base, run.path / "adapter").eval()
    merged = AutoModelForSequenceClassification.from_pretrained(run.path / "model").eval()
    batch = {"input_ids": torch.tensor([[101, 2307, 3185, 102]])}
    with torch.no_grad():
        assert torch.allclose(adapted(**batch).logits, merged(**batch).logits, atol=1e-5)
    head = {n: p for n, p in base.named_parameters() if "classifier" in n and "modules_to_save" in n}
    assert head, "the new classification head is saved with the adapter"


def test_an_fp16_checkpoint_is_trained_in_float32(tiny_model, tmp_path):
    from ftune.models import load_classifier

    half = tmp_path / "tiny-fp16"
    AutoModelForSequenceClassification.from_pretrained(tiny_model, dtype=torch.float16).save_pretrained(half)
    assert load_classifier(str(half), ["neg", "pos"]).dtype == torch.float32  # fp16 weights under AdamW diverge


def test_freeze_keeps_frozen_weights_and_trains_the_rest(tiny_config, tiny_model):
    run = ftune.train(tiny_config(**{"method.name": "freeze", "method.layers": 1}), quiet=True)
    before = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(run.path / "model").state_dict()
    assert torch.equal(before["bert.embeddings.word_embeddings.weight"], after["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(before["bert.encoder.layer.0.attention.self.query.weight"],
                       after["bert.encoder.layer.0.attention.self.query.weight"])
    assert not torch.equal(before["bert.encoder.layer.1.attention.self.query.weight"],
                           after["bert.encoder.layer.1.attention.self.query.weight"])
    head_only = ftune.train(tiny_config(**{"method.name": "freeze", "output_dir": str(run.path) + "-head"}), quiet=True)
    assert head_only.metrics["train"]["trainable_parameters"] == 32 * 32 + 32 + 32 * 2 + 2  # pooler + classifier


# adamw-8bit: bitsandbytes' 8-bit AdamW runs on CPU too (bitsandbytes >= 0.48), the twin of its GPU path
@pytest.mark.parametrize("optimizer", ["adamw", "adamw-8bit"])
def test_resume_after_the_first_epoch_ends_where_the_uninterrupted_run_ends(tiny_config, tmp_path, optimizer):
    cfg = tiny_config(**{"train.epochs": 2, "train.save_total_limit": 5, "train.optimizer": optimizer})
    full = ftune.train(cfg, quiet=True)
    # Simulate a kill right after epoch 1's checkpoint: drop everything written later.
    cut = tmp_path / "cut"
    shutil.copytree(full.path, cut)
    checkpoints = sorted((cut / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 2
    state = torch.load(checkpoints[0] / "optimizer.pt", weights_only=True)["state"]
    eight_bit = [t for p in state.values() for t in p.get("__bnb_optimizer_quant_state__", {}).values()
                 if t.dtype == torch.uint8]
    assert bool(eight_bit) == (optimizer == "adamw-8bit")  # the large weights' moments in 8 bits, resumed below
    shutil.rmtree(checkpoints[-1])
    for name in ("model", "metrics.json", "labels.json", "report.md"):
        shutil.rmtree(cut / name) if (cut / name).is_dir() else (cut / name).unlink()
    manifest = json.loads((cut / "run.json").read_text())
    (cut / "run.json").write_text(json.dumps({**manifest, "status": "running"}))
    shutil.copytree(checkpoints[0], cut / "checkpoints" / "best", dirs_exist_ok=True)
    with pytest.raises(RunError, match="did not finish"):
        Run(cut)
    resumed = ftune.train(cfg.model_copy(update={"output_dir": str(cut)}), resume=True, quiet=True)
    a, b = full.metrics, resumed.metrics
    assert b["train"]["steps"] == a["train"]["steps"]
    assert b["test"]["finetuned"]["loss"] == pytest.approx(a["test"]["finetuned"]["loss"], abs=1e-6)
    assert b["test"]["finetuned"]["accuracy"] == a["test"]["finetuned"]["accuracy"]
    assert b["validation"]["history"][-1]["validation"]["loss"] == pytest.approx(
        a["validation"]["history"][-1]["validation"]["loss"], abs=1e-6)


def test_an_8bit_optimizer_it_cannot_run_is_refused_before_the_run_directory(tiny_config, tmp_path, monkeypatch):
    from ftune.errors import ConfigError

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="paged-adamw-8bit pages its state between GPU and CPU memory and needs "
                                              "a CUDA GPU; on CPU use train.optimizer=adamw-8bit or adamw"):
            ftune.train(tiny_config(**{"train.optimizer": "paged-adamw-8bit"}), quiet=True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train.optimizer=adamw-8bit needs the bitsandbytes package: pip install "):
        ftune.train(tiny_config(**{"train.optimizer": "adamw-8bit"}), quiet=True)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="with distributed.strategy=fsdp .* use train.optimizer=adamw"):
        tiny_config(**{"train.optimizer": "adamw-8bit", "distributed.strategy": "fsdp"})


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_layers_train_to_the_same_model(tiny_config, tmp_path, backend, monkeypatch):
    compiled_layers, real = [], ftune.train_setup.compile_layers

    def counted(model, backend):
        compiled_layers.append(real(model, backend))
        return compiled_layers[-1]

    monkeypatch.setattr(ftune.train_setup, "compile_layers", counted)
    common = {"train.epochs": 1, "train.baselines": False, "train.pad_to_multiple_of": 16}
    plain = ftune.train(tiny_config(**common, output_dir=str(tmp_path / "a")), quiet=True)
    compiled = ftune.train(tiny_config(**common, **{"train.compile": backend}, output_dir=str(tmp_path / "b")),
                           quiet=True)
    a, b = plain.metrics, compiled.metrics
    assert compiled_layers == [2]  # the tiny BERT's two layers, in the compiled run only
    assert b["test"]["finetuned"]["loss"] == pytest.approx(a["test"]["finetuned"]["loss"], abs=1e-4)
    assert "compile_seconds" in b["train"] and "compile_seconds" not in a["train"]  # reported where it compiled


def test_gradient_accumulation_matches_the_larger_batch(tiny_config, tmp_path):
    common = {"train.group_by_length": False, "train.epochs": 1, "train.baselines": False}
    big = ftune.train(tiny_config(**common, **{"train.batch_size": 16, "output_dir": str(tmp_path / "a")}), quiet=True)
    acc = ftune.train(tiny_config(**common, **{"train.batch_size": 8, "train.gradient_accumulation_steps": 2,
                                               "output_dir": str(tmp_path / "b")}), quiet=True)
    assert acc.metrics["train"]["steps"] == big.metrics["train"]["steps"]
    assert acc.metrics["test"]["finetuned"]["loss"] == pytest.approx(big.metrics["test"]["finetuned"]["loss"], abs=1e-4)


def test_early_stopping_and_checkpoint_limit(tiny_config):
    run = ftune.train(tiny_config(**{"train.epochs": 8, "train.early_stopping_patience": 1, "train.metric": "accuracy",
                                     "train.save_total_limit": 1}), quiet=True)
    assert run.metrics["train"]["stopped_early"] and run.metrics["train"]["epochs"] < 8
    assert len(list((run.path / "checkpoints").glob("step-*"))) == 1


def test_eval_steps_and_class_weights(tiny_config):
    run = ftune.train(tiny_config(**{"train.eval_steps": 5, "train.epochs": 1, "train.class_weights": True}), quiet=True)
    steps = [e["step"] for e in run.metrics["validation"]["history"]]
    assert steps == [5, 10, 15, 18]


def test_an_existing_run_directory_is_never_overwritten(tiny_config):
    cfg = tiny_config(**{"train.epochs": 1})
    ftune.train(cfg, quiet=True)
    with pytest.raises(RunError, match="already holds files; pass --resume"):
        ftune.train(cfg, quiet=True)
    with pytest.raises(RunError, match="is a complete run"):
        ftune.train(cfg, resume=True, quiet=True)


def test_a_crashed_run_is_marked_failed_and_cannot_be_used(tiny_config, monkeypatch):
    import ftune.training as train_module

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train_module, "write_run", explode)
    cfg = tiny_config(**{"train.epochs": 1})
    with pytest.raises(RuntimeError):
        ftune.train(cfg, quiet=True)
    manifest = json.loads((Path(cfg.output_dir) / "run.json").read_text())
    assert manifest["status"] == "failed" and "disk on fire" in manifest["error"]
    with pytest.raises(RunError, match="did not finish"):
        Run(cfg.output_dir)


def test_resume_refuses_a_changed_config(tiny_config):
    cfg = tiny_config(**{"train.epochs": 1})
    ftune.train(cfg, quiet=True)
    manifest = json.loads((Path(cfg.output_dir) / "run.json").read_text())
    (Path(cfg.output_dir) / "run.json").write_text(json.dumps({**manifest, "status": "failed"}))
    with pytest.raises(RunError, match=r"train.learning_rate .* differs"):
        ftune.train(tiny_config(**{"train.epochs": 1, "train.learning_rate": 0.1}), resume=True, quiet=True)


def test_lora_without_merge_predicts_through_base_model_and_adapter(tiny_config):
    from peft import PeftModel

    run = ftune.train(tiny_config(**{"method.name": "lora", "method.r": 4}), quiet=True)
    assert not (run.path / "model").exists() and (run.path / "adapter" / "adapter_model.safetensors").is_file()
    texts = ["great film", "a boring plot"]
    base = AutoModelForSequenceClassification.from_pretrained(run.config.model.name, num_labels=2)
    adapted = PeftModel.from_pretrained(base, run.path / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(run.path / "adapter")
    with torch.no_grad():
        expected = adapted(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    got = run.predict(texts)
    assert [g["score"] for g in got] == pytest.approx(expected.max(-1).values.tolist(), abs=1e-5)


def test_gradient_checkpointing_gives_the_same_model(tiny_config, tmp_path):
    common = {"train.epochs": 1, "train.baselines": False}
    plain = ftune.train(tiny_config(**common, **{"output_dir": str(tmp_path / "a")}), quiet=True)
    ckpt = ftune.train(tiny_config(**common, **{"train.gradient_checkpointing": True, "output_dir": str(tmp_path / "b")}),
                       quiet=True)
    # On CPU (fp32) recomputation is exact; under CUDA bf16 autocast the kernels are not bit-reproducible.
    tolerance = 1e-2 if torch.cuda.is_available() else 1e-5
    assert ckpt.metrics["test"]["finetuned"]["loss"] == pytest.approx(plain.metrics["test"]["finetuned"]["loss"], abs=tolerance)
