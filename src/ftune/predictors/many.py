"""Several runs served from one process: adapter runs (LoRA, ...) of one base model share one loaded copy of it.

    load_many(paths)     {name: predictor} for `ftune serve RUN_A RUN_B ...`; a name is the run folder's name
    answer_items(models) answers a micro-batch of (name, text) items, each text by its own model

Adapter runs whose base model is the same (same source, task, trust setting and method: peft keeps one kind of
adapter per model) get one base model with every adapter beside it (peft's `load_adapter`, each under a name of its
own); each run keeps its own tokenizer, labels, task state and classifier head (peft's modules_to_save). Full-weight
runs each get their own Predictor.

A micro-batch's texts go through one forward pass per run, its adapter made the active one. With `mixed` (serve
--mixed-adapters) the texts of runs that share a base go through shared passes instead, each text through its own
adapter (peft's per-example `adapter_names`, for methods that allow it: Method.mixes_in_batch): the same answers,
but slower on CPU, where fewer passes save little and peft's per-adapter gathers and scatters in every LoRA layer
cost more (bench/serve_many.py: one pass per run answered a 64-text micro-batch over 4 MiniLM runs 1.2-1.3x faster,
on 1 thread and 2). peft stacks the rows of each adapter's head, so only heads of one shape mix (runs with another
label count get passes of their own), and only heads peft can mix (a Linear layer, not e.g. RoBERTa's two-layer
head).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable

import torch

from ftune import run as run_dir
from ftune.data.batching import eval_batches
from ftune.data.tokenize import Encoded, collate
from ftune.errors import ConfigError, RunError
from ftune.inference import PerRow, autocast, to_device
from ftune.methods import method_for
from ftune.predictors.base import EXPORT_FILE, Labeler
from ftune.predictors.pytorch import Predictor, adapter_errors, base_source, open_run_files
from ftune.run import damaged_run_fix


class _Encoded(Exception):
    """A task's encoded texts and its per_row, handed over by `outputs` in the first pass of `mixed_answers`."""


class AdapterPredictor(Predictor):
    """An adapter run on a base model it shares with other runs (`bases`: one PeftModel per base, filled as runs load).
    On its own, its adapter is made the active one before each forward pass; `mixed_answers` runs several such runs'
    texts together. Forward passes must not overlap: the served app runs them all in its one model thread."""

    mixes_with: tuple | None = None  # (base model, head shapes): runs with the same one may share passes (mixed)
    collecting = False  # mixed_answers' first pass: `outputs` hands the encoded texts over instead
    handed: list | None = None  # mixed_answers' second pass: what `outputs` returns, computed already

    def __init__(self, run_path: str | Path, bases: dict, **kwargs):
        self.bases = bases
        super().__init__(run_path, **kwargs)

    def load(self, run: run_dir.RunFolder, trust_remote_code: bool) -> tuple:
        from peft import PeftModel

        tokenizer, folder, _, trust = open_run_files(run, trust_remote_code)
        method = method_for(run.config)
        key = (base_source(run), self.task.name, trust, method.name)
        model = self.bases.get(key)
        self.adapter = f"run{len(model.peft_config) if model is not None else 0}"  # a folder name may hold a '.'
        with adapter_errors(folder, damaged_run_fix(run.path)):
            if model is None:
                base = self.task.load_model(key[0], run.labels, trust)
                model = self.bases[key] = PeftModel.from_pretrained(base, str(folder), adapter_name=self.adapter)
            else:
                fit_heads(model, folder / "adapter_model.safetensors", self.adapter)
                model.load_adapter(str(folder), adapter_name=self.adapter)
        head = head_shapes(model, self.adapter)
        mixes = head is not None and method.mixes_in_batch
        self.mixes_with = (id(model), head) if mixes else None  # what it shares passes with (mixed)
        return tokenizer, model.eval(), True

    def outputs(self, data, per_row: PerRow) -> list:
        if self.collecting:
            raise _Encoded(data, per_row)
        if self.handed is not None:
            handed, self.handed = self.handed, None
            return handed
        if self.model.active_adapter != self.adapter:  # switching walks every layer: ~2 ms on MiniLM
            self.model.set_adapter(self.adapter)
        return super().outputs(data, per_row)


def fit_heads(model, weights: Path, adapter: str) -> None:
    """Room for an adapter's own head where its size differs from the shared base's (another label count): peft
    copies the base's head for each adapter and then cannot load weights of another shape into the copy."""
    from peft.utils.other import ModulesToSaveWrapper
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    for path, wrapper in model.named_modules():
        if not isinstance(wrapper, ModulesToSaveWrapper):
            continue
        head = None
        for name, param in wrapper.original_module.named_parameters():
            shape = shapes.get(f"{path}.{name}")
            if shape is not None and shape != tuple(param.shape):
                head = head or copy.deepcopy(wrapper.original_module)
                owner, _, leaf = name.rpartition(".")
                room = torch.nn.Parameter(param.new_zeros(shape), requires_grad=False)
                setattr(head.get_submodule(owner), leaf, room)
        if head is not None:  # peft keeps a head already there and loads the adapter's weights into it
            wrapper.modules_to_save[adapter] = head


def head_shapes(model, adapter: str) -> tuple | None:
    """The shapes of an adapter's own head, which other adapters' heads must share to mix with it in a batch; None
    for a head peft cannot mix (only a Linear, Embedding or convolution layer)."""
    from peft.utils.other import ModulesToSaveWrapper

    heads = [w.modules_to_save[adapter] for w in model.modules() if isinstance(w, ModulesToSaveWrapper)]
    if not all(isinstance(head, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d)) for head in heads):
        return None
    return tuple(tuple(p.shape) for head in heads for p in head.parameters())


def answer_items(models: dict[str, Labeler], mixed: bool = False) -> Callable[[list[tuple[str, str]]], list]:
    """predict for a micro-batch of (model name, text) items: each model's texts as one batch, or (`mixed`) the
    texts of runs that share a base model and a head shape together (`mixed_answers`)."""

    def predict(items: list[tuple[str, str]]) -> list:
        rows: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(items):
            rows.setdefault(name, []).append(i)
        together: dict = {}
        for name in rows:
            key = getattr(models[name], "mixes_with", None) if mixed else None
            together.setdefault(key or name, []).append(name)
        answers: list = [None] * len(items)
        for names in together.values():
            groups = [(models[name], [items[i][1] for i in rows[name]]) for name in names]
            results = mixed_answers(groups) if len(groups) > 1 else [groups[0][0].predict(groups[0][1])]
            for name, result in zip(names, results):
                for i, answer in zip(rows[name], result):
                    answers[i] = answer
        return answers

    return predict


def mixed_answers(groups: list[tuple[AdapterPredictor, list[str]]]) -> list[list]:
    """Each run's answers to its texts, for runs on one base model, through forward passes they share: each run's
    task encodes its texts (its predictor's `outputs` hands them over instead of running the model), one set of
    passes runs every text through its own adapter, and each task turns its outputs into answers."""
    jobs, answers = [], []
    for predictor, texts in groups:
        predictor.collecting = True
        try:
            answers.append(predictor.predict(texts))  # only a task that answers without the model gets here
        except _Encoded as handed:
            answers.append(None)
            jobs.append((predictor, *handed.args))
        finally:
            predictor.collecting = False
    outputs = iter(mixed_outputs(jobs) if jobs else [])
    for i, (predictor, texts) in enumerate(groups):
        if answers[i] is None:
            predictor.handed = next(outputs)
            try:
                answers[i] = predictor.predict(texts)
            finally:
                predictor.handed = None
    return answers


@torch.inference_mode()
def mixed_outputs(jobs: list[tuple[AdapterPredictor, Encoded, PerRow]]) -> list[list]:
    """Each job's per_row outputs in its order, from passes over every job's examples sorted by length together,
    each example through its own run's adapter (peft's `adapter_names`)."""
    first = jobs[0][0]
    owners = [(j, i) for j, (_, data, _) in enumerate(jobs) for i in range(len(data))]
    types = [data.token_type_ids for _, data, _ in jobs]  # one tokenizer family: all or none have them
    merged = Encoded([jobs[j][1].input_ids[i] for j, i in owners],
                     None if None in types else [types[j][i] for j, i in owners], None)
    out: list[list] = [[None] * len(data) for _, data, _ in jobs]
    for indices in eval_batches(merged.lengths, first.batch_size):
        batch = to_device(collate(merged, indices, first.tokenizer.pad_token_id or 0), first.device)
        adapters = [jobs[owners[i][0]][0].adapter for i in indices]
        with autocast(first.device, first.dtype):
            logits = first.task.forward(first.model, batch | {"adapter_names": adapters})
        for j, (_, _, per_row) in enumerate(jobs):
            mine = [r for r, i in enumerate(indices) if owners[i][0] == j]
            if mine:
                part = {key: value[mine] for key, value in batch.items()}
                for r, row in zip(mine, per_row(logits[mine], part)):
                    out[j][owners[indices[r]][1]] = row
    return out


def model_names(paths: list[Path]) -> list[str]:
    """Each run's name in requests: its folder's name, which must differ from the others'."""
    names = [Path(os.path.abspath(path)).name for path in paths]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{paths[names.index(name)]} and {paths[i]} would both be served as '{name}' (a model is "
                              f"named by its folder); rename one folder, or serve a symlink to it with another name")
    return names


def load_many(paths: list[str | Path], trust_remote_code: bool = False, device: str = "auto",
              precision: str = "fp32") -> dict[str, Labeler]:
    """{name: predictor} of several run directories, adapter runs of one base model sharing it (see the module)."""
    from ftune.tasks import task_for

    paths = [Path(path) for path in paths]
    names = model_names(paths)
    for path in paths:  # every folder checked before any model is loaded
        if (path / EXPORT_FILE).is_file():
            raise ConfigError(f"{path} is an ONNX export, which `ftune serve` serves alone; serve the run it was "
                              f"exported from beside the others, or serve the export by itself")
        run = run_dir.Run(path)
        if task_for(run.config).serves == "chat":
            raise RunError(f"{path} is a {run.config.task.name} run: it writes text rather than labels; serve "
                           f"labeling runs only (`ftune generate {path} --prompt TEXT` answers prompts)")
    bases: dict = {}
    options = {"trust_remote_code": trust_remote_code, "device": device, "precision": precision}
    return {name: Predictor(path, **options) if (path / "model").is_dir() else AdapterPredictor(path, bases, **options)
            for name, path in zip(names, paths)}
