"""The task registry: a task is one module with a `Task` subclass (see ftune.tasks.base) plus its entry here.

The config's `task:` section is the tagged union of the tasks' Options classes, built from this registry, so the
loop, prediction, reports and the config all reach a task through `TASKS` and nothing else names one: what differs
between tasks elsewhere is a class attribute of Task (serves, decoder, distills, unit, ...).

Beside the tasks, the helpers they share: scoring.py (metrics, F1 from counts, the bootstrap interval), baselines.py
(the TF-IDF pipeline), labels.py (label sets and numbers in a label column); base.py writes test_predictions.csv.
tests/test_task_contract.py runs the same checks over every task registered here (its tiny data: tests/helpers.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftune.tasks.base import Task, TaskOptions
from ftune.tasks.causal_lm import CausalLM
from ftune.tasks.classification import Classification
from ftune.tasks.kto import KTO
from ftune.tasks.multi_label import MultiLabel
from ftune.tasks.ordinal import Ordinal
from ftune.tasks.preference import Preference
from ftune.tasks.regression import Regression
from ftune.tasks.reward import RewardModel
from ftune.tasks.tagging import Tagging

if TYPE_CHECKING:
    from ftune.config import Config

TASKS: dict[str, type[Task]] = {task.name: task for task in (Classification, Tagging, CausalLM, Regression, MultiLabel,
                                                                 Ordinal, Preference, KTO, RewardModel)}
DEFAULT_TASK = Classification.name  # a config's task when it names none and none is read off the data


def task_for(config: Config, state: dict | None = None) -> Task:
    """The task of a config (`state`: what its `calibrate` saved in a run's task.json)."""
    return TASKS[config.task.name](config, state)


__all__ = ["DEFAULT_TASK", "TASKS", "Task", "TaskOptions", "task_for"]
