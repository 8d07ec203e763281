"""The code's shape, checked: imports go one way, the loop's step fits a screen, every task is registered and
documented, and the README's config tables are the schema's own."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from ftune.config import config_markdown, describe_keys
from ftune.schema import METHOD_NAMES
from ftune.tasks import TASKS
from ftune.training import _Fit

SRC = Path(__file__).resolve().parents[1] / "src" / "ftune"
README = Path(__file__).resolve().parents[1] / "README.md"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """ftune module -> the ftune modules it imports, at the top or inside functions (a lazy import still runs,
    only later), but not under `if TYPE_CHECKING:` (annotations only: never executed)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
        edges = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                edges.add(node.module)
                edges |= {f"{node.module}.{a.name}" for a in node.names}  # `from ftune import run`
        graph[name] = {e for e in edges if e in modules and e != name and e != "ftune"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_in_ftune():
    graph = import_graph()
    assert "ftune.tasks.base" in graph and "ftune.predictors.onnx" in graph  # the walk found the packages
    assert cycles(graph) == []


def test_tasks_sit_below_config_predictors_and_the_loop():
    graph = import_graph()
    below = {m for m in graph if m.startswith("ftune.tasks")}
    for task_module in below:  # a task knows the data layer, never what runs it
        assert not graph[task_module] & {"ftune.config", "ftune.training", "ftune.predictors", "ftune.run",
                                         "ftune.distributed", "ftune.serve", "ftune.report"}, task_module


def test_the_training_step_reads_on_one_screen():
    assert len(inspect.getsource(_Fit.step).splitlines()) < 60


def test_every_config_key_of_every_task_and_method_has_a_description():
    for task in TASKS:
        for method in METHOD_NAMES:
            missing = [key for key, _, _, text in describe_keys(task, method) if not text.strip()]
            assert missing == [], (task, method)


def test_the_readme_config_tables_are_generated_from_the_schema():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- config-tables: ftune config --markdown -->\n(.*?)<!-- /config-tables -->", text, re.S)
    assert block, "README lacks the generated config tables"
    assert block.group(1) == config_markdown(), "regenerate the README's tables with `ftune config --markdown`"


def test_every_task_is_in_the_readme_task_table():
    text = README.read_text(encoding="utf-8")
    for name, task in TASKS.items():
        module = inspect.getmodule(task).__name__.rsplit(".", 1)[-1]
        assert re.search(rf"\| `{re.escape(name)}` \| `tasks/{module}\.py`", text), name


HEAVY = ("torch", "transformers", "peft", "sklearn", "pandas", "accelerate", "huggingface_hub", "matplotlib")


def test_the_cli_and_the_config_start_without_the_heavy_libraries():
    """`ftune --help` and a config error answer before torch (about 2 s) or scikit-learn would have imported: the
    CLI imports its commands' modules inside them, the task modules import torch and pandas on first use."""
    import subprocess
    import sys

    code = ("import sys, ftune.cli, ftune.config\n"
            "from ftune.config import load_config\n"
            "load_config(None, ['method.name=lora', 'task.name=multi-label'])\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""
