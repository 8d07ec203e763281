"""`ftune generate`: text from an instruction-tuned run (its merged model, or the base model plus its adapter)."""

from __future__ import annotations

from pathlib import Path

import torch

from ftune.errors import RunError
from ftune.inference import resolve_device
from ftune.predictors import load_run_model
from ftune.run import Run
from ftune.tasks.causal_lm import end_of_turn_ids, prompt_ids


class Generator:
    def __init__(self, run_dir: str | Path, trust_remote_code: bool = False, device: str = "auto"):
        """`trust_remote_code`: run model code from the run's folder when its config asks to (--trust-remote-code);
        `device`: auto (the GPU when there is one), cpu or cuda."""
        self.device = resolve_device(device)
        run = Run(run_dir)
        if run.config.task.name != "causal-lm":
            raise RunError(f"{run.path} is a {run.config.task.name} run; `ftune generate` needs a causal-lm run "
                           f"(use `ftune predict` for labels)")
        # The merged model, or the base model + adapter, after the same checks as a classifier's.
        self.tokenizer, self.model, _ = load_run_model(run, trust_remote_code)
        self.model.to(self.device)
        self.stop_ids = end_of_turn_ids(self.tokenizer)  # the template's end of an answer (<|im_end|>...), learned

    @torch.inference_mode()
    def generate(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0,
                 system: str | None = None) -> str:
        """The model's answer to one prompt, laid out as in training; greedy unless temperature > 0."""
        chat = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = torch.tensor([prompt_ids(self.tokenizer, chat)], device=self.device)
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                                  eos_token_id=self.stop_ids, **sampling)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
