"""The code's shape, checked: imports go one way, the loop's step fits a screen, every task is registered and
documented, and the docs' config tables are the schema's own."""

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
DOCS = Path(__file__).resolve().parents[1] / "docs"
CONFIG_PAGE = DOCS / "configuration.md"  # the generated tables, between the config-tables markers
ARCHITECTURE_PAGE = DOCS / "architecture" / "index.md"  # the task table


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


def test_the_docs_config_tables_are_generated_from_the_schema():
    text = CONFIG_PAGE.read_text(encoding="utf-8")
    block = re.search(r"<!-- config-tables: ftune config --markdown -->\n(.*?)<!-- /config-tables -->", text, re.S)
    assert block, "docs/configuration.md lacks the generated config tables"
    assert block.group(1) == config_markdown(), \
        "regenerate docs/configuration.md's tables with `ftune config --markdown` (between the config-tables markers)"


def test_every_task_is_in_the_architecture_task_table():
    text = ARCHITECTURE_PAGE.read_text(encoding="utf-8")
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


def test_the_loop_fits_two_screens_and_leaves_the_run_files_to_run_files():
    """training.py is the loop: set-up is ftune.train_setup (optimizer, precision and compile: ftune.optim), and the
    finished run's files are ftune.run_files. The loop writes only its own log and checkpoints."""
    loop = (SRC / "training.py").read_text(encoding="utf-8")
    assert len(loop.splitlines()) <= 300
    assert not re.search(r"write_json|save_pretrained|write_text\(|write_reports|write_cards", loop)


def test_one_run_class_reads_a_run_and_predicts():
    """ftune.Run, ftune.run.Run and ftune.predictors.Run are one class; what predictors read is its base, the run
    folder's reader (ftune.run_folder), so the class can load its model without an import circle."""
    import ftune
    import ftune.predictors
    import ftune.run
    from ftune.predictors.pytorch import Predictor
    from ftune.run_folder import RunFolder

    assert ftune.Run is ftune.run.Run is ftune.predictors.Run
    assert issubclass(ftune.Run, RunFolder) and hasattr(ftune.Run, "predict") and not hasattr(RunFolder, "predict")
    assert "ftune.run" not in import_graph()[Predictor.__module__]
