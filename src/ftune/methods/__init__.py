"""The method registry: a method is one module with a `Method` subclass (see ftune.methods.base) plus its entry here.

The config's `method:` section is the tagged union of the methods' Options classes, built from this registry
(ftune.schema), so the loop, the run's files, tuning, export, serving and the config all reach a method through
`METHODS` and nothing else names one: what differs between methods is an attribute of Method (trains_adapter,
mergeable, frozen_in_bf16, default_learning_rate, search_space, ...). tests/test_methods.py runs the same checks
over every method registered here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftune.methods.base import Method, MethodOptions, count_parameters, encoder_layers, frozen_to
from ftune.methods.contrastive import Contrastive
from ftune.methods.dora import Dora
from ftune.methods.freeze import Freeze
from ftune.methods.full import Full
from ftune.methods.lora import Lora
from ftune.methods.prompt_tuning import PromptTuning

if TYPE_CHECKING:
    from ftune.config import Config

METHODS: dict[str, type[Method]] = {method.name: method
                                    for method in (Full, Freeze, Lora, Dora, PromptTuning, Contrastive)}
DEFAULT_METHOD = Full.name  # a config's method when it names none


def method_for(config: Config) -> Method:
    """The method of a config (a run's, or one being read), holding its options."""
    return METHODS[config.method.name](config.method)


__all__ = ["DEFAULT_METHOD", "METHODS", "Method", "MethodOptions", "count_parameters", "encoder_layers", "frozen_to",
           "method_for"]
