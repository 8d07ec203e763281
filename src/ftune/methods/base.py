"""The Method interface: what changes from one fine-tuning method to another, as one class per method.

A run asks its method (`method_for(config)`, the registry in ftune.methods):

    method.check(task, config)              # when the config is read: a combination it cannot train is refused
    method.default_learning_rate(task)      # train.learning_rate when the config sets none
    method.added_positions                  # positions it puts before each text (data.max_length's room)
    model = method.wrap(model, task.peft_type)  # after the task loads the model: what trains
    method.frozen_in_bf16                   # the frozen base may be held in bf16 on a bf16 GPU (ftune.optim)
    method.trains_adapter, method.merges    # adapter/ (peft's files), and merged weights in model/ too
    method.quantized                        # a 4-bit base (QLoRA), which is merged as it is
    method.refuse_merge(what, instead)      # export, a distillation student cut from a run: needs `mergeable`
    method.mixes_in_batch                   # serve --mixed-adapters may mix its adapters in one pass
    method.search_space(config)             # `ftune tune`'s ranges for its own options
    method.training_loss(task_loss)         # the loss the loop trains on: the task's, or the method's beside it

Nothing outside ftune.methods compares a method's name; what differs between methods is asked here. Method modules
import neither torch nor peft at the top: the config imports them for their option classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ftune.errors import ConfigError
from ftune.lazy import lazy
from ftune.section import Section

torch = lazy("torch")

if TYPE_CHECKING:
    from torch import nn

    from ftune.config import Config
    from ftune.tasks import Task


class MethodOptions(Section):
    """A method's section of the config, `method: {name: ..., its options}` (or just `method: NAME`); the `name`
    field's description is the method's one-line description (`ftune config`, the docs)."""

    name: str


class Method(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]]
    learning_rate: ClassVar[float]  # the default peak rate when the config sets none (see default_learning_rate)
    decoder_learning_rate: ClassVar[float | None] = None  # ...for a decoder's task (Task.decoder), where it differs
    learning_rate_source: ClassVar[str] = ""  # where the default comes from, said when a run uses it
    trains_adapter: ClassVar[bool] = False  # peft adapter: saved to adapter/ (peft's files), the base left as it was
    mergeable: ClassVar[bool] = True  # its adapter folds into the base's weights (merge_and_unload): ONNX export,
    # a distillation student cut from the run, method.merge where the method has it
    mixes_in_batch: ClassVar[bool] = False  # serve --mixed-adapters: rows of one pass may go through different
    # adapters of this method (peft's per-example `adapter_names`)

    def __init__(self, options: MethodOptions):
        self.options = options

    @property
    def description(self) -> str:
        return self.Options.model_fields["name"].description

    @property
    def merges(self) -> bool:
        """model/ gets the adapter merged into full weights, beside adapter/ (an adapter method's `merge` option)."""
        return False

    @property
    def quantized(self) -> bool:
        """The frozen base is held in 4 bits (QLoRA): it cannot be cast back to float32 to merge."""
        return False

    @property
    def frozen_in_bf16(self) -> bool:
        """The weights that do not train may be held in bf16 on a bf16 GPU: they are only read under bf16 autocast
        there, so that halves their memory. A method that trains every weight, or whose base is 4-bit already, says
        no."""
        return False

    @property
    def added_positions(self) -> int:
        """Positions the method puts before each text (prompt tuning's virtual tokens): data.max_length plus these
        must fit the model."""
        return 0

    @classmethod
    def default_learning_rate(cls, task: type[Task]) -> float:
        """train.learning_rate when the config sets none, for this task."""
        return cls.decoder_learning_rate if task.decoder and cls.decoder_learning_rate else cls.learning_rate

    def check(self, task: type[Task], config: Config) -> None:
        """Refuse, with a ValueError naming the fix, a combination of task and settings this method cannot train;
        called when the config is read, before any data or model."""

    @abstractmethod
    def wrap(self, model: nn.Module, task_type: str) -> nn.Module:
        """The freshly loaded model under this method: what trains and what stays fixed. `task_type`: peft's task
        type of the run's task (SEQ_CLS, TOKEN_CLS, CAUSAL_LM), which keeps a new head trainable and saved."""

    def refuse_merge(self, what: str, instead: str) -> None:
        """One line (ConfigError) when `what` needs the run's weights merged and this method's adapter cannot be:
        `instead` says what to do."""
        if self.trains_adapter and not self.mergeable:
            raise ConfigError(f"{what} needs the adapter merged into the model's weights, and a {self.name} adapter "
                              f"cannot be merged; {instead}")

    def training_loss(self, task_loss: Callable) -> Callable:
        """The loss the loop minimizes, `(out, batch) -> (sum, count)` as the task's: the task's own unless the method
        adds a term of its own (evaluation reads the task's loss alone)."""
        return task_loss

    def search_space(self, config: Config) -> dict[str, dict[str, Any]]:
        """`ftune tune`'s ranges for this method's own options, in a --space file's shape ({low, high, log} or
        {choices}); the learning rate, epochs and batch are ftune.tune's."""
        return {}


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer layers: the ModuleList as long as config.num_hidden_layers."""
    n = model.config.num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ConfigError(f"cannot find the {n} encoder layers of {type(model).__name__}; use method.layers=null "
                      f"(head only)")


def frozen_to(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The weights that do not train, in `dtype` (float32 ones only: 4-bit or int8 weights stay as they are)."""
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            p.data = p.data.to(dtype)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
