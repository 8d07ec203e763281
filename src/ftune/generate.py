"""`ftune generate`: text from an instruction-tuned run (its merged model, or the base model plus its adapter).
`ftune serve` answers OpenAI-style chat requests with the same Generator (ftune.chat_api)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import StoppingCriteriaList

from ftune.errors import RunError
from ftune.inference import resolve_device
from ftune.predictors import load_run_model
from ftune.run import RUN_FILE, Run
from ftune.tasks.causal_lm import end_of_turn_ids, prompt_ids


def is_causal_lm_run(path: str | Path) -> bool:
    """Whether `path` is a causal-lm run (`ftune serve` answers it with the chat API); an export or another folder
    is not (load_predictor says what it is). A run that did not finish or is damaged is a RunError, as anywhere."""
    return (Path(path) / RUN_FILE).is_file() and Run(path).config.task.name == "causal-lm"


class Generator:
    kind = "pytorch"
    writes_text = True  # what ftune.serve dispatches on: served by ftune.chat_api, not by POST /v1/predict

    def __init__(self, run_dir: str | Path, trust_remote_code: bool = False, device: str = "auto"):
        """`trust_remote_code`: run model code from the run's folder when its config asks to (--trust-remote-code);
        `device`: auto (the GPU when there is one), cpu or cuda."""
        self.device = resolve_device(device)
        run = Run(run_dir)
        if run.config.task.name != "causal-lm":
            raise RunError(f"{run.path} is a {run.config.task.name} run; `ftune generate` needs a causal-lm run "
                           f"(use `ftune predict` for labels)")
        self.path, self.base_model = run.path, run.config.model.name
        # The merged model, or the base model + adapter, after the same checks as a classifier's.
        self.tokenizer, self.model, _ = load_run_model(run, trust_remote_code)
        self.model.to(self.device)
        self.stop_ids = end_of_turn_ids(self.tokenizer)  # the template's end of an answer (<|im_end|>...), learned
        # Prompt + answer must fit the model's positions (the tokenizer's limit where it has one: unset is huge).
        limits = [n for n in (getattr(self.model.config, "max_position_embeddings", None),
                              self.tokenizer.model_max_length) if n and n < 1_000_000]
        self.max_positions: int | None = min(limits, default=None)

    def describe(self) -> dict:
        return {"kind": self.kind, "task": "causal-lm", "base_model": self.base_model, "source": str(self.path),
                "device": str(self.device), "max_positions": self.max_positions}

    def prompt(self, messages: list[dict]) -> list[int]:
        """The ids of a conversation ({role, content} messages), laid out as in training, ending where the
        assistant's answer begins."""
        return prompt_ids(self.tokenizer, messages)

    def generate(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0,
                 system: str | None = None) -> str:
        """The model's answer to one prompt, laid out as in training; greedy unless temperature > 0."""
        chat = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        written = self.complete(self.prompt(chat), max_new_tokens, temperature, seed=seed)
        return self.tokenizer.decode(written, skip_special_tokens=True).strip()

    @torch.inference_mode()
    def complete(self, ids: list[int], max_new_tokens: int, temperature: float = 0.0, top_p: float | None = None,
                 seed: int | None = 0, stopping_criteria: list | None = None) -> list[int]:
        """The ids the model writes after the prompt `ids`, its end-of-turn token included when it writes one;
        greedy unless temperature > 0. `top_p` None: the model's generation config decides; `seed` None: the
        random state goes on as it is. `stopping_criteria` (transformers' StoppingCriteria) see the ids after every
        new token, before generation decides whether to go on: the chat API streams and stops from there."""
        ids = torch.tensor([ids], device=self.device)
        if seed is not None:
            torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        if temperature > 0 and top_p is not None:
            sampling["top_p"] = top_p
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                                  eos_token_id=self.stop_ids,
                                  stopping_criteria=StoppingCriteriaList(stopping_criteria or []), **sampling)
        return out[0, ids.shape[1]:].tolist()
