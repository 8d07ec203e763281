"""DoRA (Liu et al. 2024, "Weight-Decomposed Low-Rank Adaptation"): LoRA whose update sets each weight's direction,
with the weight's magnitude learned apart (one value per output). peft's LoraConfig(use_dora=True); saved, loaded,
merged and exported as LoRA is."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ftune.methods.lora import Lora, LoraOptions


class DoraOptions(LoraOptions):
    name: Literal["dora"] = Field("dora", description="DoRA adapters (peft, LoRA with a learned magnitude per output); "
                                                      "the base model stays fixed")


class Dora(Lora):
    name = "dora"
    Options = DoraOptions
    # LoRA's rates (learning_rate, decoder_learning_rate): peft offers DoRA as a switch on LoRA's config, to use with
    # LoRA's settings; bench/lr_grid.py has not measured DoRA apart.
    learning_rate_source = "LoRA's defaults, not measured for DoRA apart"
    mixes_in_batch = False  # peft refuses per-example adapter_names when DoRA is enabled

    def peft_config(self, task_type: str, **extra):
        return super().peft_config(task_type, use_dora=True, **extra)
