"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"): a few learned
embeddings ("virtual tokens") put before every text, through peft's PromptTuningConfig; the model's weights stay
fixed (a new classification head trains beside them). Saved in adapter/ as peft writes it. The virtual tokens are
inputs, not weights: there is nothing to merge, so such a run serves and predicts through peft and is not exported."""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field

from ftune.methods.base import Method, MethodOptions

# peft drops the position ids a decoder's batch carries under prompt tuning, and warns at every forward pass; ftune
# refuses the one layout that needs them (task.packing), so for our users the line is noise.
warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning")


class PromptTuningOptions(MethodOptions):
    name: Literal["prompt-tuning"] = Field("prompt-tuning", description="prompt tuning (peft): learned virtual tokens "
                                           "before each text; the base model stays fixed")
    virtual_tokens: int = Field(20, ge=1, le=512, description="learned embeddings put before each text (they take "
                                "positions: data.max_length plus these must fit the model)")
    init: Literal["vocab", "random"] = Field("vocab", description="start of the virtual tokens: vocab: embeddings of "
                                             "randomly drawn vocabulary tokens (Lester et al. 2021: better than "
                                             "random); random: random vectors")


class PromptTuning(Method):
    name = "prompt-tuning"
    Options = PromptTuningOptions
    # peft's prompt-tuning example for decoders (examples/causal_language_modeling/peft_prompt_tuning_clm.ipynb) trains
    # with AdamW at 3e-2; Lester et al. 2021 used 0.3 with Adafactor. A few embeddings need far larger steps than
    # weights do.
    learning_rate = 3e-2
    learning_rate_source = "peft's prompt-tuning example"
    trains_adapter = True
    mergeable = False  # virtual tokens are inputs: no weights to fold them into

    @property
    def frozen_in_bf16(self) -> bool:
        return True  # the fixed model is only read, under autocast, as under LoRA

    @property
    def added_positions(self) -> int:
        return self.options.virtual_tokens

    def check(self, task, config) -> None:
        if task.peft_type not in ("SEQ_CLS", "CAUSAL_LM"):
            raise ValueError(f"method prompt-tuning does not apply to task {task.name}: peft leaves the virtual "
                             f"tokens' outputs in a per-token model's answers, out of line with the labels; use method "
                             f"lora or dora")
        if getattr(config.task, "packing", False):
            raise ValueError("method prompt-tuning with task.packing: peft drops the position ids that keep packed "
                             "examples apart; set task.packing=false or use method lora")
        if task.pairs_in_a_row:
            raise ValueError(f"method prompt-tuning does not apply to task {task.name}: peft drops the position ids "
                             f"that keep a row's two answers apart; use method lora")

    def wrap(self, model, task_type: str):
        from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        start = PromptTuningInit.SAMPLE_VOCAB if self.options.init == "vocab" else PromptTuningInit.RANDOM
        return get_peft_model(model, PromptTuningConfig(task_type=TaskType[task_type], prompt_tuning_init=start,
                                                        num_virtual_tokens=self.options.virtual_tokens))

    def search_space(self, config) -> dict:
        return {"method.virtual_tokens": {"choices": [5, 10, 20, 50]}}
