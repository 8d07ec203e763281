"""`ftune generate`: text from an instruction-tuned run (its merged model, or the base model plus its adapter).
`ftune serve` answers OpenAI-style chat requests with the same Generator (ftune.chat_api)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, StoppingCriteriaList, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)

from ftune.errors import ConfigError, DataError, RunError
from ftune.inference import resolve_device
from ftune.predictors import load_run_model
from ftune.run import RUN_FILE, Run
from ftune.tasks import TASKS
from ftune.tasks.causal_lm import end_of_turn_ids, plain_layout

# Below this a temperature divides logits past float32's range (inf, then NaN probabilities); sampling at it is
# greedy search in all but name, so it is greedy search.
GREEDY_BELOW = 1e-5
TOP_K = 50  # transformers' top_k when sampling, where the model's generation config sets none


def is_causal_lm_run(path: str | Path) -> bool:
    """Whether `path` is a run whose task writes text (`ftune serve` answers it with the chat API); an export or
    another folder is not (load_predictor says what it is). A run that did not finish or is damaged is a RunError,
    as anywhere."""
    return (Path(path) / RUN_FILE).is_file() and TASKS[Run(path).config.task.name].serves == "chat"


class Generator:
    kind = "pytorch"
    writes_text = True  # what ftune.serve dispatches on: served by ftune.chat_api, not by POST /v1/predict

    def __init__(self, run_dir: str | Path, trust_remote_code: bool = False, device: str = "auto"):
        """`trust_remote_code`: run model code from the run's folder when its config asks to (--trust-remote-code);
        `device`: auto (the GPU when there is one), cpu or cuda."""
        self.device = resolve_device(device)
        run = Run(run_dir)
        self.task_name = run.config.task.name
        if TASKS[self.task_name].serves != "chat":
            raise RunError(f"{run.path} is a {self.task_name} run; `ftune generate` needs a causal-lm run "
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
        return {"kind": self.kind, "task": self.task_name, "base_model": self.base_model, "source": str(self.path),
                "device": str(self.device), "max_positions": self.max_positions}

    def prompt(self, messages: list[dict]) -> list[int]:
        """The ids of a conversation ({role, content} messages), laid out as in training, ending where the
        assistant's answer begins. A special token's text inside a message (`<|im_end|>`, `<|system|>`...) is encoded
        as text, as serving engines do: only the template writes control tokens, so a message cannot forge a turn.
        Messages without such text get the ids training gave them."""
        try:
            if self.tokenizer.chat_template:
                return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                               sanitize_control_tokens=True)["input_ids"])
            # The plain layout writes no special token into the text: all there is the user's
            return self.tokenizer(plain_layout(messages), split_special_tokens=True)["input_ids"]
        except ValueError as e:  # transformers: a special token that this tokenizer cannot write as text
            raise DataError(f"{e}; remove it from the messages") from None

    def generate(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0,
                 system: str | None = None) -> str:
        """The model's answer to one prompt, laid out as in training; greedy unless temperature >= GREEDY_BELOW."""
        chat = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        written = self.complete(self.prompt(chat), max_new_tokens, temperature, seed=seed)
        return self.tokenizer.decode(written, skip_special_tokens=True).strip()

    @torch.inference_mode()
    def complete(self, ids: list[int], max_new_tokens: int, temperature: float = 0.0, top_p: float | None = None,
                 seed: int | None = 0, stopping_criteria: list | None = None) -> list[int]:
        """The ids the model writes after the prompt `ids`, its end-of-turn token included when it writes one;
        greedy unless temperature >= GREEDY_BELOW. `top_p` None: the model's generation config decides; `seed`
        None: a fresh random one. Sampling draws from a generator of its own, never from torch's global one (a seed
        there would replay every later unseeded answer). `stopping_criteria` (transformers' StoppingCriteria) see the
        ids after every new token, before generation decides whether to go on: the chat API streams and stops there."""
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ConfigError(f"temperature is {temperature}; give a finite number, 0 or more (0: greedy)")
        if top_p is not None and not 0 < top_p <= 1:
            raise ConfigError(f"top_p is {top_p}; give a number above 0 and at most 1")
        processors = []
        if temperature >= GREEDY_BELOW:
            rng = torch.Generator(self.device)
            if seed is None:
                rng.seed()  # a non-deterministic seed (std::random_device), its own for each call
            else:
                rng.manual_seed(seed)
            config = self.model.generation_config
            processors.append(_Sample(temperature, TOP_K if config.top_k is None else config.top_k,
                                      config.top_p if top_p is None else top_p, rng))
        ids = torch.tensor([ids], device=self.device)
        # Greedy search: with _Sample last among the logits processors, the token it drew is the greedy choice
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                                  eos_token_id=self.stop_ids, do_sample=False,
                                  logits_processor=LogitsProcessorList(processors),
                                  stopping_criteria=StoppingCriteriaList(stopping_criteria or []))
        return out[0, ids.shape[1]:].tolist()


class _Sample(LogitsProcessor):
    """Draws the next token as transformers' sampling does (temperature, then top-k, then top-p), but from `rng`,
    and leaves it the only token with a finite score, so greedy search takes it. transformers draws from torch's
    global generator, which a request's seed would reset for every request after it."""

    def __init__(self, temperature: float, top_k: int, top_p: float | None, rng: torch.Generator):
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.rng = rng

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        drawn = torch.multinomial(scores.float().softmax(-1), 1, generator=self.rng)
        return torch.full_like(scores, -math.inf).scatter_(1, drawn, 0.0)
