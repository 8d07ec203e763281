"""The whole configuration as pydantic models: the schema is the documentation.

One YAML file whose sections follow the flow (model -> data -> method -> train -> distributed ->
tracking -> output_dir), plus `section.key=value` overrides. Unknown keys are errors, with the closest valid key.
"""

from __future__ import annotations

import difflib
import os
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ftune.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("minilm", description="'minilm' (bundled default), a local directory, or a hub id")
    trust_remote_code: bool = Field(False, description="run model code shipped with the weights")


class LongTextConfig(Section):
    strategy: Literal["truncate", "chunk"] = Field(
        "truncate", description="texts longer than max_length: cut to one window, or split into overlapping windows")
    keep: Literal["head", "head+tail"] = Field(
        "head", description="truncate: the first tokens, or the first quarter of the window plus the last three "
                            "quarters of the text (Sun et al. 2019)")
    stride: int = Field(64, ge=0, description="chunk: tokens each window repeats from the one before")
    pool: Literal["mean", "max"] = Field("mean", description="chunk: a document's logits from its windows' logits")


class DataConfig(Section):
    train: str = Field("mr", description="built-in dataset name or path to the training data")
    validation: str | None = Field(None, description="path to validation data; else split off train")
    test: str | None = Field(None, description="path to test data; else split off train")
    text_column: str | None = Field(None, description="column with the text (default: 'text'; token-classification: "
                                                     "'tokens', a list of words)")
    text_pair_column: str | None = Field(None, description="second text column for pair tasks")
    label_column: str | None = Field(None, description="column with the label (default: 'label'; token-classification: "
                                                      "'tags', a tag per word)")
    prompt_column: str = Field("prompt", description="causal-lm: column with the instruction")
    response_column: str = Field("response", description="causal-lm: column with the answer to learn")
    messages_column: str = Field("messages", description="causal-lm: column with chat messages (role, content), "
                                                         "used instead of prompt/response when present")
    split_column: str | None = Field(None, description="column naming each row's split: train/validation/test")
    test_size: float = Field(0.2, gt=0, lt=1, description="fraction held out for test when no test set is given")
    validation_size: float = Field(0.1, gt=0, lt=1, description="fraction of the rest held out for validation")
    split_seed: int | None = Field(None, ge=0, description="seed of the held-out splits and subsampling; unset: "
                                   "train.seed (ftune train --seeds holds it at the config's seed)")
    max_length: int = Field(128, ge=8, description="tokens per text; longer texts follow long_text")
    long_text: LongTextConfig = LongTextConfig()
    label_all_subtokens: bool = Field(False, description="token-classification: every sub-token of a word carries its "
                                                         "tag in the loss (default: the first only; the rest are ignored)")
    packing: bool = Field(False, description="causal-lm: join short examples into sequences of max_length tokens")
    max_train_samples: int | None = Field(None, ge=1, description="subsample the training split")
    max_eval_samples: int | None = Field(None, ge=1, description="subsample validation and test splits")


class FullMethod(Section):
    name: Literal["full"] = "full"


class FreezeMethod(Section):
    name: Literal["freeze"] = "freeze"
    layers: int | None = Field(None, ge=0, description="freeze embeddings and the first N layers; None: all (head only)")


class LoraMethod(Section):
    name: Literal["lora"] = "lora"
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA scaling alpha")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the LoRA path")
    target_modules: Union[list[str], Literal["all-linear"], None] = Field(
        None, description="module names to adapt, or all-linear; None: peft's default for the model")
    merge: bool = Field(False, description="also write merged full weights to model/")
    load_in_4bit: bool = Field(False, description="QLoRA: keep the frozen base weights in 4 bits (bitsandbytes NF4); "
                                                  "needs a CUDA GPU")


METHODS = (FullMethod, FreezeMethod, LoraMethod)
METHOD_NAMES = tuple(m.model_fields["name"].default for m in METHODS)
Method = Annotated[Union[FullMethod, FreezeMethod, LoraMethod], Field(discriminator="name")]


# Learning rates when the config sets none, by method (and by task where it differs). Measured on built-in
# data: `bench/lr_grid.py` (the README shows the grid). Adapters and frozen bodies want larger steps than
# full fine-tuning: LoRA at full fine-tuning's 5e-5 learned nothing in 2 epochs on a real corpus.
DEFAULT_LEARNING_RATES = {"full": 5e-5, "freeze": 1e-3, "lora": 1e-3}
TASK_LEARNING_RATES = {("causal-lm", "lora"): 2e-4}  # the QLoRA paper's rate for decoders; not measurable offline here


class TrainConfig(Section):
    epochs: int = Field(3, ge=1, le=1000, description="passes over the training data")
    learning_rate: float | Literal["auto"] | None = Field(
        None, description="peak learning rate; auto: chosen by a range test before the run (lr_find.json); unset: the "
                          "method's default (full 5e-5, freeze 1e-3, lora 1e-3; causal-lm with lora 2e-4)")
    batch_size: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        32, description="examples per optimizer step, per device, before accumulation; auto: the largest power of "
                        "two whose estimated peak memory fits in 40% of what the device has free")
    eval_batch_size: int = Field(128, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; None turns it off")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16/fp16 on a GPU that has it, fp32 on CPU")
    gradient_checkpointing: bool = False
    seed: int = 0
    eval_steps: int | None = Field(None, ge=1, description="evaluate every N optimizer steps; None: each epoch")
    save_steps: int | None = Field(None, ge=1, description="also checkpoint every N optimizer steps, between "
                                                           "evaluations; None: at each evaluation only")
    save_total_limit: int = Field(2, ge=1, description="periodic checkpoints kept (the best model is kept apart)")
    metric: Literal["accuracy", "macro_f1", "entity_f1", "loss"] = Field(
        "accuracy", description="picks the best checkpoint (causal-lm: loss; entity_f1: token-classification with BIO tags)")
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after N evaluations without improvement")
    class_weights: bool = Field(False, description="weight the loss by inverse class frequency")
    group_by_length: bool = Field(True, description="batch texts of similar length together (shuffled buckets)")
    log_steps: int = Field(10, ge=1)
    baselines: bool = Field(True, description="also score the base model and a TF-IDF baseline on the test split")
    evaluate_test: bool = Field(True, description="score the final model (and baselines) on the test split; false "
                                "leaves it unread, as `ftune tune` trials do, so choosing settings never sees it")

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _rate_or_auto(cls, value: Any) -> Any:
        """A positive number, auto or unset, with one plain message (a union's would name its members)."""
        if value is None or value == "auto":
            return value
        try:
            rate = float(value)
        except (TypeError, ValueError, OverflowError):
            raise PydanticCustomError("float_parsing", "Input should be a valid number or auto") from None
        if not rate > 0:  # NaN too
            raise PydanticCustomError("greater_than", "Input should be greater than 0")
        return rate


class DistributedConfig(Section):
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="with several processes: ddp (gloo on CPU, NCCL on GPUs), or fsdp / deepspeed on CUDA GPUs")
    zero_stage: Literal[2, 3] = Field(2, description="deepspeed: ZeRO stage (2 shards optimizer state and gradients, 3 also weights)")
    cpu_offload: bool = Field(False, description="fsdp / deepspeed: keep parameters / optimizer state in CPU memory")


class TrackingConfig(Section):
    backend: Literal["mlflow", "tensorboard", "wandb", "none"] = Field(
        "mlflow", description="where metrics and artifacts also go; the run directory always has them")
    uri: str | None = Field(None, description="mlflow: a tracking URI (default: $MLFLOW_TRACKING_URI, else a SQLite "
                                              "store in ./mlruns); tensorboard: a log directory (default: RUN/tensorboard)"
                                              "; wandb: the W&B directory, as WANDB_DIR (runs go in URI/wandb; "
                                              "default: RUN, so RUN/wandb)")
    experiment: str = Field("ftune", description="MLflow experiment name; wandb: the W&B project")
    log_model: bool = Field(False, description="also upload the model/adapter folder as an MLflow or W&B artifact")


TASKS = ("classification", "token-classification", "causal-lm")


class Config(Section):
    task: Literal[TASKS] = Field("classification", description="classification (a label per text), "
                                 "token-classification (a tag per word) or causal-lm (instruction tuning of a decoder)")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: Method = FullMethod()
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: str | None = Field(None, description="run directory; default runs/<data>-<method>-<time>")
    _learning_rate_is_default: bool = PrivateAttr(False)  # train.learning_rate came from the method, not the user

    @field_validator("output_dir")
    @classmethod
    def _expand_home(cls, value: str | None) -> str | None:
        """`~` means the home folder everywhere or nowhere: expanded here, once, for every writer of the run."""
        return os.path.expanduser(value) if value else value

    @model_validator(mode="after")
    def _fits_task(self) -> "Config":
        """Settings that only make sense for some tasks, checked together."""
        train, data = self.train, self.data
        if self.task == "causal-lm":
            if "metric" in train.model_fields_set and train.metric != "loss":
                raise ValueError(f"task causal-lm picks checkpoints by validation loss; set train.metric=loss "
                                 f"(got {train.metric})")
            train.metric = "loss"
            if train.class_weights:
                raise ValueError("train.class_weights applies to classification tasks; drop it for causal-lm")
        if train.metric == "entity_f1" and self.task != "token-classification":
            raise ValueError("train.metric=entity_f1 needs task token-classification (with BIO tags)")
        if data.long_text != LongTextConfig() and self.task != "classification":
            raise ValueError("data.long_text applies to task classification")
        if data.long_text != LongTextConfig() and data.text_pair_column:
            raise ValueError("data.long_text applies to single texts; drop data.text_pair_column or data.long_text")
        if train.learning_rate == "auto" and self.distributed.strategy != "ddp":
            raise ValueError(f"train.learning_rate=auto runs its range test on one device's copy of the whole model, "
                             f"which distributed.strategy={self.distributed.strategy} shards; set a number (e.g. the "
                             f"choice in lr_find.json of a smaller ddp run)")
        if train.learning_rate is None:  # resolved here, so config.yaml, MLflow and --resume all see the number
            train.learning_rate = default_learning_rate(self.task, self.method.name)
            self._learning_rate_is_default = True
        return self


def default_learning_rate(task: str, method: str) -> float:
    """The learning rate a run gets when its config sets none (see DEFAULT_LEARNING_RATES)."""
    return TASK_LEARNING_RATES.get((task, method), DEFAULT_LEARNING_RATES[method])


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or start from defaults) and apply `section.key=value` overrides."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        raw = _read_yaml(Path(path))
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        _set_dotted(raw, key, value)
    return validate(raw, where)


def validate(raw: dict[str, Any], where: str = "config") -> Config:
    """Build a Config from a plain dict; the first problem becomes one clear ConfigError."""
    method = raw.get("method")
    if isinstance(method, dict) and "name" not in method:
        raw = {**raw, "method": {"name": "full", **method}}
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        key = _printable(".".join(p for p in loc if p not in METHOD_NAMES))
        if err["type"] == "extra_forbidden" and loc[0] == "method":
            owners = [m.model_fields["name"].default for m in METHODS if loc[-1] in m.model_fields]
            hint = f"; it belongs to method '{owners[0]}'" if owners else _suggest(key)
            raise ConfigError(f"{where}: '{key}' is not an option of method '{loc[1]}'{hint}") from None
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{where}: unknown key '{key}'{_suggest(key)}") from None
        if err["type"] == "value_error" and not loc:  # a check across sections (Config._fits_task)
            raise ConfigError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None
        if err["type"] == "union_tag_invalid":
            got = err["input"].get("name") if isinstance(err["input"], dict) else err["input"]
            raise ConfigError(f"{where}: method.name must be one of {', '.join(METHOD_NAMES)} (got {got!r})") from None
        raise ConfigError(f"{where}: {key}: {err['msg']} (got {_SHORT.repr(err['input'])})") from None


_SHORT = reprlib.Repr()  # a bad value, shown in one line however large it is (keyword arguments need Python 3.12)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60
MAX_CONFIG_VALUES = 100_000  # far above any real config; a YAML alias bomb expands past it long before memory runs out


def _check_size(raw: Any, where: str) -> None:
    """Refuse a YAML tree whose aliases expand without bound: validating or printing it would never end."""
    count, stack = 0, [raw]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where}: more than {MAX_CONFIG_VALUES:,} values once YAML aliases are expanded; "
                              f"a config needs far fewer: remove the repeated aliases (&name / *name)")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _printable(text: str) -> str:
    """A key as the user can read it on one line: control characters (a newline in a YAML key) escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path to a YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}; fix its syntax") from None
    if raw is None:
        return {}
    _check_size(raw, f"config file {path}")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (model, data, method, train)")
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    """'train.epochs=2' -> ('train.epochs', 2); values are read as YAML scalars."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.epochs=2")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    _check_size(parsed, f"override {key.strip()}")
    return key.strip(), parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{part}' is not a section")
        node = child
    node[last] = value


def _all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        subs = [ann] if isinstance(ann, type) and issubclass(ann, BaseModel) else []
        if name == "method":
            subs = list(METHODS)
        for sub in subs:
            keys += _all_keys(sub, f"{prefix}{name}.")
    return keys


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else "; see `ftune train --help` for valid keys"
