"""Heavy libraries imported on first use, so `ftune --help` and config or data errors answer in well under a second.

torch alone takes about 2 s to import and scikit-learn about 1.5 s; the task modules, which `ftune.config` needs for
their option classes, touch them only inside functions. A module writes `torch = lazy("torch")` where it would write
`import torch`, and the first attribute read (`torch.tensor`) imports it. (importlib's LazyLoader cannot stand in for
a submodule such as torch.nn.functional: finding it imports the parent.)
"""

from __future__ import annotations

import importlib
from types import ModuleType


class lazy:  # noqa: N801  (stands where a module name stands)
    __slots__ = ("_name", "_module")

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def _load(self) -> ModuleType:
        if self._module is None:
            object.__setattr__(self, "_module", importlib.import_module(self._name))
        return self._module

    def __getattr__(self, attribute: str):
        return getattr(self._load(), attribute)

    def __setattr__(self, attribute: str, value) -> None:  # the module's own (a test's monkeypatch reaches it)
        if attribute in lazy.__slots__:
            object.__setattr__(self, attribute, value)
        else:
            setattr(self._load(), attribute, value)

    def __delattr__(self, attribute: str) -> None:
        delattr(self._load(), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name}{'' if self._module is None else ' (imported)'}>"
