"""Peak memory before training: an estimate from the model's shape, held against what the device has free.

The estimate counts tensors: the weights as they are held (fp32; a LoRA run's frozen base in bf16 on a GPU,
4-bit under QLoRA), gradients and AdamW's two moments for the trainable weights, and the activations one
optimizer step keeps for backward, for a batch of the longest texts (per layer, after Korthikanti et al. 2022:
~(10h + 2i) values per token plus 2 attention maps and a dropout mask per head; with SDPA on a GPU the fused
kernels keep no maps, only the batch's one mask). A decoder's loss adds one chunk
of fp32 logits (LOSS_CHUNK positions x the vocabulary: causal-lm's loss never holds more). It leaves out the
Python process and its libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftune.errors import ConfigError
from ftune.lazy import lazy
from ftune.tasks import TASKS
from ftune.tasks.causal_lm import CHUNK as LOSS_CHUNK  # a decoder's loss holds one chunk of logits at a time

torch = lazy("torch")

KNOBS = ("a smaller train.batch_size with more train.gradient_accumulation_steps (the same global batch), "
         "train.gradient_checkpointing=true, a smaller data.max_length, or method.name=lora")
# A decoder's peak is its weights and its long sequences: the knobs that help it most come first.
DECODER_KNOBS = ("train.gradient_checkpointing=true, method.name=lora (on a bf16 GPU its frozen base is held in bf16) "
                 "or with method.load_in_4bit=true (QLoRA: a 4-bit base, GPU only), a smaller train.batch_size with "
                 "more train.gradient_accumulation_steps, a smaller data.max_length (task.packing fills it), or "
                 "train.optimizer=adamw-8bit (full fine-tuning: a quarter of AdamW's state)")
# Share of the free memory `batch_size: auto` plans for: the whole process measured 2.1x the tensor estimate
# (MiniLM on mr, batch 32: 0.78 GB estimated, 1.65 GB peak RSS), so leave room for that and a margin.
AUTO_BUDGET = 0.4
AUTO_MAX = 256


@dataclass
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        gb = lambda n: f"{n / 1e9:.2f}"  # noqa: E731
        return (f"{gb(self.total)} GB (weights {gb(self.weights)}, gradients {gb(self.gradients)}, optimizer state "
                f"{gb(self.optimizer)}, activations {gb(self.activations)})")


def estimate(model: torch.nn.Module, batch: int, seq: int, half_precision: bool, checkpointing: bool,
             state_bytes: int = 8, fused_attention: bool = False) -> MemoryEstimate:
    """Peak bytes of one training step with `batch` texts of `seq` tokens; `state_bytes`: the optimizer's per trained
    weight (AdamW's two fp32 moments: 8; bitsandbytes' 8-bit AdamW: 2). `fused_attention`: attention runs in kernels
    that keep no per-head maps (SDPA's flash or memory-efficient kernels on a GPU): at 2,048 tokens the eager maps
    would be most of a decoder's estimate, and a batch that fits would be refused."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    c = model.config
    layers, hidden, heads = c.num_hidden_layers, c.hidden_size, c.num_attention_heads
    inner = getattr(c, "intermediate_size", None) or 4 * hidden
    value = 2 if half_precision else 4
    tokens = batch * seq
    maps = 0 if fused_attention else batch * heads * seq * seq * (2 * value + 1)
    one_layer = tokens * (10 * hidden + 2 * inner) * value + maps
    kept = layers * tokens * hidden * value + one_layer if checkpointing else layers * one_layer
    kept += batch * seq * seq if fused_attention else 0  # the one mask all layers read (packing: block-diagonal)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    head = model.get_output_embeddings()  # a decoder's vocabulary-sized output layer; None for a classifier
    loss = 2 * LOSS_CHUNK * head.weight.shape[0] * 4 if head is not None else 0  # one chunk's logits, recomputed
    return MemoryEstimate(weights=weights, gradients=4 * trainable, optimizer=state_bytes * trainable,
                          activations=kept + 2 * tokens * hidden * 4 + loss)  # + embeddings and the loss's inputs


def free_bytes(device: torch.device) -> int | None:
    """Free memory on the device: CUDA's free bytes, or the machine's MemAvailable; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def knobs(task: str) -> str:
    """The settings that lower this task's peak memory, most effective first."""
    return DECODER_KNOBS if TASKS[task].decoder else KNOBS


def check_fits(need: MemoryEstimate, free: int | None, where: str, advice: str = KNOBS) -> None:
    if free is not None and need.total > free:
        raise ConfigError(f"this run needs about {need.describe()} at its peak, but {free / 1e9:.2f} GB are free on "
                          f"{where}; try {advice} (or train.batch_size=auto)")


def auto_batch_size(model: torch.nn.Module, seq: int, half_precision: bool, checkpointing: bool, free: int | None,
                    where: str, advice: str = KNOBS, state_bytes: int = 8, fused_attention: bool = False) -> int:
    """The largest power of two (up to 256) whose estimate fits in AUTO_BUDGET of the free memory."""
    if free is None:
        raise ConfigError(f"train.batch_size=auto cannot see how much memory {where} has free; set a number")
    batch = AUTO_MAX
    while batch >= 1:
        if estimate(model, batch, seq, half_precision, checkpointing, state_bytes, fused_attention).total <= \
                AUTO_BUDGET * free:
            return batch
        batch //= 2
    raise ConfigError(f"even one text of {seq} tokens does not fit in {free / 1e9:.2f} GB free on {where}; try {advice}")


def out_of_memory_message(error: BaseException, step: int, advice: str = KNOBS) -> str:
    return (f"out of memory at step {step} ({str(error).splitlines()[0][:120]}); try {advice}; "
            f"--resume continues from the last checkpoint")
