"""The run's report, built from the run directory alone: report.md, report.html (self-contained) and plots/.

One list of sections (text, a table, figures, a code block) is rendered twice, as Markdown and
as HTML with the figures embedded, so the two reports cannot drift apart.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ftune import plots
from ftune.diagnosis import lines
from ftune.integrity import own_dir, read_yaml_file, write_text
from ftune.recipe import MIN_VALIDATION
from ftune.run import RUN_FILE, damaged_run_fix, read_history, read_json
from ftune.slices import MIN_GROUP
from ftune.tasks import TASKS

ROWS = (("base_model", "base model, untrained head"), ("tfidf", "TF-IDF + linear model (tuned on validation)"),
        ("most_frequent_tag", "most frequent tag per word"),
        ("feature_tagger", "feature-based tagger (linear, tuned on validation)"), ("finetuned", "fine-tuned"))
ROW_ORDER = {"base_model": 0, "finetuned": 2, "teacher": 3}  # baselines between the first two; a teacher last
MISTAKES_SHOWN = 8


@dataclass
class Section:
    title: str
    text: str = ""
    header: list[str] | None = None
    rows: list[tuple] | None = None
    images: tuple[str, ...] = ()  # file names under plots/
    code: str | None = None


TITLES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "entity_f1": "entity F1", **dict(ROWS)}


def title(key: str, scores: dict | None = None) -> str:
    """How tables name a score or a model: as the run's task named it (metrics.json `scores.titles`), else the
    names of the tasks that came before titles were recorded, else the key itself."""
    return ((scores or {}).get("titles") or {}).get(key) or TITLES.get(key) or key.replace("_", " ")


def before_after_table(test: dict, scores: dict | None = None) -> tuple[list[str], list[tuple]]:
    """The header and a row per model scored (base model, each baseline, fine-tuned): the task's scores as
    metrics.json names them (`scores`), the headline first with its 95% interval; the loss only where it is the
    headline (a language model)."""
    finetuned = test.get("finetuned") or {}  # none when train.evaluate_test was false: no rows
    names = (scores or {}).get("metrics") or (["loss", "perplexity"] if "perplexity" in finetuned else
                                              ["accuracy", "macro_f1", "entity_f1"])  # runs before `scores`
    names = [n for i, n in enumerate(names) if n in finetuned and (n != "loss" or i == 0)]
    columns = []
    for i, name in enumerate(names):
        columns.append((name, title(name, scores), "{:.2f}" if name == "perplexity" else "{:.4f}"))
        if i == 0 and f"{name}_ci95" in finetuned:
            columns.append((f"{name}_ci95", "95% CI", "{0[0]:.3f}–{0[1]:.3f}"))
    rows = []
    for key, m in sorted(test.items(), key=lambda item: ROW_ORDER.get(item[0], 1)):
        if not isinstance(m, dict):
            continue
        name = "base model, before fine-tuning" if key == "base_model" and "perplexity" in finetuned else \
            title(key, scores)
        rows.append((name, *(form.format(m[k]) if m.get(k) is not None else "" for k, _, form in columns)))
    return ["model", *(name for _, name, _ in columns)], rows


def markdown_table(header: list[str], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_reports(run_dir: Path) -> None:
    """Draw the plots, then write report.md and report.html into the run directory. Each file is written to a
    temp file renamed over its name, so a symlink planted in the run folder is replaced, never written through;
    plots/ must be a real folder."""
    run_dir = Path(run_dir)
    own_dir(run_dir / "plots")
    title, sections = build_sections(run_dir)
    write_text(run_dir / "report.md", to_markdown(title, sections))
    write_text(run_dir / "report.html", to_html(title, sections, run_dir / "plots"))


def build_sections(run_dir: Path) -> tuple[str, list[Section]]:
    config = read_yaml_file(run_dir / "config.yaml", damaged_run_fix(run_dir))  # within a config's limits first
    config_text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    labels: list[str] = read_json(run_dir / "labels.json")
    metrics = read_json(run_dir / "metrics.json")
    manifest = read_json(run_dir / RUN_FILE)
    test, train, validation = metrics["test"], metrics["train"], metrics["validation"]
    finetuned = test.get("finetuned") or {}
    plot_dir = run_dir / "plots"
    title = f"ftune run {run_dir.name}: {config['data']['train']}, {config['method']['name']}, {config['model']['name']}"

    header, rows = before_after_table(test, metrics.get("scores"))
    task = TASKS.get(metrics.get("task"))
    unit = (metrics.get("scores") or {}).get("unit") or (task.unit if task else "examples")  # runs before `scores`
    better = metrics.get("better_baseline")  # first of all: the user should ship the better model
    sections = [Section("Not better than a baseline", better["line"])] if better else []
    sections += [Section(f"Before and after, on the same test split ({finetuned['n']} {unit})",
                        _before_after_note(metrics), header, rows) if finetuned else Section("Test split", test["note"])]
    if metrics.get("diagnosis"):  # first thing after the scores: a run that learned nothing must not look fine
        sections.append(Section("Diagnosis", "", ["what the run shows"], [(line,) for line in lines(metrics["diagnosis"])]))
    sections += _slice_sections(test)
    if metrics["data"].get("warnings"):
        sections.append(Section("Data warnings", "Found before training; the run went ahead.", ["warning"],
                                [(w,) for w in metrics["data"]["warnings"]]))
    history = read_history(run_dir)
    stopped = " (stopped early)" if train["stopped_early"] else ""
    best = f"Best validation {validation['metric']}: {validation['best']:.4f} at step {validation['best_step']}; " \
           f"the test scores are from those weights." if validation["best"] is not None else ""
    if validation.get("kept") == "last":
        best = (f"The last weights are kept and scored: the validation split has fewer than {MIN_VALIDATION} "
                f"texts, too few to choose a checkpoint by.")
    curves = (plots.training_curves(history, validation["metric"], plot_dir / "curves.png").name,) if history else ()
    chosen = "".join(f" {c.get('key', 'train.' + key).lstrip('-')} {c['value']}, chosen from the data: {c['reason']}."
                     for key, c in (manifest.get("chosen_from_data") or {}).items())
    best += chosen
    sections.append(Section("Training", f"{train['steps']} steps, {train['epochs']} epochs{stopped}, "
                            f"{train['seconds']:.1f} s, {train['samples_per_s']:.1f} samples/s; "
                            f"{train['trainable_parameters']:,} of {train['total_parameters']:,} parameters trained. {best}",
                            images=curves))
    sections += _lr_find_section(run_dir / "lr_find.json", plot_dir)
    if "confusion" in finetuned:
        names = finetuned.get("confusion_labels", labels)  # tagging: the most frequent tags only
        which = "" if names == labels else f" of the {len(names)} most frequent tags"
        plots.confusion_heatmaps(finetuned["confusion"], names, plot_dir / "confusion.png")
        sections.append(Section(f"Confusion matrix{which} (rows: true class, columns: predicted)", "", ["", *names],
                                [(names[i], *row) for i, row in enumerate(finetuned["confusion"])], ("confusion.png",)))
    if "per_class" in finetuned:
        sections.append(Section("Fine-tuned model per class", "", ["class", "precision", "recall", "F1", "support"],
                                [(name, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", s["support"])
                                 for name, s in finetuned["per_class"].items()]))
    sections += _mistakes(run_dir / "test_predictions.csv")
    sections += _data_sections(metrics["data"], labels, plot_dir)
    sections.append(_environment(manifest))
    sections.append(Section("Config", code=config_text.strip()))
    return title, sections


def _slice_sections(test: dict) -> list[Section]:
    """data.slice_columns: each column's groups on the test split, fine-tuned beside the base model, with the gap."""
    out = []
    base = (test.get("base_model") or {}).get("slices") or {}
    for column, sliced in ((test.get("finetuned") or {}).get("slices") or {}).items():
        metric, gap = sliced["metric"], sliced.get("gap")
        before = (base.get(column) or {}).get("groups") or {}
        small = sliced["too_small"]
        rows = [(name, g["n"], f"{g[metric]:.4f}",
                 "{:.3f}–{:.3f}".format(*g[f"{metric}_ci95"]) if f"{metric}_ci95" in g else "",
                 f"{before[name][metric]:.4f}" if name in before else "",
                 *(["too few to judge" if name in small else ""] if small else []))
                for name, g in sliced["groups"].items()]
        note = (f"Largest gap: {metric} {gap['value']:.4f}, between {column}={gap['best']} and {column}={gap['worst']} "
                f"(groups of {MIN_GROUP} or more; where the intervals overlap, the gap may be chance)." if gap else
                f"No gap judged: fewer than two groups of {MIN_GROUP} or more test examples.")
        out.append(Section(f"Scores by slice: {column} (test split)", note,
                           [column, "n", f"fine-tuned {metric}", "95% CI", f"base model {metric}",
                            *(["note"] if small else [])], rows))
    return out


def _before_after_note(metrics: dict) -> str:
    """What the scores measure, in the task's words (metrics.json); a language model's loss before fine-tuning."""
    note = (metrics.get("scores") or {}).get("note") or "Accuracy with the 95% bootstrap interval for the fine-tuned model."
    base = metrics["validation"].get("base_model") or {}
    if metrics["validation"].get("metric") == "loss" and "loss" in base:
        note += f" Validation loss before fine-tuning: {base['loss']:.4f}."
    return note


def _mistakes(path: Path) -> list[Section]:
    if not path.is_file() or path.is_symlink():  # a link could lead to any file of the reader's: not shown
        return []
    frame = pd.read_csv(path, keep_default_na=False)
    if not {"label", "predicted", "score"} <= set(frame.columns):  # a number per text (regression): no "mistakes"
        return []
    wrong = frame[frame["label"] != frame["predicted"]].sort_values("score", ascending=False).head(MISTAKES_SHOWN)
    text = (f"The {len(wrong)} test texts the fine-tuned model got wrong with the most confidence (of "
            f"{int((frame['label'] != frame['predicted']).sum())} mistakes in {len(frame)}); all predictions are in "
            f"test_predictions.csv.")
    rows = [(_clip(r.text), r.label, r.predicted, f"{r.score:.3f}") for r in wrong.itertuples()]
    return [Section("Most confident mistakes", text, ["text", "true", "predicted", "score"], rows)]


def _data_sections(data: dict, labels: list[str], plot_dir: Path) -> list[Section]:
    splits = ("train", "validation", "test")
    if "classes" not in data:  # runs written before the data summary existed, and language-model runs
        sizes = Section("Data", f"{data['train']} train, {data['validation']} validation, {data['test']} test.")
        return [sizes, *_token_section(data, plot_dir)]
    rows = [(name, *(data["classes"][s][name] for s in splits)) for name in labels]
    rows.append(("all", *(data[s] for s in splits)))
    counts = data["classes"]["train"].values()
    balance = f"Largest over smallest class in train: {max(counts) / max(min(counts), 1):.1f}x."
    return [Section("Data: class balance", balance, ["class", *splits], rows), *_token_section(data, plot_dir)]


def _token_section(data: dict, plot_dir: Path) -> list[Section]:
    if "tokens" not in data:
        return []
    splits = ("train", "validation", "test")
    tokens = data["tokens"]
    stats = [(s, f"{tokens['splits'][s]['mean']:.1f}", f"{tokens['splits'][s]['median']:.0f}",
              f"{tokens['splits'][s]['p95']:.0f}", tokens["splits"][s]["max"], tokens["splits"][s]["at_window"])
             for s in splits]
    at_window = sum(tokens["splits"][s]["at_window"] for s in splits)
    window = tokens["max_length"]
    long_text = data.get("long_text")
    if long_text:
        over = " ".join(f"{s}: {long_text['over_window'][s]} of {data[s]};" for s in splits)
        how = (f"split into {sum(long_text['windows'].values())} overlapping windows (stride {long_text['stride']}), "
               f"whose logits are pooled by their {long_text['pool']}" if long_text["strategy"] == "chunk" else
               "cut to their first and last tokens" if long_text["keep"] == "head+tail" else "cut to their head")
        text = f"Documents longer than the {window}-token window ({over.rstrip(';')}) were {how}. Lengths are of whole documents."
    else:
        text = f"{at_window} texts filled the {window}-token window (longer texts are cut to it; raise data.max_length to keep more)."
    plots.length_histogram(tokens, plot_dir / "lengths.png")
    return [Section("Data: tokens per text", text, ["split", "mean", "median", "95th pct", "max", "at max_length"],
                    stats, ("lengths.png",))]


def _lr_find_section(path: Path, plot_dir: Path) -> list[Section]:
    """train.learning_rate: auto: the range test's curve and the rate it chose (see ftune.lr_find)."""
    if not path.is_file() or path.is_symlink():  # a link could lead to any file of the reader's: not shown
        return []
    curve = read_json(path)
    plots.lr_range_test(curve, plot_dir / "lr_find.png")
    stop = (f", stopped at {curve['rates'][-1]:.1e} as the loss diverged"
            if curve["stopped_early"] and curve["rates"] else "")
    text = (f"train.learning_rate: auto chose {curve['chosen']:.1e}: {curve['rule']} ({curve['minimum_at']:.1e}), "
            f"clamped to {curve['clamped_to'][0]:g}–{curve['clamped_to'][1]:g}. The test took {len(curve['rates'])} "
            f"AdamW steps of {curve['examples_per_step']} training examples, the rate growing from {curve['start']:g} "
            f"to {curve['end']:g}{stop}, in {curve['seconds']:.1f} s before training; the weights and random state "
            f"were restored after it. Curve and choice: lr_find.json.")
    return [Section("Learning rate: range test", text, images=("lr_find.png",))]


def _environment(manifest: dict) -> Section:
    rows = [("started", manifest.get("started_at")),
            ("finished", manifest.get("finished_at")), ("device", manifest.get("device")),
            ("seed", manifest.get("seed")), ("model source", manifest.get("model_source")),
            *((f"data ({split})", path) for split, path in manifest.get("data_paths", {}).items()),
            ("data hash", (manifest.get("data_hash") or "")[:16]), ("git commit", manifest.get("git_commit")),
            ("python", manifest.get("python")), ("platform", manifest.get("platform"))]
    rows += [(pkg, v) for pkg, v in manifest.get("versions", {}).items()]
    return Section("Environment", "", ["", ""], [r for r in rows if r[1] is not None])


def to_markdown(title: str, sections: list[Section], image_dir: str = "plots") -> str:
    parts = [f"# {title}"]
    for s in sections:
        parts.append(f"## {s.title}")
        if s.text:
            parts.append(s.text)
        if s.header is not None:
            parts.append(markdown_table(s.header, s.rows))
        parts += [f"![{s.title}]({image_dir}/{name})" for name in s.images]
        if s.code is not None:
            parts.append(f"```yaml\n{s.code}\n```")
    return "\n\n".join(parts) + "\n"


def to_html(title: str, sections: list[Section], plot_dir: Path) -> str:
    """One self-contained page: figures are embedded as data URIs, every text is escaped."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{e(s.title)}</h2>")
        if s.text:
            body.append(f"<p>{e(s.text)}</p>")
        if s.header is not None:
            head = "".join(f"<th>{e(str(c))}</th>" for c in s.header)
            rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in s.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        for name in s.images:
            data = base64.b64encode((plot_dir / name).read_bytes()).decode()
            body.append(f'<img alt="{e(s.title)}" src="data:image/png;base64,{data}">')
        if s.code is not None:
            body.append(f"<pre>{e(s.code)}</pre>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: .6em 0; }}
th, td {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
td {{ max-width: 640px; }}
img {{ max-width: 100%; display: block; margin: .6em 0; }}
pre {{ background: #f6f6f6; padding: .8em; overflow-x: auto; }}
</style></head>
<body>
{chr(10).join(body)}
</body></html>
"""


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
