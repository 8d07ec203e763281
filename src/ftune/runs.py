"""Many runs at once: list the run directories under a folder, compare finished runs side by side."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ftune import plots
from ftune.config import dotted
from ftune.errors import RunError
from ftune.diagnosis import headline
from ftune.report import Section, title, to_html, to_markdown
from ftune.integrity import read_yaml_file
from ftune.run import RUN_FILE, Run, damaged_run_fix, live_status, read_history, read_json
from ftune.seeds import compared_entry


def _finetuned(metrics: dict) -> dict:
    """The fine-tuned model's test scores; empty when train.evaluate_test was false (a tuning trial)."""
    return metrics["test"].get("finetuned") or {}


LEGACY_SCORES = ("accuracy", "macro_f1", "entity_f1", "loss", "perplexity")  # runs before metrics.json named theirs
SHORT = {"base_model": "base model", "tfidf": "TF-IDF", "most_frequent_tag": "most-frequent-tag",
         "feature_tagger": "feature tagger"}
# (label, how to read it from metrics.json, format); differences are shown for numbers
TRAINING_ROWS = (
    ("best validation metric", lambda m: m["validation"]["best"], "{:.4f}"),
    ("epochs", lambda m: m["train"]["epochs"], "{:d}"),
    ("optimizer steps", lambda m: m["train"]["steps"], "{:d}"),
    ("train seconds", lambda m: m["train"]["seconds"], "{:.1f}"),
    ("samples/s", lambda m: m["train"]["samples_per_s"], "{:.1f}"),
    ("trainable parameters", lambda m: m["train"]["trainable_parameters"], "{:,d}"),
)


def compared_rows(metrics: list[dict]) -> list[tuple]:
    """The rows to compare: each task score the runs recorded (the first run's headline with its interval, and the
    baselines' headline), then the training figures."""
    names: list[str] = []
    for m in metrics:
        names += [n for n in (m.get("scores") or {}).get("metrics") or LEGACY_SCORES if n not in names]
    head, scores = names[0], metrics[0].get("scores")
    name = lambda key: title(key, scores)  # noqa: E731
    rows = [(f"test {name(n)}", lambda m, n=n: _finetuned(m).get(n), "{:.2f}" if n == "perplexity" else "{:.4f}")
            for n in names]
    rows += [(f"test {name(head)} 95% CI {end}", lambda m, i=i: (_finetuned(m).get(f"{head}_ci95") or [None, None])[i],
              "{:.4f}") for i, end in enumerate(("low", "high"))]
    models = dict.fromkeys(k for m in metrics for k in m["test"] if k not in ("finetuned", "evaluated", "note"))
    rows += [(f"{SHORT.get(k) or name(k)} {name(head)}", lambda m, k=k: (m["test"].get(k) or {}).get(head),
              "{:.4f}") for k in models]
    return rows + _slice_rows(metrics, head, name) + list(TRAINING_ROWS)


def _slice_rows(metrics: list[dict], head: str, name) -> list[tuple]:
    """data.slice_columns: the headline of every group any run scored, then each column's largest gap."""
    sliced = lambda m, column: (_finetuned(m).get("slices") or {}).get(column) or {}  # noqa: E731
    groups = dict.fromkeys((column, group) for m in metrics for column, s in (_finetuned(m).get("slices") or {}).items()
                           for group in s["groups"])
    rows = [(f"test {name(head)} {column}={group}",
             lambda m, c=column, g=group: (sliced(m, c).get("groups", {}).get(g) or {}).get(head), "{:.4f}")
            for column, group in groups]
    return rows + [(f"largest {column} gap in {name(head)}", lambda m, c=column: (sliced(m, c).get("gap") or {}).get(
        "value"), "{:.4f}") for column in dict.fromkeys(column for column, _ in groups)]


def find_runs(root: Path) -> list[Path]:
    """Run directories in `root` (or `root` itself), oldest first."""
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"{root} is not a folder; pass the folder that holds your runs (default: runs)")
    found = [root] if (root / RUN_FILE).is_file() else [p for p in root.iterdir() if (p / RUN_FILE).is_file()]
    return sorted(found, key=_started)


def _started(path: Path) -> float:
    try:
        return float(read_json(path / RUN_FILE).get("started_unix", 0))
    except Exception:  # a damaged manifest sorts first; its row says what is wrong
        return 0.0


def run_row(path: Path) -> dict:
    """One line of `ftune runs list`; incomplete, failed and unreadable runs are listed too, with their status."""
    try:
        return _row(path)
    except Exception as e:  # one damaged run must not hide the others: its row names the problem instead
        problem = str(e).replace(f"{path}/", "").split(" (")[0].split(";")[0][:60] or type(e).__name__
        return {"name": path.name, "model": "?", "method": "?", "data": "?",
                "status": f"unreadable: {problem}", "started": "", "test score": "",
                "best validation": "", "train s": ""}


def _row(path: Path) -> dict:
    manifest = read_json(path / RUN_FILE)
    config = read_yaml_file(path / "config.yaml", damaged_run_fix(path)) if (path / "config.yaml").is_file() else {}
    row = {"name": path.name, "model": _short((config.get("model") or {}).get("name", "?")),
           "method": manifest.get("method", "?"), "data": _short(manifest.get("data", "?")), "status": live_status(path, manifest),
           "started": (manifest.get("started_at") or "")[:16].replace("T", " "), "test score": "", "best validation": "",
           "train s": ""}
    if (path / "metrics.json").is_file():
        metrics = read_json(path / "metrics.json")
        if metrics.get("diagnosis"):  # a run that completed but learned nothing is marked where runs are chosen
            row["status"] += f" ({metrics['diagnosis']['verdict']})"
        validation = metrics["validation"]
        finetuned = _finetuned(metrics)
        name = headline(metrics)[0]
        row["test score"] = f"{name} {finetuned[name]:.4f}" if name in finetuned else "not evaluated"
        if validation["best"] is not None:
            row["best validation"] = f"{validation['metric']} {validation['best']:.4f}"
        row["train s"] = f"{metrics['train']['seconds']:.0f}"
    return row


def compare_runs(paths: list[Path], output: Path | None = None) -> tuple[list[str], list[tuple], Path]:
    """The metrics table (each run, then each run minus the first) and a folder with the overlaid curves."""
    if len(paths) < 2:
        raise RunError("compare needs at least two run directories, e.g. `ftune runs compare runs/a runs/b`")
    # Each must be a complete run (the error names the one that is not), or a seeds folder: its mean ± sd
    runs = [compared_entry(p) for p in paths]
    tasks = [run.config.task.name for run in runs]
    if len(set(tasks)) > 1:  # their scores are different things: the table would hold no row they share
        other = next(i for i, t in enumerate(tasks) if t != tasks[0])
        raise RunError(f"{paths[0]} is a {tasks[0]} run and {paths[other]} a {tasks[other]} run; their scores "
                       f"measure different things: compare runs of one task")
    names = _unique_names(runs)
    header = ["metric", *names, *(f"{n} − {names[0]}" for n in names[1:])]
    rows = []
    for label, read, fmt in compared_rows([run.metrics for run in runs]):
        values = [read(run.metrics) for run in runs]
        if all(v is None for v in values):
            continue
        fmt = fmt.replace("d}", ".1f}") if any(isinstance(v, float) for v in values) else fmt  # mean of counts
        shown = ["" if v is None else _cell(v, fmt) for v in values]
        diffs = ["" if v is None or values[0] is None else _signed(v - values[0], fmt) for v in values[1:]]
        rows.append((label, *shown, *diffs))
    configs = [dotted(run.config.model_dump(mode="json")) for run in runs]
    shown = ["method.name", "model.name", "data.train"]  # always, then every other setting the runs differ in
    shown += [key for key in configs[0].keys() | set().union(*configs[1:])
              if key not in shown and key != "output_dir" and len({repr(c.get(key)) for c in configs}) > 1]
    for key in sorted(shown, key=lambda k: (k not in shown[:3], k)):
        rows.append((key, *(_setting(c.get(key)) for c in configs), *([""] * (len(runs) - 1))))

    folder = Path(output) if output else runs[0].path.parent / _folder_name(names)
    plots.compare_curves({n: read_history(r.path) for n, r in zip(names, runs)}, folder / "curves.png")
    title = f"ftune: {' vs '.join(names)}"
    sections = [Section("Metrics", "Test scores are each run's best-validation weights on its own test split; "
                        "compare like with like (same data and split seed).", header, rows),
                Section("Curves (against epochs, so runs with different batch sizes line up)", images=("curves.png",))]
    (folder / "compare.md").write_text(to_markdown(title, sections, image_dir="."), encoding="utf-8")
    (folder / "compare.html").write_text(to_html(title, sections, folder), encoding="utf-8")
    return header, rows, folder


def _setting(value) -> str:
    return "unset" if value is None else str(value)


def _folder_name(names: list[str]) -> str:
    """compare-A-vs-B (a name that is a path flattened, so the folder stays beside the first run), or when that is
    longer than a file name may be (255 bytes), cut short with a digest of the names, so it stays distinct."""
    name = "compare-" + "-vs-".join(names).replace("/", "_")
    if len(name.encode()) <= 120:
        return name
    return name.encode()[:80].decode(errors="ignore") + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def _short(name: str) -> str:
    """A local file or folder by its last part (the table has no room for whole paths); hub ids as they are."""
    return Path(name).name if os.path.exists(name) else name


def _unique_names(runs: list[Run]) -> list[str]:
    names = [r.path.name for r in runs]
    if len(set(names)) < len(names):  # same folder name under different parents
        names = [str(r.path) for r in runs]
    return names


def _cell(value: float, fmt: str) -> str:
    """A number as `fmt` writes it; a mean over seeds with its sd (ftune.seeds.Spread)."""
    sd = getattr(value, "sd", None)
    return fmt.format(value) if sd is None else f"{fmt.format(value)} ± {fmt.format(sd)}"


def _signed(value: float, fmt: str) -> str:
    text = fmt.format(value)
    return text if text.startswith("-") else "+" + text
