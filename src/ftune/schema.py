"""The config's sections as pydantic models: the schema is the documentation (`ftune config` prints it).

Everything here is plain data; the tasks' and methods' own sections live with each task and method (ftune.tasks,
ftune.methods), and ftune.config puts the sections together into `Config` and reads YAML files.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from ftune.methods import METHODS
from ftune.section import Section  # noqa: F401  (the tasks' sections subclass it from here)

MAX_SEED = 2**32 - 1  # what numpy's seeding takes; another seed would fail only after the run folder is made


class ModelConfig(Section):
    name: str = Field("minilm", description="'minilm' (bundled default), a local directory, or a hub id")
    trust_remote_code: bool = Field(False, description="run model code shipped with the weights")
    init_from: str | None = Field(None, description="a finished run to start from instead of the base model's "
                                                    "weights (an adapter run is merged into its base first): SFT, "
                                                    "then preference tuning")


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
    split_column: str | None = Field(None, description="column naming each row's split: train/validation/test")
    test_size: float = Field(0.2, gt=0, lt=1, description="fraction held out for test when no test set is given")
    validation_size: float = Field(0.1, gt=0, lt=1, description="fraction of the rest held out for validation")
    split_seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed of the held-out splits and subsampling; unset: "
                                   "train.seed (ftune train --seeds holds it at the config's seed)")
    max_length: int = Field(128, ge=8, description="tokens per text (classification: longer texts follow task.long_text)")
    max_train_samples: int | None = Field(None, ge=1, description="subsample the training split")
    max_eval_samples: int | None = Field(None, ge=1, description="subsample validation and test splits")
    slice_columns: list[str] = Field([], description="columns of the data whose groups are scored apart on the test "
                                     "split (a source, a language, a length bucket): metrics.json, the report and "
                                     "`ftune runs compare` show every metric per group and the largest gap")
    unlabeled: str | None = Field(None, description="distill, classification: more texts (a .txt file, a line each, or "
                                  "a table with the text column) that only the teacher labels; the student learns its "
                                  "answers on them too")


# The `method:` section: each method declares its options in its own module (ftune.methods); the union is theirs.
METHOD_NAMES = tuple(METHODS)
Method = Annotated[Union[tuple(method.Options for method in METHODS.values())], Field(discriminator="name")]
# Learning rates when the config sets none, by method (where they come from: each method's module; a method may take
# another for decoders, its decoder_learning_rate; ftune.config resolves them).
DEFAULT_LEARNING_RATES = {name: method.learning_rate for name, method in METHODS.items()}
_RATES = ", ".join(f"{n} {r:.0e}".replace("e-0", "e-") for n, r in DEFAULT_LEARNING_RATES.items())
_DECODER_RATES = ", ".join(f"{n} {m.decoder_learning_rate:.0e}".replace("e-0", "e-") for n, m in METHODS.items()
                           if m.decoder_learning_rate)


class TrainConfig(Section):
    epochs: int | None = Field(None, ge=1, le=1000, description="passes over the training data; unset: chosen from "
                               "the split's size for 300-3,000 optimizer steps (the run says why)")
    learning_rate: float | Literal["auto"] | None = Field(
        None, description="peak learning rate; auto: chosen by a range test before the run (lr_find.json); unset: the "
                          f"method's default ({_RATES}; for a decoder, causal-lm: {_DECODER_RATES})")
    batch_size: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        32, description="examples per optimizer step, per device, before accumulation; auto: the largest power of "
                        "two whose estimated peak memory fits in 40% of what the device has free")
    eval_batch_size: int = Field(128, ge=1, description="examples per forward pass when evaluating")
    gradient_accumulation_steps: int = Field(1, ge=1, description="batches whose gradients add up to one optimizer step")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases and norm weights)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="fraction of the steps over which the learning rate rises from 0")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="learning-rate schedule after warmup")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; None turns it off")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16/fp16 on a GPU that has it, fp32 on CPU")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less memory, ~30% slower")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the new head, the shuffles and (unless data.split_seed) "
                                                        "the splits")
    eval_steps: int | None = Field(None, ge=1, description="evaluate every N optimizer steps; None: each epoch")
    save_steps: int | None = Field(None, ge=1, description="also checkpoint every N optimizer steps, between "
                                                           "evaluations; None: at each evaluation only")
    save_total_limit: int = Field(2, ge=1, description="periodic checkpoints kept (the best model is kept apart)")
    metric: str | None = Field(None, description="the validation score that picks the best checkpoint: one the task "
                               "measures (`ftune config --task T` lists them); unset: the task's headline")
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after N evaluations without improvement")
    class_weights: bool = Field(False, description="classification, token-classification, multi-label: weight the "
                                                   "loss by inverse class (label) frequency")
    group_by_length: bool = Field(True, description="batch texts of similar length together (shuffled buckets)")
    max_tokens: int | None = Field(None, ge=1, description="fill each batch (per process) with texts of similar length "
                                   "up to N tokens, padding included, instead of a fixed count; train.batch_size still "
                                   "caps the texts in a batch")
    pad_to_multiple_of: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        "auto", description="round each training batch's length up to a multiple of N; auto: 16 on a CUDA GPU (a few "
                            "fixed shapes for its kernels), 1 (no rounding) on CPU")
    compile: Union[bool, Literal["inductor", "cudagraphs", "aot_eager"]] = Field(
        False, description="torch.compile each of the model's repeated layers in place (one layer's compile serves "
                           "them all); true: inductor; cudagraphs: a CUDA graph per shape (GPU only); aot_eager: "
                           "traced, no generated code (a check). The compile time is reported as compile_seconds; "
                           "on a GPU, pad_to_multiple_of keeps the shapes few")
    optimizer: Literal["adamw", "adamw-8bit", "paged-adamw-8bit"] = Field(
        "adamw", description="adamw: torch's AdamW (its fused kernel where the device has one); adamw-8bit: "
                             "bitsandbytes' AdamW with 8-bit moments (2 bytes per trained weight instead of 8); "
                             "paged-adamw-8bit: the same, paged out to CPU memory under pressure (CUDA only; QLoRA's "
                             "usual pairing)")
    log_steps: int = Field(10, ge=1, description="log the training loss every N optimizer steps")
    baselines: bool = Field(True, description="also score the base model and the task's simple baselines on the test split")
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


class DistillConfig(Section):
    teacher: str = Field(description="a finished classification or token-classification run whose answers the "
                                     "student learns")
    layers: int | None = Field(None, ge=1, description="the student is the teacher's own model cut to N of its layers, "
                               "starting from the teacher's weights; None: the student is model.name")
    pick: Literal["spread", "first"] = Field("spread", description="with layers: which of the teacher's layers the "
                                             "student keeps: spread evenly from the first (6 -> 3: 0, 2, 4), or the "
                                             "first N")
    temperature: float = Field(2.0, gt=0, description="softens both models' probabilities before they are compared")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the teacher's soft labels in the loss; 1 - alpha: the "
                                                       "hard labels (0 trains on the labels alone)")


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
