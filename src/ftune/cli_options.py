"""Command-line flags generated from pydantic fields: a field's description is its flag's --help, its type the flag's
type, a Literal's values its metavar. Two decorators put them on a typer command:

    @config_flags("data.train", "train.epochs")   a flag per config key (its name in FLAGS); the command receives the
                                                   flags that were given as `flags`, {key: value}, for load_config
    @settings_flags(ServeSettings)                 a flag per field, with the field's default; the command receives
                                                   the validated model as `settings`

Typer reads a command's options from its signature, so each decorator returns a function whose __signature__ is
the command's own parameters plus the generated ones (as litgpt and TRL derive their CLIs from dataclasses).
Config flags are never checked by click (no choices, no bounds): the config validates them, so a wrong value is
the same one-line error as in a YAML file.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel

# Every config key that is a flag, with its flag: one table, so a key has the same flag in every command.
FLAGS = {
    "model.name": "--model",
    "model.init_from": "--init-from",
    "data.train": "--data",
    "data.validation": "--validation-data",
    "data.test": "--test-data",
    "data.text_column": "--text-column",
    "data.text_pair_column": "--text-pair-column",
    "data.label_column": "--label-column",
    "data.unlabeled": "--unlabeled",
    "task.name": "--task",
    "method.name": "--method",
    "train.epochs": "--epochs",
    "train.learning_rate": "--learning-rate",
    "train.batch_size": "--batch-size",
    "tracking.backend": "--tracking",
    "distill.layers": "--layers",
    "distill.temperature": "--temperature",
    "distill.alpha": "--alpha",
    "output_dir": "--output-dir",
}
# The data a command reads, as `train`, `tune` and `data validate` take it.
DATA = ("data.train", "data.validation", "data.test", "data.text_column", "data.text_pair_column",
        "data.label_column", "task.name")


@functools.cache
def config_field(key: str) -> tuple[Any, str]:
    """(type, description) of a dotted config key, from the pydantic models of ftune.config. A section that is a
    union (task, method) answers for its `name` with every member's value; its description is the section's, or
    else each member's `name: description`."""
    from ftune.config import Config

    *sections, name = key.split(".")
    models, section = [Config], None
    for part in sections:
        section = models[0].model_fields[part]
        models = _models(section.annotation)
    fields = [model.model_fields[name] for model in models if name in model.model_fields]
    if len(fields) == 1:
        return fields[0].annotation, fields[0].description or ""
    values = [get_args(field.annotation)[0] for field in fields]  # each member's Literal["full"]
    described = "; ".join(f"{value}: {field.description}" for value, field in zip(values, fields))
    return Literal[tuple(values)], section.description or described


def config_flags(*keys: str) -> Callable:
    """Add a flag per config key to a command, which then receives `flags`: {key: value} of those given."""
    fields = {key: config_field(key) for key in keys}
    options = [_option(param_name(key), FLAGS[key], kind, description, None)
               for key, (kind, description) in fields.items()]

    def collect(values: dict) -> dict:
        given = {key: _read(kind, values.pop(param_name(key))) for key, (kind, _) in fields.items()}
        return {"flags": {key: value for key, value in given.items() if value is not None}}

    return _add_options(options, "flags", collect, first=True)


def param_name(key: str) -> str:
    """The Python name of a config key's flag: one no command uses for a parameter of its own."""
    return "config__" + key.replace(".", "__")


def settings_flags(model: type[BaseModel]) -> Callable:
    """Add a flag per field of `model` (--max-texts for max_texts) with its default, to a command that then
    receives `settings`: the model built from them (its own validation, its own errors). A field may name an
    environment variable (json_schema_extra={"envvar": ...}) that stands in for its flag."""
    fields = model.model_fields
    envvars = {name: (field.json_schema_extra or {}).get("envvar") for name, field in fields.items()}
    options = [_option(name, "--" + name.replace("_", "-"), field.annotation, field.description, field.default,
                       envvars[name]) for name, field in fields.items()]

    def collect(values: dict) -> dict:
        given = {name: _read(field.annotation, values.pop(name)) for name, field in fields.items()}
        for name, envvar in envvars.items():
            if given[name] is None and envvar is not None and envvar in os.environ:
                given[name] = os.environ[envvar]  # click reads an empty variable as unset: here it is a mistake
        return {"settings": model(**given)}

    return _add_options(options, "settings", collect, first=False)


def _add_options(options: list[inspect.Parameter], receives: str, collect: Callable, first: bool) -> Callable:
    """The command with `options` in its signature, right after its arguments (`first`) or after all its own
    parameters (the order of --help); called, it gets collect(their values) as the parameter named `receives`."""

    def decorate(command: Callable) -> Callable:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != receives]
        arguments = [p for p in own if any(isinstance(m, typer.models.ArgumentInfo)
                                           for m in getattr(p.annotation, "__metadata__", ()))]
        rest = [p for p in own if p not in arguments]
        params = arguments + (options + rest if first else rest + options)

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            collected = collect(values)  # takes the generated options out of `values`
            return command(**values, **collected)

        del run.__wrapped__  # typer must read the signature below, not the command's own
        run.__annotations__ = {}
        # keyword-only: typer calls with keywords, and defaults then may come in any order
        run.__signature__ = inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params])
        return run

    return decorate


def _option(name: str, flag: str, annotation: Any, description: str | None, default: Any,
            envvar: str | None = None) -> inspect.Parameter:
    """A typer option for a field: its flag, type and metavar from the field's type, its help the description."""
    python_type, metavar = _flag_type(annotation)
    if python_type is bool:
        flag = f"{flag}/--no-{flag[2:]}"
    info = typer.Option(flag, help=description, metavar=metavar, envvar=envvar)
    kind = python_type | None if default is None else python_type
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, info], default=default)


def _flag_type(annotation: Any) -> tuple[type, str | None]:
    """(the type click parses, the metavar) of a field's type. Literal values are shown as `a|b|c` and left to the
    field to check; a number or a word (batch_size: 32 or auto) is text (see _read); a list is one
    comma-separated value that the field splits."""
    members = [a for a in _flat(annotation) if a is not type(None)]
    words = [str(a) for m in members if get_origin(m) is Literal for a in get_args(m)]
    plain = [m for m in members if get_origin(m) is not Literal]
    if plain == [] and words:
        return str, "|".join(words)
    if len(plain) == 1 and not words and plain[0] in (bool, int, float, str):
        return plain[0], None
    if len(plain) == 1 and get_origin(plain[0]) is list:
        return str, "A,B,..."
    if len(plain) == 1 and plain[0] in (int, float) and words:
        return str, "|".join(["INTEGER" if plain[0] is int else "FLOAT", *words])
    raise TypeError(f"no flag type for {annotation!r}; give the field a plainer type or leave it to --set")


def _read(annotation: Any, value: Any) -> Any:
    """A flag's value as its field takes it: a whole number given to a number-or-word field (batch_size) is a
    number; anything else as click parsed it, for the field to validate."""
    if isinstance(value, str) and value.isdigit() and int in _flat(annotation):
        return int(value)
    return value


def _flat(annotation: Any) -> list:
    """A type's members: Optional and unions opened, Annotated constraints dropped."""
    if get_origin(annotation) is Annotated:
        return _flat(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return [member for arg in get_args(annotation) for member in _flat(arg)]
    return [annotation]


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The section model(s) a config field holds: one, or each member of a union such as task or method."""
    return [m for m in _flat(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
