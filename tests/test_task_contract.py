"""The Task interface, checked end to end for every task registered in ftune.tasks.TASKS (as peft runs one table of
checks over every method): its options, data, forward pass and loss, scores, baselines, test predictions, answers,
and a short real run that reloads and answers. A new task gets all of these from its tiny data in tests/helpers.py
(TINY_DATA), on the tiny BERT of conftest.py or, for a decoder task, the tiny decoder of ftune.tiny."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from pydantic import BaseModel

import ftune
from ftune.config import load_config
from ftune.data import collate
from ftune.data.summary import SPLITS
from ftune.errors import ConfigError, RunError
from ftune.inference import predict_outputs
from ftune.models import load_tokenizer
from ftune.tasks import TASKS, task_for
from ftune.tiny import build_tiny_decoder
from helpers import TINY_DATA

BASE = {"data.max_length": 32, "train.epochs": 1, "train.batch_size": 16, "train.learning_rate": 1e-3,
        "train.warmup_ratio": 0.0, "method.name": "full", "tracking.backend": "none"}
TEXTS = ["the football match and the pasta", "a superb film with great acting", "john smith visited paris"]


def test_every_registered_task_has_tiny_data():
    missing = sorted(set(TASKS) - set(TINY_DATA))
    assert not missing, f"add a tiny dataset for {', '.join(missing)} to TINY_DATA in tests/helpers.py"


@pytest.fixture(scope="module", params=sorted(TASKS))
def case(request, tmp_path_factory, tiny_model):
    """A task's config over its tiny data and the tiny model of its kind (a decoder's vocabulary from the data)."""
    name = request.param
    if name not in TINY_DATA:
        pytest.fail(f"task {name} has no tiny data: add it to TINY_DATA in tests/helpers.py")
    folder = tmp_path_factory.mktemp(name)
    data = TINY_DATA[name](folder)
    model = str(build_tiny_decoder(folder / "decoder", data.texts)) if TASKS[name].decoder else tiny_model
    config = load_config(overrides={"task": name, "model.name": model, **BASE, **data.keys,
                                    "output_dir": str(folder / "run")})
    return SimpleNamespace(name=name, cls=TASKS[name], config=config, model=model)


@pytest.fixture(scope="module")
def prepared(case):
    """What a run has before its first step: the task, its splits, encoded splits, tokenizer and model."""
    task = task_for(case.config)
    splits = task.load_splits(case.config.train.seed)
    tokenizer = load_tokenizer(case.model)
    data = task.encode_splits(splits, tokenizer)
    torch.manual_seed(0)
    model = task.load_model(case.model, splits.labels, False)
    task.prepare_loss(data["train"], splits.labels, torch.device("cpu"))
    return SimpleNamespace(task=task, splits=splits, tokenizer=tokenizer, data=data, model=model,
                           pad_id=tokenizer.pad_token_id or 0)


def rows_of(prepared, split: str) -> list:
    """The task's rows of a split in input order, as evaluation gathers them."""
    p = prepared
    return predict_outputs(p.model, p.data[split], 8, p.pad_id, per_row=p.task.rows, forward=p.task.forward)


# --- declarations -------------------------------------------------------------------------------------------------

def test_the_task_declares_what_the_rest_of_ftune_reads(case):
    cls = case.cls
    assert cls.name == case.name and cls.Options.model_fields["name"].default == case.name
    assert cls.description.strip() and cls.note.strip() and cls.unit.strip()
    assert issubclass(cls.Prediction, BaseModel) and cls.peft_type in ("SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM")
    assert cls.metrics and cls.headline() == cls.metrics[0] and "loss" in cls.metrics
    assert cls.lower_is_better <= set(cls.metrics) | {"loss"}
    assert cls.serves in ("labels", "chat")
    assert not (cls.distills_unlabeled and not cls.distills)


def test_options_validate(case):
    assert case.config.task.name == case.name and isinstance(case.config.task, case.cls.Options)
    assert case.config.train.metric == case.cls.headline()  # the default train.metric
    assert case.cls.Options().name == case.name  # every option has a default
    with pytest.raises(ConfigError, match="no_such_option"):
        load_config({"task": {"name": case.name, "no_such_option": 1}})
    with pytest.raises(ConfigError, match="train.metric"):
        load_config(overrides={"task": case.name, "train.metric": "no_such_score"})


# --- data ---------------------------------------------------------------------------------------------------------

def test_splits_encode_and_summarize(prepared):
    p = prepared
    sizes = {split: len(getattr(p.splits, split)) for split in SPLITS}
    assert all(sizes.values()), sizes
    assert bool(p.splits.labels) == p.task.labeled  # label names for labels.json, or none (a decoder writes text)
    assert set(p.data) == set(SPLITS) and {split: len(p.data[split]) for split in SPLITS} == sizes
    summary, warnings = p.task.summarize(p.splits, p.data)
    assert {split: summary[split] for split in SPLITS} == sizes and all(isinstance(w, str) for w in warnings)
    json.dumps(summary)  # metrics.json holds it


# --- model and loss -----------------------------------------------------------------------------------------------

def test_forward_and_loss_on_a_batch_are_finite_and_backpropagate(prepared):
    p = prepared
    p.model.train()
    batch = collate(p.data["train"], list(range(8)), p.pad_id)
    total, count = p.task.loss(p.task.forward(p.model, batch), batch)
    assert total.ndim == 0 and count.ndim == 0 and count.item() > 0
    mean = total / count
    assert torch.isfinite(mean)
    p.model.zero_grad()
    mean.backward()
    grads = [q.grad for q in p.model.parameters() if q.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    p.model.zero_grad()


# --- evaluation ---------------------------------------------------------------------------------------------------

def test_rows_and_scores_hold_the_declared_metrics(prepared):
    p = prepared
    batch = collate(p.data["test"], [0, 1, 2], p.pad_id)
    with torch.no_grad():
        assert len(p.task.rows(p.task.forward(p.model.eval(), batch), batch)) == 3  # one row per example
    if p.task.calibrates:
        state = p.task.calibrate(rows_of(p, "validation"), p.data["validation"], p.splits.labels)
        json.dumps(state)  # the run's task.json
    metrics, _ = p.task.score(rows_of(p, "test"), p.data["test"], p.splits.labels, interval_seed=0)
    assert metrics["n"] == len(p.splits.test)
    for name in p.task.metrics:  # the tiny data has what every score needs
        assert isinstance(metrics[name], float) and math.isfinite(metrics[name]), name
    interval = metrics.get(f"{p.task.headline()}_ci95")
    assert interval is None or interval[0] <= interval[1]
    json.dumps(metrics)


def test_baselines_are_scored_on_the_same_test_split(prepared):
    p = prepared
    baselines = p.task.baselines(p.splits, seed=0)
    for name, metrics in baselines.items():
        assert metrics["n"] == len(p.splits.test) and math.isfinite(metrics[p.task.headline()]), name
    json.dumps(baselines)


def test_save_predictions_writes_the_test_split(prepared, tmp_path):
    p = prepared
    _, outputs = p.task.score(rows_of(p, "test"), p.data["test"], p.splits.labels)
    p.task.save_predictions(tmp_path, p.splits, p.data, outputs, p.splits.labels)
    written = tmp_path / "test_predictions.csv"
    if p.task.serves == "labels":  # a task that answers with labels or values shows them for every test example
        frame = pd.read_csv(written, keep_default_na=False)
        assert "predicted" in frame and len(frame) >= len(p.splits.test)
    else:
        assert not written.exists()


# --- prediction ---------------------------------------------------------------------------------------------------

class ModelPredictor:
    """What `task.predict` reads of a predictor (ftune.predictors), over the untrained model."""

    def __init__(self, prepared, config):
        self.prepared, self.tokenizer, self.labels = prepared, prepared.tokenizer, prepared.splits.labels
        self.max_length = config.data.max_length

    def outputs(self, data, per_row) -> list:
        p = self.prepared
        return predict_outputs(p.model, data, 8, p.pad_id, per_row=per_row, forward=p.task.forward)


def test_predict_answers_each_text_in_the_task_s_shape(prepared, case):
    p = prepared
    if p.task.serves == "chat":  # it writes text: ftune generate and the chat API answer (checked after training)
        with pytest.raises(RunError, match="ftune generate"):
            p.task.predict(ModelPredictor(p, case.config), TEXTS)
        return
    answers = p.task.predict(ModelPredictor(p, case.config), TEXTS)
    assert len(answers) == len(TEXTS)
    for answer in answers:
        p.task.Prediction.model_validate(answer)


# --- a run ------------------------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_a_short_run_trains_reloads_and_answers(case):
    run = ftune.train(case.config, quiet=True)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["task"] == case.name
    finetuned = metrics["test"]["finetuned"]
    assert all(math.isfinite(finetuned[name]) for name in case.cls.metrics)
    reloaded = ftune.Run(run.path)
    if case.cls.serves == "chat":
        from ftune.generate import Generator

        answer = Generator(run.path).generate(TEXTS[0], max_new_tokens=4)
        assert isinstance(answer, str)
        return
    answers = reloaded.predict(TEXTS)
    assert len(answers) == len(TEXTS) and reloaded.predict([]) == []
    for answer in answers:
        case.cls.Prediction.model_validate(answer)
    assert (run.path / "test_predictions.csv").is_file()
