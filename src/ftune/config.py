"""The whole configuration: the sections of ftune.schema plus the task's own (ftune.tasks), read from YAML.

One YAML file whose sections follow the flow (task -> model -> data -> method -> train -> distributed ->
tracking -> output_dir), plus `section.key=value` overrides. Unknown keys are errors, with the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, PrivateAttr, field_validator, model_validator

from ftune import safe_yaml
from ftune.errors import ConfigError, FtuneError
from ftune.methods import DEFAULT_METHOD, METHODS, method_for
from ftune.schema import (DEFAULT_LEARNING_RATES, METHOD_NAMES, DataConfig, DistillConfig,  # noqa: F401
                          DistributedConfig, LongTextConfig, Method, ModelConfig, Section, TrackingConfig, TrainConfig)
from ftune.tasks import DEFAULT_TASK, TASKS

TaskSection = Annotated[Union[tuple(task.Options for task in TASKS.values())], Field(discriminator="name")]
# Keys that were data.* before tasks had sections of their own: a config or run folder written then still loads.
MOVED_TO_TASK = ("long_text", "label_all_subtokens", "packing", "prompt_column", "response_column", "messages_column")


class Config(Section):
    task: TaskSection = Field(TASKS[DEFAULT_TASK].Options(), description="what to learn: " + "; ".join(
        f"{name}: {task.description}" for name, task in TASKS.items()))
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: Method = METHODS[DEFAULT_METHOD].Options()
    distill: DistillConfig | None = Field(None, description="learn a finished run's answers as well as the labels "
                                          "(`ftune distill TEACHER_RUN` sets this)")
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: str | None = Field(None, description="run directory; default runs/<data>-<method>-<time>")
    _learning_rate_is_default: bool = PrivateAttr(False)  # train.learning_rate came from the method, not the user
    _chosen: dict = PrivateAttr(default_factory=dict)  # train settings a run chose from the data (ftune.recipe)
    _task_inferred: Any = PrivateAttr(None)  # ftune.data.infer.Inferred: the data named the task, not the user

    @field_validator("output_dir")
    @classmethod
    def _expand_home(cls, value: str | None) -> str | None:
        """`~` means the home folder everywhere or nowhere: expanded here, once, for every writer of the run."""
        return os.path.expanduser(value) if value else value

    @model_validator(mode="after")
    def _fits_task(self) -> "Config":
        """Settings that only make sense for some tasks, checked together, before any data or model is read."""
        train, data, task = self.train, self.data, TASKS[self.task.name]
        if train.metric is None:
            train.metric = task.headline()
        elif train.metric not in task.metrics:
            raise ValueError(f"train.metric={train.metric} is not a score of task {task.name}; choose one of "
                             f"{', '.join(task.metrics)}")
        if train.class_weights and not task.weighs_classes:
            raise ValueError(f"train.class_weights applies to tasks with classes "
                             f"({', '.join(n for n, t in TASKS.items() if t.weighs_classes)}); drop it for {task.name}")
        if getattr(self.task, "long_text", LongTextConfig()) != LongTextConfig() and data.text_pair_column:
            raise ValueError("task.long_text applies to single texts; drop data.text_pair_column or task.long_text")
        _fits_distill(self)
        if data.slice_columns and (task.serves == "chat" or getattr(self.task, "long_text", None) and
                                   self.task.long_text.strategy == "chunk"):
            raise ValueError(f"data.slice_columns scores each test text apart, which a {task.name} run"
                             f"{' reading long texts in windows' if task.serves != 'chat' else ''} does not do; "
                             f"drop data.slice_columns")
        method_for(self).check(task, self)  # e.g. prompt tuning refuses per-token tasks
        if train.optimizer != "adamw" and self.distributed.strategy != "ddp":
            raise ValueError(f"train.optimizer={train.optimizer} keeps whole 8-bit states per process; with "
                             f"distributed.strategy={self.distributed.strategy} (which shards optimizer state already) "
                             f"use train.optimizer=adamw")
        if train.learning_rate == "auto" and self.distributed.strategy != "ddp":
            raise ValueError(f"train.learning_rate=auto runs its range test on one device's copy of the whole model, "
                             f"which distributed.strategy={self.distributed.strategy} shards; set a number (e.g. the "
                             f"choice in lr_find.json of a smaller ddp run)")
        if train.learning_rate is None:  # resolved here, so config.yaml, MLflow and --resume all see the number
            train.learning_rate = default_learning_rate(self.task.name, self.method.name)
            self._learning_rate_is_default = True
        return self


def default_learning_rate(task: str, method: str) -> float:
    """The learning rate a run gets when its config sets none: the method's, for this task (see ftune.methods)."""
    return METHODS[method].default_learning_rate(TASKS[task])


def _fits_distill(config: Config) -> None:
    distill, task = config.distill, config.task.name
    if config.data.unlabeled and (distill is None or not TASKS[task].distills_unlabeled):
        students = " or ".join(n for n, t in TASKS.items() if t.distills_unlabeled)
        raise ValueError(f"data.unlabeled holds texts a teacher labels for a {students} student; set distill.teacher "
                         "(ftune distill TEACHER_RUN) or drop data.unlabeled")
    if distill is None:
        return
    if not TASKS[task].distills:
        raise ValueError(f"distill applies to tasks {', '.join(n for n, t in TASKS.items() if t.distills)}, not "
                         f"{task}; drop the distill section")
    if distill.layers is not None and METHODS[config.method.name].trains_adapter:
        raise ValueError(f"distill.layers cuts the teacher into a new model, which no other machine has as the base of "
                         f"a {config.method.name} adapter; use method "
                         f"{' or '.join(n for n, m in METHODS.items() if not m.trains_adapter)} for it")
    if config.train.class_weights:
        raise ValueError("train.class_weights does not apply to distillation (the teacher's soft labels carry the "
                         "classes' balance); drop it")


def load_config(path: str | Path | dict | None = None, overrides: list[str] | dict[str, Any] | None = None, *,
                infer_task: bool = False) -> Config:
    """Read a YAML config (or start from defaults, or from a config as a dict) and apply `section.key=value`
    overrides. `infer_task`: where neither names the task, read it off a sample of data.train (ftune.data.infer), as
    the CLI does; the choice and its reason are then in `config._task_inferred`. Off by default, so that a program's
    config means the same whatever data it is pointed at."""
    raw: dict[str, Any] = {}
    where = "command line"  # no file: the defaults are valid, so what is wrong came from a flag or --set
    if isinstance(path, dict):
        raw, where = copy.deepcopy(path), "config"
    elif path is not None:
        where = str(path)
        raw = _read_yaml(Path(path))
    items = list(overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or []))
    for key, value in items:
        _set_dotted(raw, key, value)
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    if model.get("init_from") and "name" not in model:  # a run's start is its base model, as that run named it
        raw["model"] = {**model, "name": _base_of(str(model["init_from"])) or "minilm"}
    inferred = _infer_task(raw) if infer_task else None
    if inferred is not None:
        raw = {**raw, "task": {**(raw.get("task") or {}), "name": inferred.task}}
    config = validate(raw, where, given={key for key, _ in items})
    config._task_inferred = inferred
    return config


def _base_of(run: str) -> str | None:
    """The base model a run's config.yaml names; None when it cannot be read (training then says why, with the fix,
    as ftune.init_from checks the run)."""
    try:
        name = safe_yaml.load(Path(run) / "config.yaml", run).get("model", {}).get("name")
    except (FtuneError, OSError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _infer_task(raw: dict[str, Any]) -> Any:
    """The task read off the data when the config names none (an ftune.data.infer.Inferred), else None. A data
    section that does not validate is left to validate(), which names the key."""
    task = raw.get("task")
    if task is not None and not (isinstance(task, dict) and "name" not in task):
        return None
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    moved = {key: data[key] for key in MOVED_TO_TASK if key in data}  # an older config's task options under data
    try:
        section = DataConfig.model_validate({k: v for k, v in data.items() if k not in moved})
    except ValidationError:
        return None
    from ftune.data.infer import infer_task  # reads data: only when there is a task to infer

    return infer_task(section, {**moved, **(task or {})})


def validate(raw: dict[str, Any], where: str = "config", given: set[str] = frozenset()) -> Config:
    """Build a Config from a plain dict; the first problem becomes one clear ConfigError, which names the command
    line as its place when the key came from a flag or --set (`given`)."""
    for section in ("model", "method"):  # `model: minilm`, `method: lora`, as `task: NAME` is read
        if isinstance(raw.get(section), str):
            raw = {**raw, section: {"name": raw[section]}}
    method = raw.get("method")
    if isinstance(method, dict) and "name" not in method:
        raw = {**raw, "method": {"name": DEFAULT_METHOD, **method}}
    raw = _task_section(raw)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        key = _printable(".".join(p for p in loc if p not in METHOD_NAMES and p not in TASKS))
        if given & {key, f"{key}.name", ".".join(loc[:1] + loc[2:])}:  # `--task X` is the override task.name=X
            where = "command line"
        if err["type"] == "extra_forbidden" and loc[0] == "task":
            owners = [name for name, task in TASKS.items() if loc[-1] in task.Options.model_fields]
            hint = f"; it belongs to task {owners[0]}" if owners else _suggest(key)
            raise ConfigError(f"{where}: '{loc[-1]}' is not an option of task {loc[1]}{hint}") from None
        if err["type"] == "extra_forbidden" and loc[0] == "method":
            owners = [name for name, m in METHODS.items() if loc[-1] in m.Options.model_fields]
            hint = f"; it belongs to method '{owners[0]}'" if owners else _suggest(key)
            if "method.name" in given and key not in given:  # --method switched a file's method; its options stayed
                hint += f" (--method changes only the name; --set 'method={{name: {loc[1]}}}' replaces the section)"
            raise ConfigError(f"{where}: '{key}' is not an option of method '{loc[1]}'{hint}") from None
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{where}: unknown key '{key}'{_suggest(key)}") from None
        if err["type"] == "value_error" and not loc:  # a check across sections (Config._fits_task)
            raise ConfigError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None
        if err["type"] == "union_tag_invalid":
            got = err["input"].get("name") if isinstance(err["input"], dict) else err["input"]
            names = TASKS if loc[0] == "task" else METHOD_NAMES
            raise ConfigError(f"{where}: {loc[0]}.name must be one of {', '.join(names)} (got {safe_yaml.short(got)})") from None
        raise ConfigError(f"{where}: {key}: {err['msg']} (got {safe_yaml.short(err['input'])})") from None


def _task_section(raw: dict[str, Any]) -> dict[str, Any]:
    """`task: NAME` as `task: {name: NAME}`, and the task options an older config kept under data, moved in."""
    task = raw.get("task", DEFAULT_TASK)
    task = {"name": DEFAULT_TASK, **({"name": task} if isinstance(task, str) else task)} \
        if isinstance(task, (str, dict)) else task
    data = raw.get("data")
    known = isinstance(task, dict) and isinstance(task["name"], str) and task["name"] in TASKS  # else: named below
    if known and isinstance(data, dict) and any(key in data for key in MOVED_TO_TASK):
        data, task = dict(data), dict(task)
        own = TASKS[task["name"]].Options.model_fields
        for key in [k for k in MOVED_TO_TASK if k in data]:
            value = data.pop(key)
            owner = next(t for t in TASKS.values() if key in t.Options.model_fields)
            if key in own:
                task.setdefault(key, value)
                continue
            default = owner.Options.model_fields[key].default
            default = default.model_dump() if isinstance(default, BaseModel) else default
            if value not in (default, {}):  # old run folders hold every task's defaults: those are dropped
                raise ConfigError(f"data.{key} applies to task {owner.name}, not {task['name']}; drop it")
        raw = {**raw, "data": data}
    return {**raw, "task": task}


def _printable(text: str) -> str:
    """A key as the user can read it on one line: control characters (a newline in a YAML key) escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path to a YAML file")
    raw = safe_yaml.load(path, f"config file {path}")
    if raw is None:
        return {}
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
    except (yaml.YAMLError, RecursionError):
        parsed = value
    safe_yaml.check_size(parsed, f"override {key.strip()}")
    return key.strip(), parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if part == "task" and node is raw and isinstance(child, str):  # task: NAME, then task.key=value
            child = node[part] = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{part}' is not a section")
        node = child
    node[last] = value


def dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}: a config dump's settings as `--set` names them (the inverse
    of the overrides' _set_dotted; an empty section has no setting)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def _all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        subs = [ann] if isinstance(ann, type) and issubclass(ann, BaseModel) else []
        if name == "method":
            subs = [method.Options for method in METHODS.values()]
        if name == "task":
            subs = [task.Options for task in TASKS.values()]
        for sub in subs:
            keys += _all_keys(sub, f"{prefix}{name}.")
    return keys


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else "; `ftune config` lists the valid keys"


def describe_keys(task: str = DEFAULT_TASK, method: str = DEFAULT_METHOD) -> list[tuple[str, str, str, str]]:
    """Every key of a config with this task and method: (key, type, default, description), read from the pydantic
    models themselves, so `ftune config` and the docs' tables cannot drift from what is validated."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            sub = {"task": TASKS[task].Options, "method": METHODS[method].Options}.get(name) \
                if model is Config else None
            sub = sub or _section(field.annotation)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")
            else:
                described = field.description or (TASKS[task].description if prefix + name == "task.name" else "")
                default = "required" if field.is_required() else _default_text(field.default)
                rows.append((prefix + name, _type_name(field.annotation), default, described))

    walk(Config, "")
    return rows


def _section(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds: a model, or a model or nothing (`distill`, whose keys are listed all the same)."""
    from typing import get_args

    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def config_markdown() -> str:
    """The configuration tables of docs/configuration.md: the keys every run has, then each task's and each method's own."""
    def table(rows: list[tuple[str, str, str, str]]) -> str:
        lines = ["| key | type | default | description |", "|---|---|---|---|"]
        cells = [(k, t, d.replace("|", "\\|"), text.replace("|", "\\|")) for k, t, d, text in rows]
        return "\n".join(lines + [f"| `{k}` | {t} | {d} | {text} |".replace("\n", " ") for k, t, d, text in cells])

    everyone = [r for r in describe_keys() if not r[0].startswith(("task.", "method."))]
    parts = ["All tasks and methods:", table(everyone)]
    for name, task in TASKS.items():
        parts += [f"`task: {name}` ({task.description}):", table([r for r in describe_keys(task=name)
                                                                  if r[0].startswith("task.")])]
    for name in METHOD_NAMES:
        parts += [f"`method: {name}`:", table([r for r in describe_keys(method=name) if r[0].startswith("method.")])]
    return "\n\n".join(parts) + "\n"


def _type_name(annotation: Any) -> str:
    """A field's type as a user writes its values: `int`, `truncate \\| chunk`, `int \\| auto \\| unset`."""
    from typing import get_args, get_origin

    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (Union, getattr(__import__("types"), "UnionType")):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if annotation is type(None):
        return "unset"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(default: Any) -> str:
    if isinstance(default, BaseModel):
        return ""
    return "unset" if default is None else f"`{default}`"
