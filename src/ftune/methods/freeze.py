"""Layer freezing: the embeddings and the first N layers stay fixed, the rest and the head train."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ftune.errors import ConfigError
from ftune.lazy import lazy
from ftune.methods.base import Method, MethodOptions, encoder_layers

torch = lazy("torch")


class FreezeOptions(MethodOptions):
    name: Literal["freeze"] = Field("freeze", description="layer freezing: the embeddings and lower layers stay fixed")
    layers: int | None = Field(None, ge=0, description="freeze embeddings and the first N layers; None: all (head "
                                                       "only)")


class Freeze(Method):
    name = "freeze"
    Options = FreezeOptions
    learning_rate = 1e-3  # a frozen body wants larger steps than full fine-tuning
    learning_rate_source = "measured on built-in data: bench/lr_grid.py"

    def wrap(self, model, task_type: str):
        """Freeze the embeddings and the first `layers` encoder layers; layers=None freezes them all (head only:
        whatever sits after the encoder, e.g. BERT's pooler and the classifier, still trains)."""
        layers = encoder_layers(model)
        n = len(layers) if self.options.layers is None else self.options.layers
        if n > len(layers):
            raise ConfigError(f"method.layers={n} but the model has {len(layers)} layers; use 0..{len(layers)}")
        model.get_input_embeddings().requires_grad_(False)
        embeddings = getattr(model.base_model, "embeddings", torch.nn.Module())
        embeddings.requires_grad_(False)  # position/type embeddings, norm
        for layer in layers[:n]:
            layer.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):  # a decoder whose output layer is the embeddings
            raise ConfigError(f"method freeze with layers={self.options.layers} leaves nothing to train in "
                              f"{type(model).__name__} (its output layer shares the embeddings); set method.layers "
                              f"below {len(layers)}")
        return model

    def search_space(self, config) -> dict:
        """How many layers to freeze, 0 to all of them (when the model's config says how many it has)."""
        from transformers import AutoConfig

        from ftune.models import resolve_model

        model = AutoConfig.from_pretrained(resolve_model(config.model.name),
                                           trust_remote_code=config.model.trust_remote_code)
        layers = getattr(model, "num_hidden_layers", None)
        return {"method.layers": {"low": 0, "high": layers}} if layers else {}
