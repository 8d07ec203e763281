"""Distillation: a student learns a finished run's (the teacher's) answers as well as the labels.

    distill:
      teacher: runs/mr-full      # a finished classification or token-classification run
      layers: 3                  # the student: the teacher's own model cut to 3 of its layers (else model.name)
      temperature: 2.0
      alpha: 0.5                 # weight of the teacher's soft labels; 1 - alpha: the hard labels

The teacher reads the training split (and data.unlabeled, texts only it labels) once, before training; its
logits ride in every batch as `teacher_logits`, and the loss per text (or tagged token) is

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross-entropy(label)

(Hinton et al. 2015; T^2 keeps the soft term's gradients on the hard term's scale). A text without a label has the
soft term only. The student is a normal run: its report gets the teacher as one more row on the same test split.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ftune.data import Encoded, encode, read_texts
from ftune.data.tokenize import IGNORE
from ftune.errors import ConfigError
from ftune.methods import encoder_layers, method_for
from ftune.predictors import Predictor


def load_teacher(config, labels: list[str], device: torch.device) -> Predictor:
    """The teacher run's model on the training device, after checking it answers the student's question."""
    where = f"cuda:{device.index}" if device.type == "cuda" and device.index is not None else device.type  # its GPU
    teacher = Predictor(config.distill.teacher, batch_size=config.train.eval_batch_size, device=where)
    if teacher.task.name != config.task.name:
        raise ConfigError(f"distill.teacher {teacher.run_dir} is a {teacher.task.name} run; a {config.task.name} "
                          f"student needs a {config.task.name} teacher")
    if teacher.labels != labels:
        raise ConfigError(f"distill.teacher {teacher.run_dir} answers with labels {teacher.labels[:6]}, the student's "
                          f"data has {labels[:6]}; distill on the data the teacher was trained on (or data with its "
                          f"labels)")
    return teacher


def cut_student(teacher: Predictor, layers: int, pick: str) -> nn.Module:
    """A copy of the teacher's model (an adapter teacher merged) keeping `layers` of its layers, with its embeddings
    and head: a model `from_pretrained` loads as it is, since its config says how many layers it has."""
    if teacher.is_adapter:
        method_for(teacher.config).refuse_merge(f"distill.layers (a student cut from {teacher.run_dir})",
                                                "distill without distill.layers, into a model of its own")
    model = copy.deepcopy(teacher.model)
    if teacher.is_adapter:  # peft froze the base; merged, it is a plain model whose every weight the student trains
        model = model.merge_and_unload().requires_grad_(True)
    stack = encoder_layers(model)
    if layers >= len(stack):
        raise ConfigError(f"distill.layers={layers}: the teacher has {len(stack)} layers; a student keeps fewer "
                          f"(1..{len(stack) - 1})")
    keep = kept_layers(len(stack), layers, pick)
    kept = nn.ModuleList(stack[i] for i in keep)
    for parent in model.modules():  # the stack's place in the model: replaced where it hangs
        for name, child in parent.named_children():
            if child is stack:
                setattr(parent, name, kept)
    model.config.num_hidden_layers = layers
    return model.train().float()


def kept_layers(total: int, layers: int, pick: str) -> list[int]:
    """Which of the teacher's layers a student keeps: the first N, or N spread evenly from the first (DistilBERT
    keeps every other one)."""
    return list(range(layers)) if pick == "first" else [round(i * total / layers) for i in range(layers)]


def with_teacher(teacher: Predictor, mine: Encoded, config, train: Encoded, tokenizer) -> Encoded:
    """The training split with the teacher's logits per example (`mine`: the split as the teacher reads it), and
    data.unlabeled's texts appended (no label)."""
    rows = teacher.outputs(mine, teacher.task.rows)
    if isinstance(train.labels, np.ndarray):  # a label per text: the teacher's (pooled) logits per document
        documents = mine.per_document(np.stack(rows), _pool(teacher.task))
        train = replace(train, teacher_logits=documents[train.groups] if train.groups is not None else documents)
    else:  # a label per token: the same tokens are needed on both sides
        if len(rows) != len(train) or any(not np.array_equal(a, b) for a, b in zip(mine.input_ids, train.input_ids)):
            raise ConfigError("token-classification distillation needs the student to read the teacher's tokens: use "
                              "distill.layers, or a student with the teacher's tokenizer and data.max_length")
        train = replace(train, teacher_logits=[r.astype(np.float32) for r in rows])
    if config.data.unlabeled:
        train = _append_unlabeled(teacher, config, train, tokenizer)
    return train


def _pool(task) -> str:
    long_text = getattr(task.options, "long_text", None)
    return long_text.pool if long_text is not None else "mean"


def _append_unlabeled(teacher: Predictor, config, train: Encoded, tokenizer) -> Encoded:
    texts = read_texts(config.data.unlabeled, config.data.text_column)
    documents = teacher.task.logits(teacher, texts).astype(np.float32)
    long_text = getattr(config.task, "long_text", None)
    extra = encode(pd.DataFrame({"text": texts}), tokenizer, config.data.max_length, use_cache=False,
                   long_text=long_text)
    groups = None
    if train.groups is not None:
        groups = np.concatenate([train.groups, extra.groups + train.groups.max() + 1])
    return replace(train, input_ids=train.input_ids + extra.input_ids,
                   token_type_ids=None if train.token_type_ids is None else train.token_type_ids + extra.token_type_ids,
                   labels=np.concatenate([train.labels, np.full(len(extra), IGNORE, dtype=train.labels.dtype)]),
                   groups=groups, full_lengths=None,
                   teacher_logits=np.concatenate([train.teacher_logits,
                                                  documents[extra.groups] if extra.groups is not None else documents]))


def teacher_scores(teacher: Predictor, test: Encoded, labels: list[str], seed: int) -> dict:
    """The teacher's scores on the student's test split, as the teacher reads it (the report's extra row)."""
    return teacher.task.score(teacher.outputs(test, teacher.task.rows), test, labels, seed)[0]


def distill_loss(task_loss, temperature: float, alpha: float):
    """The task's loss mixed with the soft-label term; batches without teacher logits (evaluation) get the task's."""
    def loss(out: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hard, count = task_loss(out, batch)
        if "teacher_logits" not in batch:
            return hard, count
        student, teacher = out.float().flatten(0, -2), batch["teacher_logits"].flatten(0, -2)
        # Per text every row counts (a text without a label too); per token, the tokens that carry a tag.
        taken = torch.ones(len(student), device=student.device) if out.dim() == 2 else \
            (batch["labels"].flatten() != IGNORE).float()
        kl = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                      log_target=True, reduction="none").sum(-1)
        soft = (kl * taken).sum() * temperature ** 2
        return alpha * soft + (1 - alpha) * hard, taken.sum()
    return loss
