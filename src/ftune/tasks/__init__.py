"""What changes from one task to another, as one module per task with the same few functions:

    PEFT_TYPE, SHIFT           peft's task type; whether token t's logits predict label t+1 (causal LM)
    load_splits(config, seed)  -> Splits (train/validation/test frames and the label names)
    encode_splits(splits, tokenizer, config) -> {split: Encoded}
    load_model(source, labels, trust_remote_code, method)
    evaluate(accelerator, model, data, config, pad_id, labels, interval_seed=None) -> (metrics, outputs)
    baselines(splits, seed)    -> {name: metrics} for the simple models scored on the same test split
    summarize(splits, data, config) -> (data summary, warnings)
    save_predictions(run_dir, splits, data, outputs, labels)

The training loop (training.py) and prediction (predict.py) call only these; a module, not a class
tree, as with the fine-tuning methods.
"""

from __future__ import annotations

import importlib
from types import ModuleType


MODULES = {"classification": "classification", "token-classification": "tagging", "causal-lm": "causal_lm"}


def task_module(name: str) -> ModuleType:
    """The module of a config's `task` (imported on first use: a task's libraries load only when it runs)."""
    return importlib.import_module(f"ftune.tasks.{MODULES[name]}")
