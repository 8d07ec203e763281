"""Distillation: the loss, the cut student, a student learning its teacher's answers, and the user's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ftune
from ftune.config import load_config
from ftune.distill import distill_loss, kept_layers
from ftune.predictors import Predictor
from ftune.tasks.base import cross_entropy_sum
from helpers import entity_sentences, ftune_cli, synthetic_reviews

pytestmark = pytest.mark.e2e  # trains whole runs: make test-quick leaves this module out



def _overrides(tiny_model, reviews_csv, out, **more):
    return {"model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
            "data.label_column": "stars", "data.max_length": 32, "train.epochs": 3, "train.batch_size": 16,
            "train.learning_rate": 3e-3, "train.warmup_ratio": 0.0, "tracking.backend": "none",
            "output_dir": str(out), **more}


@pytest.fixture(scope="module")
def teacher(tiny_model, reviews_csv, tmp_path_factory):
    """A tiny classifier trained on the synthetic reviews (it learns them)."""
    out = tmp_path_factory.mktemp("distill") / "teacher"
    run = ftune.train(load_config(overrides=_overrides(tiny_model, reviews_csv, out)), quiet=True)
    assert run.metrics["test"]["finetuned"]["accuracy"] > 0.9
    return run


def hard_labels(out, batch):  # a classification task's loss
    return cross_entropy_sum(out, batch["labels"])


def test_the_loss_is_hintons_mix_of_soft_and_hard_labels():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    batch = {"labels": torch.tensor([0, 2, 1, -100, 0]), "teacher_logits": teacher}
    total, count = distill_loss(hard_labels, temperature=2.0, alpha=0.3)(student, batch)
    kl = (F.softmax(teacher / 2, -1) * (F.log_softmax(teacher / 2, -1) - F.log_softmax(student / 2, -1))).sum()
    hard = F.cross_entropy(student[[0, 1, 2, 4]], batch["labels"][[0, 1, 2, 4]], reduction="sum")
    assert count == 5  # every text counts; the one without a label (-100) has the soft term only
    assert torch.allclose(total, 0.3 * 4 * kl + 0.7 * hard, atol=1e-5)
    hard_only = distill_loss(hard_labels, 2.0, 0.0)(student[:3], {"labels": batch["labels"][:3],
                                                                        "teacher_logits": teacher[:3]})
    assert torch.allclose(hard_only[0], F.cross_entropy(student[:3], batch["labels"][:3], reduction="sum"))
    evaluation = distill_loss(hard_labels, 2.0, 0.5)(student[:3], {"labels": batch["labels"][:3]})
    assert evaluation[1] == 3 and torch.allclose(evaluation[0], hard_only[0])  # no teacher: the task's loss


def test_per_token_the_soft_term_covers_the_tagged_tokens_only():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    labels = torch.tensor([[-100, 1, 2, -100], [-100, 0, -100, -100]])
    total, count = distill_loss(hard_labels, 1.0, 1.0)(student, {"labels": labels, "teacher_logits": teacher})
    taken = labels != -100
    kl = F.kl_div(F.log_softmax(student[taken], -1), F.softmax(teacher[taken], -1), reduction="sum")
    assert count == 3 and torch.allclose(total, kl, atol=1e-6)


def test_which_layers_a_cut_student_keeps():
    assert kept_layers(6, 3, "spread") == [0, 2, 4]
    assert kept_layers(6, 2, "spread") == [0, 3]
    assert kept_layers(12, 6, "spread") == [0, 2, 4, 6, 8, 10]
    assert kept_layers(6, 2, "first") == [0, 1]


def test_a_cut_student_starts_from_the_teachers_weights_and_saves_a_whole_model(teacher, tiny_model, reviews_csv,
                                                                                tmp_path):
    from transformers import AutoModelForSequenceClassification

    cfg = load_config(overrides=_overrides(tiny_model, reviews_csv, tmp_path / "student", **{
        "distill.teacher": str(teacher.path), "distill.layers": 1, "distill.pick": "first", "train.epochs": 1,
        "train.learning_rate": 1e-12}))  # (almost) no step: the saved student is the cut teacher
    student = ftune.train(cfg, quiet=True)
    theirs = AutoModelForSequenceClassification.from_pretrained(teacher.path / "model").state_dict()
    mine = AutoModelForSequenceClassification.from_pretrained(student.path / "model")
    assert mine.config.num_hidden_layers == 1
    mine = mine.state_dict()
    assert not any(".layer.1." in name for name in mine)
    for name, tensor in mine.items():  # the embeddings, layer 0 and the head: the teacher's, to the step's rounding
        assert torch.allclose(tensor, theirs[name], atol=1e-6), name
    test = student.metrics["test"]
    assert test["teacher"]["accuracy"] == pytest.approx(teacher.metrics["test"]["finetuned"]["accuracy"])
    assert student.metrics["scores"]["titles"]["teacher"] == "teacher (teacher)"
    assert "teacher (teacher)" in (student.path / "report.md").read_text()


def test_a_student_learns_its_teachers_answers_from_texts_without_labels(teacher, tiny_model, tmp_path):
    """A fresh student gets 40 labeled texts and 400 that only the teacher labels, with the soft term alone (alpha 1):
    it answers as the teacher does, where the same student on the 40 labels alone does not come close."""
    few = tmp_path / "few.csv"
    synthetic_reviews(60, seed=3).to_csv(few, index=False)
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("\n".join(synthetic_reviews(400, seed=4)["review"]))
    texts = synthetic_reviews(200, seed=5)["review"].tolist()
    wanted = [p["label"] for p in teacher.predict(texts)]

    def agreement(**distill) -> float:
        out = tmp_path / f"student-{len(distill)}"
        cfg = load_config(overrides=_overrides(tiny_model, few, out, **{"train.epochs": 4, "train.baselines": False,
                                                                         **distill}))
        run = ftune.train(cfg, quiet=True)
        return float(np.mean([p["label"] == w for p, w in zip(run.predict(texts), wanted)]))

    distilled = agreement(**{"distill.teacher": str(teacher.path), "distill.alpha": 1.0,
                             "data.unlabeled": str(unlabeled)})
    alone = agreement()
    assert distilled > 0.9 and distilled > alone + 0.15, (distilled, alone)


def test_a_tagging_student_distills_per_token(tiny_model, tmp_path):
    path = tmp_path / "ner.jsonl"
    path.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in entity_sentences(200)))
    base = {"task": "token-classification", "model.name": tiny_model, "data.train": str(path), "data.max_length": 32,
            "train.epochs": 2, "train.batch_size": 16, "train.learning_rate": 3e-3, "tracking.backend": "none"}
    teacher = ftune.train(load_config(overrides={**base, "output_dir": str(tmp_path / "t")}), quiet=True)
    student = ftune.train(load_config(overrides={**base, "output_dir": str(tmp_path / "s"), "distill.layers": 1,
                                                 "distill.teacher": str(teacher.path)}), quiet=True)
    test = student.metrics["test"]
    assert set(test) >= {"finetuned", "teacher", "base_model"}
    assert test["teacher"]["accuracy"] == pytest.approx(teacher.metrics["test"]["finetuned"]["accuracy"])
    assert Predictor(student.path).predict(["john smith visited paris"])[0]["tokens"][3]["word"] == "paris"


def test_distill_mistakes_are_one_line_errors(teacher, tiny_model, reviews_csv, tmp_path, monkeypatch, capsys):
    def fails(match, **more):
        with pytest.raises(ftune.ConfigError, match=match):
            ftune.train(load_config(overrides=_overrides(tiny_model, reviews_csv, tmp_path / "x", **more)), quiet=True)

    fails("data.unlabeled holds texts a teacher labels", **{"data.unlabeled": "u.txt"})
    fails("use method full or freeze", **{"distill.teacher": str(teacher.path), "distill.layers": 1,
                                          "method.name": "lora"})
    fails("train.class_weights does not apply", **{"distill.teacher": str(teacher.path), "train.class_weights": True})
    fails("a student keeps fewer", **{"distill.teacher": str(teacher.path), "distill.layers": 2})
    with pytest.raises(ftune.ConfigError, match="distill applies to tasks classification, token-classification"):
        load_config(overrides={"task": "regression", "distill.teacher": str(teacher.path)})
    with pytest.raises(ftune.RunError, match="not an ftune run directory"):
        ftune.train(load_config(overrides=_overrides(tiny_model, reviews_csv, tmp_path / "y",
                                                     **{"distill.teacher": str(tmp_path)})), quiet=True)
    other = tmp_path / "other.csv"
    synthetic_reviews(100).assign(stars=lambda f: f["stars"].map({"pos": "good", "neg": "poor"})).to_csv(other)
    with pytest.raises(ftune.ConfigError, match="answers with labels"):
        ftune.train(load_config(overrides=_overrides(tiny_model, other, tmp_path / "z",
                                                     **{"distill.teacher": str(teacher.path)})), quiet=True)
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()  # found before training: nothing left
    code, _, err = ftune_cli(monkeypatch, capsys, "distill", str(teacher.path))
    assert code == 2 and "pass --layers N" in err and len(err.strip().splitlines()) == 1


def test_ftune_distill_trains_the_cut_student_on_the_teachers_settings(teacher, tmp_path, monkeypatch, capsys):
    out = tmp_path / "student"
    code, stdout, err = ftune_cli(monkeypatch, capsys, "distill", str(teacher.path), "--layers", "1", "--epochs", "1",
                                  "--output-dir", str(out), "--quiet", "--set", "train.learning_rate=3e-3")
    assert code == 0, err
    assert "teacher (teacher)" in stdout
    student = ftune.Run(out)
    assert student.config.distill.teacher == str(teacher.path) and student.config.method.name == "full"
    assert student.config.data.train == teacher.config.data.train
