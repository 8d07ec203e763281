"""Settings a config leaves unset, chosen from the data: how many passes (epochs) a run makes over its training split,
and for a few labeled texts a class, the method.

A fixed 3 epochs is 45 optimizer steps on 480 texts and 2,800 on 30,000: the first is too few to learn (the loss
is still falling when the run ends; docs/tuning.md#how-long-a-run-trains-epochs-from-the-data has the grid behind
this), the second longer than it needs to be on a CPU. So the step count is what is fixed: at least MIN_STEPS
optimizer steps (more epochs over a small split, up to MAX_EPOCHS), 3 epochs where that is already enough, and fewer
than 3 where 3 would pass MAX_STEPS. The best checkpoint on validation is what a run keeps, so passes past the best cost time, not
accuracy. The learning rate stays the method's (ftune.methods), which was measured at these step counts.

With FEW_PER_CLASS training texts a class or fewer (on average), a config that names no method gets method contrastive:
its pairs of texts teach the model more than the labels alone (docs/tuning.md#few-labeled-texts, bench/fewshot.py).

Pure functions of the config and the split sizes: `ftune train` resolves them before the run directory is written, so
config.yaml holds the numbers (a --resume or a rerun sees the same), and run.json keeps the reason.
"""

from __future__ import annotations

import math

from ftune.schema import TrainConfig

DEFAULT_EPOCHS = 3  # where the step count is neither too few nor too many: the usual BERT fine-tuning recipe
MIN_STEPS = 300  # fewer left the loss still falling on the small splits of the grid (docs/tuning.md)
MAX_STEPS = 3000  # past this, more passes over a large split gained nothing in the grid, and cost CPU hours
MAX_EPOCHS = 40  # a split of a few dozen texts: the passes stop here (each pass is a step or two)
FEW_PER_CLASS = 64  # texts a class at or below which pairs help: the largest count bench/fewshot.py measured
MIN_VALIDATION = 30  # fewer validation texts than this choose a checkpoint by noise (one text is 3+ points of
# accuracy, and the first evaluation to reach 100% of two texts was kept): such a run keeps its last weights


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


def chooses_checkpoint(validation_texts: int) -> bool:
    """Whether a run keeps the checkpoint that scored best on validation (else its last weights)."""
    return validation_texts >= MIN_VALIDATION


def left_to_data(config) -> tuple[str, ...]:
    """The settings (dotted prefixes, as --set names them) a run of this config fills from the data."""
    return (("train.epochs",) if config.train.epochs is None else ()) + \
        (("method.",) if "method" not in config.model_fields_set else ())


def choose_method(config, texts: int, classes: int) -> tuple[str, str] | None:
    """The method for a config that names none, and the reason; None keeps the default."""
    from ftune.tasks import TASKS

    if "method" in config.model_fields_set or not TASKS[config.task.name].one_label_per_text or classes < 2 \
            or config.distill:  # a student learns its teacher's answers on every text, not a few labels alone
        return None
    if texts > FEW_PER_CLASS * classes:
        return None
    return "contrastive", (f"{texts:,} training texts over {classes} labels, {FEW_PER_CLASS} or fewer a label: pairs "
                           f"of texts teach more than the labels alone")


def rate_with(config, method: str) -> float:
    """The learning rate of `config` under another method: that method's default where the config's rate was its
    method's default, else the rate the config set."""
    from ftune.config import default_learning_rate

    return default_learning_rate(config.task.name, method) if config._learning_rate_is_default else \
        config.train.learning_rate


def resolved(config, texts: int, processes: int = 1, classes: int = 0):
    """`config` with the settings it leaves unset filled from the training split (its size, its labels): a copy (the
    caller's config may start other runs), whose `_chosen` is {setting: {"value", "reason", "key"}} for run.json and
    the run's first lines (empty when the config set them all)."""
    from ftune.methods import METHODS

    config = config.model_copy(deep=True)
    method = choose_method(config, texts, classes)
    if method:
        config.train.learning_rate = rate_with(config, method[0])
        config.method = METHODS[method[0]].Options()
        config._chosen = {**config._chosen, "method": {"value": method[0], "reason": method[1], "key": "--method"}}
    if config.train.epochs is None:
        config.train.epochs, why = choose_epochs(texts, config.train, processes)
        config._chosen = {**config._chosen, "epochs": {"value": config.train.epochs, "reason": why,
                                                       "key": "train.epochs"}}
    return config
