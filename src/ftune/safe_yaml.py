"""The one way ftune reads YAML (a config the user wrote, a run folder's config.yaml someone handed over, a tune
space, a --set value): safe_load, with limits on the file's size and on how far its aliases expand.

safe_load itself is cheap on an alias bomb (an alias is a shared reference); what is not is everything after it:
validating, walking or printing a 386-byte bomb took 101 s and 2.5 GB and printed a 226 MB line. So the tree is
counted, shared nodes as often as they appear, and refused past MAX_VALUES before anything else touches it."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from ftune.errors import ConfigError, FtuneError

MAX_VALUES = 100_000  # far above any real config; a YAML alias bomb expands past it long before memory runs out
MAX_BYTES = 1 << 20   # a config is a few KB; a longer file is not one
BOMB_FIX = "a config needs far fewer: remove the repeated aliases (&name / *name)"
_SHORT = reprlib.Repr()  # a bad value, shown in one line however large it is (keyword arguments need Python 3.12)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def short(value: Any) -> str:
    """A value from a YAML file as one short line, however large it is."""
    return _SHORT.repr(value)


def check_size(raw: Any, where: str, error: type[FtuneError] = ConfigError) -> None:
    """Refuse a YAML tree whose aliases expand without bound: validating or printing it would never end."""
    count, stack = 0, [raw]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise error(f"{where}: more than {MAX_VALUES:,} values once YAML aliases are expanded; {BOMB_FIX}")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def loads(text: str, where: str, error: type[FtuneError] = ConfigError, fix: str = "fix its syntax") -> Any:
    """YAML text as plain data, or one `error` naming `where` and the fix."""
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as e:  # RecursionError: thousands of nested [ or {
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise error(f"{where} is not valid YAML{at}; {fix}") from None
    check_size(raw, where, error)
    return raw


def load(path: Path, where: str, error: type[FtuneError] = ConfigError, fix: str = "fix its syntax") -> Any:
    """A YAML file as plain data (None when empty), read within MAX_BYTES, or one `error` naming `where`."""
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise error(f"{where} cannot be read ({e.strerror or type(e).__name__}); {fix}") from None
    if len(data) > MAX_BYTES:
        raise error(f"{where} is over {MAX_BYTES >> 20} MB, far more than a config holds; {fix}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{where} is not UTF-8 text; {fix}") from None
    return loads(text, where, error, fix)
