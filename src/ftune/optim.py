"""How a run's weights are updated and held: the optimizer (AdamW, fused where torch has the kernel, or bitsandbytes'
8-bit), the mixed precision, the dtype of a frozen base, and regional torch.compile. Set up once, before the loop."""

from __future__ import annotations

import importlib.util

import torch

from ftune.config import Config
from ftune.errors import ConfigError
from ftune.methods import method_for

STATE_BYTES = {"adamw": 8, "adamw-8bit": 2, "paged-adamw-8bit": 2}  # optimizer state per trained weight


def check_optimizer(name: str) -> None:
    """An 8-bit optimizer needs bitsandbytes, and its paged variant CUDA: said before any file is written."""
    if name == "adamw":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"train.optimizer={name} needs the bitsandbytes package: pip install bitsandbytes "
                          f"(or train.optimizer=adamw)")
    if name.startswith("paged") and not torch.cuda.is_available():
        raise ConfigError(f"train.optimizer={name} pages its state between GPU and CPU memory and needs a CUDA GPU; "
                          f"on CPU use train.optimizer=adamw-8bit or adamw")


def make_optimizer(config: Config, rate: float, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """torch's AdamW, or bitsandbytes' 8-bit AdamW (paged or not), with the same groups, at `rate`."""
    if config.train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=rate, fused=fused_adamw(config, device))
    import bitsandbytes as bnb

    kind = bnb.optim.PagedAdamW8bit if config.train.optimizer == "paged-adamw-8bit" else bnb.optim.AdamW8bit
    return kind(groups, lr=rate)


def fused_adamw(config: Config, device: torch.device) -> bool | None:
    """AdamW's fused kernel (one pass over all weights) where torch has one for the device: measured on 2 CPU cores,
    a MiniLM-sized step took 152-178 ms against 251-273 ms for the default. Sharded strategies keep torch's default:
    their weights are DTensors or DeepSpeed's, which this was not measured with. None: torch's default."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return True if config.distributed.strategy == "ddp" and \
        device.type in _get_fused_kernels_supported_devices() else None


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (1-d tensors), as in BERT's recipe."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def mixed_precision(precision: str) -> str:
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if precision == "fp16" and not cuda:
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on this machine")
    return {"fp32": "no"}.get(precision, precision)


def frozen_dtype(config: Config, device: torch.device, mixed_precision: str) -> torch.dtype | None:
    """bf16 for the frozen base of a method that allows it (LoRA) on a bf16 GPU, else None (float32). The base is
    only ever read under bf16 autocast there, so bf16 halves its memory (an 8B model: 16 GB, not 32) as the anchors
    do; what trains stays float32 (the master weights). QLoRA's base is 4-bit already."""
    allowed = method_for(config).frozen_in_bf16
    return torch.bfloat16 if allowed and device.type == "cuda" and mixed_precision == "bf16" else None


def compile_layers(model: torch.nn.Module, backend: str) -> int:
    """torch.compile, in place, every layer of the model's stacks of identical layers (regional compilation): one
    layer's compiled code serves all of its copies, so compiling costs one layer, not the model. In place
    (`Module.compile`), so weights keep their names for saving, peft and hooks. Shapes may vary: after a first
    recompile torch marks the changing sizes dynamic rather than compiling each batch length anew."""
    layers = []
    for name, stack in model.named_modules():
        inside = any(name.startswith(f"{outer}.") for outer, _ in layers)
        if isinstance(stack, torch.nn.ModuleList) and len(stack) > 1 and len({type(m) for m in stack}) == 1 and not inside:
            layers += [(f"{name}.{i}", layer) for i, layer in enumerate(stack)]
    for _, layer in layers:
        layer.compile(backend=backend)
    return len(layers)


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process (forward and backward graphs): the compile warm-up."""
    from torch._dynamo.utils import calculate_time_spent

    return calculate_time_spent().get("total_wall_time", 0.0)
