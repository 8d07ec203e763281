"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ftune.methods.base import Method, MethodOptions


class FullOptions(MethodOptions):
    name: Literal["full"] = Field("full", description="full fine-tuning: every weight trains")


class Full(Method):
    name = "full"
    Options = FullOptions
    learning_rate = 5e-5
    learning_rate_source = "measured on built-in data: bench/lr_grid.py"

    def wrap(self, model, task_type: str):
        return model
