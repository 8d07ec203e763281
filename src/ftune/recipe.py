"""Settings a config leaves unset, chosen from the data: how many passes (epochs) a run makes over its training split.

A fixed 3 epochs is 45 optimizer steps on 480 texts and 2,800 on 30,000: the first is too few to learn (the loss
is still falling when the run ends; see docs/tuning.md#defaults-that-follow-the-data for the grid behind this), the
second longer than it needs to be on a CPU. So the step count is what is fixed: at least MIN_STEPS optimizer steps
(more epochs over a small split, up to MAX_EPOCHS), 3 epochs where that is already enough, and fewer than 3 where 3
would pass MAX_STEPS. The best checkpoint on validation is what a run keeps, so passes past the best cost time, not
accuracy. The learning rate stays the method's (ftune.methods), which was measured at these step counts.

Pure functions of the config and the split sizes: `ftune train` resolves them before the run directory is written, so
config.yaml holds the numbers (a --resume or a rerun sees the same), and run.json keeps the reason.
"""

from __future__ import annotations

import math

from ftune.schema import TrainConfig

FILLS = ("train.epochs",)  # the settings a run fills when the config leaves them unset (dotted, as --set names them)
DEFAULT_EPOCHS = 3  # where the step count is neither too few nor too many: the usual BERT fine-tuning recipe
MIN_STEPS = 300  # fewer left the loss still falling on the small splits of the grid (docs/tuning.md)
MAX_STEPS = 3000  # past this, more passes over a large split gained nothing in the grid, and cost CPU hours
MAX_EPOCHS = 40  # a split of a few dozen texts: the passes stop here (each pass is a step or two)


def steps_per_epoch(texts: int, train: TrainConfig, processes: int = 1) -> int:
    """Optimizer steps in one pass over `texts` training examples at the config's batch (an `auto` batch counts as
    32, the default: it is only known once the model is on the device, and the rule is only a target)."""
    batch = train.batch_size if isinstance(train.batch_size, int) else 32
    return max(1, math.ceil(texts / (batch * processes * train.gradient_accumulation_steps)))


def choose_epochs(texts: int, train: TrainConfig, processes: int = 1) -> tuple[int, str]:
    """The epochs for a run over `texts` training examples, and the reason in words."""
    per_epoch = steps_per_epoch(texts, train, processes)
    steps = DEFAULT_EPOCHS * per_epoch
    if steps < MIN_STEPS:
        epochs = min(MAX_EPOCHS, math.ceil(MIN_STEPS / per_epoch))
        why = (f"{DEFAULT_EPOCHS} epochs would be {steps} steps, fewer than the {MIN_STEPS} a run needs to learn"
               + (f" (capped at {MAX_EPOCHS} epochs)" if epochs == MAX_EPOCHS else ""))
    elif steps > MAX_STEPS:
        epochs = max(1, MAX_STEPS // per_epoch)
        why = f"{DEFAULT_EPOCHS} epochs would be {steps} steps, more than the {MAX_STEPS} that a large split needs"
    else:
        epochs, why = DEFAULT_EPOCHS, f"{steps} steps, between {MIN_STEPS} and {MAX_STEPS}"
    return epochs, f"{epochs} epochs of {per_epoch} steps over {texts:,} training texts: {why}"


def resolved(config, texts: int, processes: int = 1):
    """`config` with the train settings it leaves unset filled from the training split's size: a copy (the caller's
    config may start other runs), whose `_chosen` is {setting: {"value", "reason"}} for run.json and the run's first
    lines (empty when the config set them all)."""
    config = config.model_copy(deep=True)
    if config.train.epochs is None:
        config.train.epochs, why = choose_epochs(texts, config.train, processes)
        config._chosen = {**config._chosen, "epochs": {"value": config.train.epochs, "reason": why}}
    return config
