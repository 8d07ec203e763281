"""LoRA adapters through peft, and QLoRA (method.load_in_4bit: the frozen base in 4 bits, GPU only)."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field

from ftune.errors import ConfigError
from ftune.methods.base import Method, MethodOptions


class LoraOptions(MethodOptions):
    name: Literal["lora"] = Field("lora", description="LoRA adapters (peft); the base model stays fixed")
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA scaling alpha")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the LoRA path")
    target_modules: Union[list[str], Literal["all-linear"], None] = Field(
        None, description="module names to adapt, or all-linear; None: peft's default for the model")
    merge: bool = Field(False, description="also write merged full weights to model/")
    load_in_4bit: bool = Field(False, description="QLoRA: keep the frozen base weights in 4 bits (bitsandbytes NF4); "
                                                  "needs a CUDA GPU")


class Lora(Method):
    name = "lora"
    Options = LoraOptions
    # Adapters want larger steps than full fine-tuning: at full fine-tuning's 5e-5 LoRA learned nothing in 2 epochs on
    # a real corpus; 1e-3 measured best on built-in data (bench/lr_grid.py, the README shows the grid).
    learning_rate = 1e-3
    decoder_learning_rate = 2e-4  # the QLoRA paper's rate for decoders (Dettmers et al. 2023); not measurable offline
    learning_rate_source = "measured on built-in data: bench/lr_grid.py; decoders: the QLoRA paper's"
    trains_adapter = True
    mixes_in_batch = True

    @property
    def merges(self) -> bool:
        return self.options.merge

    @property
    def quantized(self) -> bool:
        return self.options.load_in_4bit

    @property
    def frozen_in_bf16(self) -> bool:
        return not self.options.load_in_4bit  # QLoRA's base is 4-bit already

    def peft_config(self, task_type: str, **extra):
        """peft's LoraConfig for these options; `extra`: what a variant of LoRA adds (DoRA: use_dora)."""
        from peft import LoraConfig, TaskType

        o = self.options
        return LoraConfig(task_type=TaskType[task_type], r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout,
                          target_modules=o.target_modules, **extra)

    def wrap(self, model, task_type: str):
        """The task type (SEQ_CLS, TOKEN_CLS) keeps a new head trainable and saved; with load_in_4bit (QLoRA) the
        model arrived quantized (ftune.models) and peft prepares it for training."""
        from peft import get_peft_model, prepare_model_for_kbit_training

        if self.options.load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        try:
            return get_peft_model(model, self.peft_config(task_type))
        except ValueError as e:
            raise ConfigError(f"method.target_modules: {str(e).splitlines()[0]}; name modules the model has") from None

    def search_space(self, config) -> dict:
        return {"method.r": {"choices": [4, 8, 16, 32]}, "method.alpha": {"choices": [8, 16, 32, 64]},
                "method.dropout": {"low": 0.0, "high": 0.2}}
