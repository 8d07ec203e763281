"""Fine-tuning methods: each takes a freshly loaded model and decides what trains.

A dict of small functions, not a class tree; adding a method means adding one function.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ftune.schema import FreezeMethod, FullMethod, LoraMethod
from ftune.errors import ConfigError


def full(model: nn.Module, cfg: FullMethod, task_type: str) -> nn.Module:
    """Every weight trains."""
    return model


def freeze(model: nn.Module, cfg: FreezeMethod, task_type: str) -> nn.Module:
    """Freeze the embeddings and the first `layers` encoder layers; layers=None freezes them all (head only:
    whatever sits after the encoder, e.g. BERT's pooler and the classifier, still trains)."""
    layers = encoder_layers(model)
    n = len(layers) if cfg.layers is None else cfg.layers
    if n > len(layers):
        raise ConfigError(f"method.layers={n} but the model has {len(layers)} layers; use 0..{len(layers)}")
    model.get_input_embeddings().requires_grad_(False)
    getattr(model.base_model, "embeddings", nn.Module()).requires_grad_(False)  # position/type embeddings, norm
    for layer in layers[:n]:
        layer.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):  # a decoder whose output layer is the embeddings
        raise ConfigError(f"method freeze with layers={cfg.layers} leaves nothing to train in {type(model).__name__} "
                          f"(its output layer shares the embeddings); set method.layers below {len(layers)}")
    return model


def lora(model: nn.Module, cfg: LoraMethod, task_type: str) -> nn.Module:
    """LoRA adapters through peft. The task type (SEQ_CLS, TOKEN_CLS) keeps a new head trainable and saved;
    with load_in_4bit (QLoRA) the model arrived quantized and peft prepares it for training."""
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(task_type=TaskType[task_type], r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=cfg.target_modules)
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise ConfigError(f"method.target_modules: {str(e).splitlines()[0]}; name modules the model has") from None



METHODS: dict[str, Callable[[nn.Module, object, str], nn.Module]] = {"full": full, "freeze": freeze, "lora": lora}


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer layers: the ModuleList as long as config.num_hidden_layers."""
    n = model.config.num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ConfigError(f"cannot find the {n} encoder layers of {type(model).__name__}; use method.layers=null (head only)")


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
