"""The task registry: a task is one module with a `Task` subclass (see ftune.tasks.base) plus its entry here.

The config's `task:` section is the tagged union of the tasks' Options classes, built from this registry, so the
loop, prediction, reports and the config all reach a task through `TASKS` and nothing else names one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftune.tasks.base import Task, TaskOptions
from ftune.tasks.causal_lm import CausalLM
from ftune.tasks.classification import Classification
from ftune.tasks.multi_label import MultiLabel
from ftune.tasks.regression import Regression
from ftune.tasks.tagging import Tagging

if TYPE_CHECKING:
    from ftune.config import Config

TASKS: dict[str, type[Task]] = {task.name: task for task in (Classification, Tagging, CausalLM, Regression, MultiLabel)}


def task_for(config: Config, state: dict | None = None) -> Task:
    """The task of a config (`state`: what its `calibrate` saved in a run's task.json)."""
    return TASKS[config.task.name](config, state)


__all__ = ["TASKS", "Task", "TaskOptions", "task_for"]
