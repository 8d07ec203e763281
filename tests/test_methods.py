"""The method contract, run over every method in the registry (ftune.methods.METHODS): a new method gets these checks
by being registered. Options validate; wrapping the tiny BERT trains what the method says; a one-epoch run of the tiny
model saves what the method says (adapter/ or model/), reloads and answers as it did in training, serves beside a
copy of itself from one base, and exports to ONNX or is refused in one line; a tiny decoder learns and generates; a
frozen base in bf16 (where the method allows it) trains and saves float32. Then the refusals of one method or another."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import ftune
from ftune.config import DEFAULT_LEARNING_RATES, describe_keys, load_config, to_yaml, validate
from ftune.errors import ConfigError
from ftune.methods import METHODS, count_parameters
from ftune.schema import METHOD_NAMES

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "mr_lora.yaml"
TEXTS = ["a superb film", "dull", "the acting was quite excellent and the story long but wonderful", "boring old plot"]
# Settings the tiny models need for some methods (freeze: a decoder ties its output layer to the embeddings).
DECODER_OPTIONS = {"freeze": {"method.layers": 1}}


def test_the_registry_is_the_schema():
    assert METHOD_NAMES == tuple(METHODS) and set(DEFAULT_LEARNING_RATES) == set(METHODS)
    for name, method in METHODS.items():
        assert method.name == name and method.Options.model_fields["name"].default == name
        assert method(method.Options()).description  # one line for `ftune config` and the docs


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_options_validate_round_trip_and_are_described(name):
    config = load_config({"method": name})  # `method: NAME`, as a config file may say it
    assert config.method.name == name and config.method == METHODS[name].Options()
    assert config.train.learning_rate == DEFAULT_LEARNING_RATES[name] and config._learning_rate_is_default
    saved = config.model_dump(mode="json")  # as a run's config.yaml keeps it
    assert validate(json.loads(json.dumps(saved))).model_dump(mode="json") == saved
    assert f"name: {name}" in to_yaml(config)
    with pytest.raises(ConfigError, match=f"'method.nonsense' is not an option of method '{name}'"):
        load_config(overrides={"method.name": name, "method.nonsense": 1})
    rows = [row for row in describe_keys(method=name) if row[0].startswith("method.")]
    assert rows and all(text.strip() for *_, text in rows)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_wrapping_the_tiny_model_trains_what_the_method_says(name, tiny_model):
    from ftune.models import load_classifier

    method = METHODS[name](METHODS[name].Options())
    model = method.wrap(load_classifier(tiny_model, ["neg", "pos"]), "SEQ_CLS")
    trainable, total = count_parameters(model)
    assert any("classifier" in n for n, p in model.named_parameters() if p.requires_grad)  # the new head trains
    if trainable < total:  # all, or a small part without the vocabulary
        assert trainable < total / 10 and not model.get_input_embeddings().weight.requires_grad
    assert hasattr(model, "peft_config") == method.trains_adapter  # an adapter method's model is peft's
    logits = model(**model_inputs(tiny_model)).logits
    assert logits.shape == (len(TEXTS), 2) and torch.isfinite(logits).all()
    logits.sum().backward()  # what trains is what the loss reaches, and nothing else gets a gradient
    assert {n for n, p in model.named_parameters() if p.grad is not None} == \
        {n for n, p in model.named_parameters() if p.requires_grad}


def model_inputs(tiny_model: str) -> dict:
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(tiny_model)(TEXTS, padding=True, return_tensors="pt"))


@pytest.fixture(scope="module", params=METHOD_NAMES)
def trained(request, tiny_model, reviews_csv, tmp_path_factory):
    """A one-epoch run of the tiny model under each method, at the method's default learning rate."""
    root = tmp_path_factory.mktemp(f"method-{request.param}")
    config = load_config(overrides={
        "model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
        "data.label_column": "stars", "data.max_length": 32, "method.name": request.param, "train.epochs": 1,
        "train.batch_size": 16, "train.baselines": False, "tracking.backend": "none", "output_dir": str(root / "run")})
    return ftune.train(config, quiet=True)


@pytest.mark.e2e
def test_a_run_saves_reloads_and_answers_as_in_training(trained):
    method = METHODS[trained.config.method.name](trained.config.method)
    folders = {p.name for p in trained.path.iterdir() if p.is_dir()}
    assert ("adapter" in folders) == method.trains_adapter
    assert ("model" in folders) == (not method.trains_adapter or method.merges)
    train = trained.metrics["train"]
    assert 0 < train["trainable_parameters"] <= train["total_parameters"]
    manifest = json.loads((trained.path / "run.json").read_text())
    assert ("base_sha256" in manifest) == method.trains_adapter  # an adapter refuses a changed base

    import pandas as pd

    scored = pd.read_csv(trained.path / "test_predictions.csv").head(20)  # what the trained model answered
    answers = ftune.Run(trained.path).predict(scored["text"].tolist())  # the same texts, from the saved files
    assert [a["label"] for a in answers] == scored["predicted"].tolist()
    assert np.allclose([a["score"] for a in answers], scored["score"], atol=1e-5)


@pytest.mark.e2e
def test_two_runs_of_one_base_serve_from_one_process_as_each_alone(trained, tmp_path):
    from ftune.predictors import Predictor
    from ftune.predictors.many import answer_items, load_many

    copies = [shutil.copytree(trained.path, tmp_path / name, symlinks=True) for name in ("a", "b")]
    models = load_many(copies)
    alone = [a["label"] for a in Predictor(trained.path).predict(TEXTS)]
    for mixed in (False, True):
        items = [(name, text) for text in TEXTS for name in ("a", "b")]
        answers = answer_items(models, mixed)(items)
        assert [a["label"] for a in answers] == [label for label in alone for _ in ("a", "b")]


@pytest.mark.e2e
def test_export_works_or_is_refused_in_one_line(trained, tmp_path):
    from ftune.export import export_onnx

    method = METHODS[trained.config.method.name](trained.config.method)
    if method.trains_adapter and not method.mergeable:
        with pytest.raises(ConfigError) as refused:
            export_onnx(trained.path, tmp_path / "export")
        message = str(refused.value)
        assert "\n" not in message and "cannot be merged" in message and "ftune serve" in message
        assert not (tmp_path / "export").exists()
        return
    folder = export_onnx(trained.path, tmp_path / "export", parity_samples=40)
    parity = json.loads((folder / "export.json").read_text())["parity"]
    assert parity["onnx-fp32"]["max_abs_diff"] < 1e-3  # the merged adapter answers as base + adapter did


@pytest.mark.e2e
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_tiny_decoder_learns_and_generates(name, tmp_path):
    from ftune.generate import Generator
    from ftune.tiny import build_tiny_decoder
    from helpers import instructions

    try:  # a method may refuse decoders when the config is read (contrastive: pairs need labels)
        load_config(overrides={"task": "causal-lm", "method.name": name})
    except ConfigError as refused:
        assert "\n" not in str(refused) and f"method {name} does not apply to task causal-lm" in str(refused)
        pytest.skip(f"{name} does not train decoders")
    rows = instructions(96)
    decoder = build_tiny_decoder(tmp_path / "decoder", [r["prompt"] + " " + r["response"] for r in rows])
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(overrides={
        "task": "causal-lm", "model.name": str(decoder), "data.train": str(tmp_path / "data.jsonl"),
        "data.max_length": 32, "method.name": name, "train.epochs": 2, "train.batch_size": 8,
        "tracking.backend": "none", "output_dir": str(tmp_path / "run"),  # baselines: the base model's loss
        **DECODER_OPTIONS.get(name, {})})
    run = ftune.train(config, quiet=True)
    validation = run.metrics["validation"]
    assert validation["history"][-1]["validation"]["loss"] < validation["base_model"]["loss"]
    answer = Generator(run.path).generate("what is the opposite of hot ?", max_new_tokens=6)
    assert isinstance(answer, str) and answer.strip()


def test_what_a_method_cannot_train_is_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="method prompt-tuning does not apply to task token-classification.*lora"):
        load_config(overrides={"task": "token-classification", "method.name": "prompt-tuning"})
    with pytest.raises(ConfigError, match="prompt-tuning with task.packing"):
        load_config(overrides={"task": "causal-lm", "task.packing": True, "method.name": "prompt-tuning"})
    assert np.isclose(load_config(overrides={"task": "causal-lm", "method.name": "dora"}).train.learning_rate, 2e-4)


@pytest.mark.e2e
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_frozen_base_in_bf16_trains_and_saves_float32(name, tiny_config, tmp_path, monkeypatch):
    """A bf16 GPU's setting for a method that allows it (frozen weights in bf16 under bf16 autocast), on the CPU."""
    import ftune.train_setup as train_setup
    from ftune.optim import frozen_dtype
    from safetensors.torch import load_file

    merge = {"method.merge": True} if "merge" in METHODS[name].Options.model_fields else {}
    config = tiny_config(**{"method.name": name, "train.epochs": 1, "train.precision": "bf16", "train.baselines": False,
                            **merge})
    if not METHODS[name](config.method).frozen_in_bf16:
        assert frozen_dtype(config, torch.device("cuda"), "bf16") is None
        pytest.skip(f"{name} keeps its frozen weights in float32")
    monkeypatch.setattr(train_setup, "frozen_dtype", lambda *a: torch.bfloat16)
    run = ftune.train(config, quiet=True)
    assert np.isfinite(run.metrics["test"]["finetuned"]["loss"])
    for file in run.path.glob("*/*.safetensors"):  # adapter/ and merged model/: float32, as a CPU run saves them
        assert {t.dtype for t in load_file(str(file)).values()} == {torch.float32}, file


def test_positions_a_method_puts_before_the_text_count_against_the_models(tiny_config):
    config = tiny_config(**{"method.name": "prompt-tuning", "method.virtual_tokens": 20, "data.max_length": 120})
    with pytest.raises(ConfigError, match=r"\(128 tokens, 20 of them taken by method prompt-tuning\); set "
                                          r"data.max_length=108 or less"):
        ftune.train(config, quiet=True)


def test_switching_a_recipe_to_another_method_says_how_to_replace_its_section():
    with pytest.raises(ConfigError, match=r"'method.r' is not an option of method 'prompt-tuning'.*--set "
                                          r"'method=\{name: prompt-tuning\}' replaces the section"):
        load_config(RECIPE, ["method.name=prompt-tuning"])
    switched = load_config(RECIPE, ["method={name: prompt-tuning}", "train.learning_rate=null"])
    assert switched.method == METHODS["prompt-tuning"].Options() and switched.train.learning_rate == 3e-2
    assert load_config(RECIPE, ["method.name=dora"]).method.r == 16  # dora keeps LoRA's options


def test_contrastive_pairs_pull_one_label_together_and_push_two_apart():
    from ftune.methods.contrastive import pair_loss

    labels = torch.tensor([0, 0, 1, 1])
    assert pair_loss(torch.tensor([[2.0, 0], [1, 0], [0, 1], [0, 3]]), labels) == 0  # one direction per label
    # One label's texts orthogonal (error 1 for each such pair), two labels' half aligned (1 and 0): (1 + 0.5) / 2.
    assert torch.isclose(pair_loss(torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]]), labels), torch.tensor(0.75))
    assert torch.isclose(pair_loss(torch.tensor([[1.0, 0], [0, 1]]), torch.tensor([0, 0])), torch.tensor(1.0))
    assert pair_loss(torch.tensor([[1.0, 0]]), torch.tensor([1])) == 0  # a batch of one text has no pair
    unlabeled = torch.tensor([[2.0, 0], [1, 0], [0, 1], [0, 3], [1, 1]])  # a distillation's text without a label
    assert pair_loss(unlabeled, torch.tensor([0, 0, 1, 1, -100])) == 0


@pytest.mark.e2e
def test_contrastive_adds_its_pairs_to_the_task_loss_and_weight_zero_is_full(tiny_config, tmp_path):
    def first_loss(**overrides) -> float:
        run = ftune.train(tiny_config(**{"train.epochs": 1, "train.baselines": False, "train.log_steps": 1,
                                         "output_dir": str(tmp_path / str(overrides)), **overrides}), quiet=True)
        rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
        return next(row["loss"] for row in rows if row["type"] == "train")

    full = first_loss(**{"method.name": "full"})
    assert first_loss(**{"method.name": "contrastive", "method.weight": 0.0}) == pytest.approx(full, abs=1e-6)
    assert first_loss(**{"method.name": "contrastive"}) > full + 1e-3  # the pairs' term, on the same first batch
