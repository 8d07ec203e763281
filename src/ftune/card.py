"""Model cards: the README.md of a run's model/ and adapter/ folders, in the Hugging Face hub's format.

A card is built from the run folder's own files (run.json, config.yaml, metrics.json, labels.json, task.json), so it
can be rebuilt for any finished run, and it carries no path of this machine: the base model is named by its hub id,
the data by file name. (An export's README is ftune.export_card; publishing, ftune.push.)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftune.config import Config, validate
from ftune.integrity import (MANIFEST_KEY, read_json_file, read_labels, read_yaml_file, sha256, write_json,
                             write_text)
from ftune.run import RUN_FILE, TASK_FILE, damaged_run_fix
from ftune.tasks import TASKS

PIPELINE_TAGS = {"classification": "text-classification", "multi-label": "text-classification",
                 "regression": "text-classification", "token-classification": "token-classification",
                 "reward-model": "text-classification"}  # a decoder that writes text (Task.serves "chat"): generation
PEFT_CLASSES = {"token-classification": "AutoPeftModelForTokenClassification"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # org/name, or a bare name like bert-base-uncased
CARD = "README.md"
CONFIGS = ("config.json", "adapter_config.json")  # the small text files of a model folder that may name a local path
SHOWN_CLASSES = 50  # rows of the card's class table; a tagging run with hundreds of tags lists the most frequent


@dataclass
class RunFacts:
    """What a card says, as the run folder records it (a run still finishing included: the card is its last file)."""

    path: Path
    config: Config
    manifest: dict
    metrics: dict
    labels: list[str]
    task_state: dict

    @classmethod
    def read(cls, run_dir: str | Path) -> RunFacts:
        path = Path(run_dir)
        fix = damaged_run_fix(path)
        config = validate(read_yaml_file(path / "config.yaml", fix), str(path / "config.yaml"))
        state = read_json_file(path / TASK_FILE, fix) if (path / TASK_FILE).is_file() else {}
        labels = read_labels(path / "labels.json", fix) if (path / "labels.json").is_file() else []
        return cls(path, config, read_json_file(path / RUN_FILE, fix), read_json_file(path / "metrics.json", fix),
                   labels, state)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def headline(self) -> tuple[str, dict]:
        """The headline metric's name and the fine-tuned model's test scores ({} when test was not evaluated)."""
        scores = self.metrics.get("scores") or {}
        return (scores.get("metrics") or ["accuracy"])[0], self.metrics["test"].get("finetuned") or {}

    def base(self) -> tuple[str | None, str]:
        return base_model(self.config.model.name, self.manifest.get("model_source"))


# --- naming things without local paths ------------------------------------------------------------------------------

def base_model(name: str, source: str | None = None) -> tuple[str | None, str]:
    """(the base model's hub id, or None when only a local folder is known; how a card names it). `name` is
    model.name, `source` run.json's model_source (an absolute folder, or the hub id it was)."""
    from ftune.models import ALIASES, HUB_IDS

    if name in HUB_IDS:
        return HUB_IDS[name], HUB_IDS[name]
    if source and not Path(source).is_absolute():
        return source, source  # training found it on the hub under this id
    local = Path(source) if source else Path(name).expanduser()
    if not source and not local.is_dir() and not name.startswith((".", "/", "~")) and HUB_ID.fullmatch(name):
        return name, name
    for alias, find in ALIASES.items():  # an alias's folder given by its path (a distilled student's base, say)
        try:
            if alias in HUB_IDS and Path(find()).resolve() == local.resolve():
                return HUB_IDS[alias], HUB_IDS[alias]
        except (ImportError, OSError):
            continue
    cached = [p[len("models--"):].replace("--", "/", 1) for p in local.parts if p.startswith("models--")]
    if cached and HUB_ID.fullmatch(cached[0]):  # a snapshot in the hub's cache: models--ORG--NAME/snapshots/REV
        return cached[0], cached[0]
    # A folder's config.json may name where it came from; often the model it was trained from rather than these
    # weights (all-MiniLM-L6-v2's names nreimers/MiniLM-L6-H384-uncased), so it is said, never claimed as the base.
    try:
        origin = json.loads((local / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        origin = None
    named = f"; its config.json names {origin}" if isinstance(origin, str) and HUB_ID.fullmatch(origin) else ""
    return None, f"a local model ({local.name}{named})"


def file_name(source: str | None) -> str | None:
    """A data source as a card names it: a file by its name (a built-in dataset's name is one already)."""
    return Path(source).name if source else None


def portable(text: str, paths: list[Any]) -> str:
    """`text` with each local folder or file in `paths` replaced by its name, and the home folder by ~: what is
    published names files, never where they were on this machine."""
    found = {str(p) for p in paths if isinstance(p, (str, Path)) and str(p).startswith(("/", "~")) and len(str(p)) > 1}
    for path in sorted(found | {str(Path(p).expanduser().resolve()) for p in found}, key=len, reverse=True):
        text = text.replace(path, Path(path).name)
    home = str(Path.home())
    return text.replace(home + "/", "~/") if len(home) > 1 else text


def local_paths(facts: RunFacts) -> list[Any]:
    """Every path of this machine the run's files record."""
    data = facts.config.data
    return [facts.path, facts.path.resolve(), facts.config.output_dir, facts.config.model.name,
            facts.manifest.get("model_source"), data.train, data.validation, data.test, data.unlabeled,
            *(facts.manifest.get("data_paths") or {}).values(),
            facts.config.distill.teacher if facts.config.distill else None]


# --- the run's card -------------------------------------------------------------------------------------------------

def run_card(run_dir: str | Path, folder: str, repo_id: str | None = None) -> str:
    """The card of the run's model/ (transformers) or adapter/ (peft) folder; `repo_id` names it in the usage code."""
    from huggingface_hub import EvalResult, ModelCardData

    facts = RunFacts.read(run_dir)
    task, method = facts.config.task.name, facts.config.method.name
    hub_id, base_name = facts.base()
    metric, finetuned = facts.headline()
    scores = facts.metrics.get("scores") or {}
    shown = [m for m in scores.get("metrics", [metric]) if isinstance(finetuned.get(m), (int, float))
             and (m != "loss" or m == metric)]
    train_name = file_name(facts.config.data.train)
    data = ModelCardData(
        library_name="peft" if folder == "adapter" else "transformers", base_model=hub_id,
        pipeline_tag=_pipeline(task), tags=["ftune", task, method], metrics=shown or None,
        model_name=facts.name,
        eval_results=[EvalResult(task_type=_pipeline(task) or task, dataset_type=train_name,
                                 dataset_name=train_name, dataset_split="test", metric_type=m,
                                 metric_value=round(float(finetuned[m]), 4), metric_name=f"test {m}")
                      for m in shown] or None)
    sections = [f"# {facts.name}", _summary(facts, base_name, hub_id), *_labels(facts), _results(facts),
                _data(facts), _training(facts), _usage(facts, folder, repo_id), _limitations(facts), *_warnings(facts)]
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(s.strip() for s in sections if s) + "\n"
    return portable(text, local_paths(facts))


def write_cards(run_dir: str | Path) -> list[Path]:
    """Write the card into the run's model/ and adapter/ folders (replacing peft's empty template), after the run's
    metrics are final; in a finished run, run.json's sha256 of the cards is brought up to date too."""
    run_dir = Path(run_dir)
    written = []
    for folder in ("model", "adapter"):
        if (run_dir / folder).is_dir() and not (run_dir / folder).is_symlink():
            write_text(run_dir / folder / CARD, run_card(run_dir, folder))
            written.append(run_dir / folder / CARD)
    manifest = read_json_file(run_dir / RUN_FILE, damaged_run_fix(run_dir))
    if written and isinstance(manifest.get(MANIFEST_KEY), dict):  # the manifest lists every file of model/, adapter/
        manifest[MANIFEST_KEY].update({p.relative_to(run_dir).as_posix(): sha256(p) for p in written})
        write_json(run_dir / RUN_FILE, manifest)
    return written


def _summary(facts: RunFacts, base_name: str, hub_id: str | None) -> str:
    base = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else base_name
    task, method = facts.config.task.name, facts.config.method.name
    return (f"A {task} model fine-tuned from {base} with [ftune](https://pypi.org/project/ftune/) (method: {method}) "
            f"on {file_name(facts.config.data.train)}. {score_line(facts)}")


def score_line(facts: RunFacts, lead: str = "Test") -> str:
    metric, finetuned = facts.headline()
    if not isinstance(finetuned.get(metric), (int, float)):
        return "It was not scored on a test split (train.evaluate_test was false)."
    ci = finetuned.get(f"{metric}_ci95")
    interval = f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if isinstance(ci, list) and len(ci) == 2 else ""
    unit = (facts.metrics.get("scores") or {}).get("unit") or "examples"
    return f"{lead} {metric}: {finetuned[metric]:.4f}{interval} on {finetuned.get('n', '?')} held-out {unit}."


def _pipeline(task: str) -> str | None:
    """The hub's pipeline tag for a task's model."""
    return "text-generation" if TASKS[task].serves == "chat" else PIPELINE_TAGS.get(task)


def _labels(facts: RunFacts) -> list[str]:
    if len(facts.labels) < 2:  # a decoder's text, or one output (regression's value, a reward model's score)
        return []
    rows = "\n".join(f"| {i} | {cell(name)} |" for i, name in enumerate(facts.labels))
    return [f"## Labels\n\n| id | label |\n|---|---|\n{rows}"]


def _results(facts: RunFacts) -> str:
    from ftune.report import before_after_table, markdown_table

    test, scores = facts.metrics["test"], facts.metrics.get("scores") or {}
    header, rows = before_after_table(test, scores)
    if not rows:
        return f"## Results\n\n{test.get('note', 'The test split was not evaluated.')}"
    note = f"{scores.get('note', '')} The untrained base model and the baselines are scored on the same split."
    return f"## Results (test split)\n\n{note.strip()}\n\n{markdown_table(header, rows)}"


def _data(facts: RunFacts) -> str:
    data, summary = facts.config.data, facts.metrics.get("data") or {}
    given = {split: file_name(getattr(data, split)) for split in ("validation", "test") if getattr(data, split)}
    split_off = [s for s in ("validation", "test") if s not in given]
    source = f"Training data: {file_name(data.train)}" + "".join(f"; {s}: {n}" for s, n in given.items())
    if split_off:
        source += (f"; {' and '.join(split_off)} split off the training data by ftune "
                   f"(test {data.test_size:.0%}, validation {data.validation_size:.0%} of the rest)")
    sizes = " | ".join(str(summary.get(s, "?")) for s in ("train", "validation", "test"))
    lines = [f"## Data\n\n{source}.\n\n| | train | validation | test |\n|---|---|---|---|\n| examples | {sizes} |"]
    classes = summary.get("classes") or {}
    names = sorted(classes.get("train", {}), key=lambda c: -classes["train"][c])[:SHOWN_CLASSES]
    splits = ("train", "validation", "test")
    lines += [f"| {cell(c)} | " + " | ".join(str(classes.get(s, {}).get(c, 0)) for s in splits) + " |" for c in names]
    more = len(classes.get("train", {})) - len(names)
    return "\n".join(lines) + (f"\n\n({more} rarer classes not shown.)" if more > 0 else "")


def _training(facts: RunFacts) -> str:
    cfg, train = facts.config, facts.metrics.get("train") or {}
    rate = facts.manifest.get("learning_rate") or {}
    method = cfg.method.model_dump(mode="json")
    details = ", ".join(f"{k} {v}" for k, v in method.items() if k != "name" and v is not None)
    early = " (stopped early)" if train.get("stopped_early") else ""
    versions = {k: v for k, v in (facts.manifest.get("versions") or {}).items()
                if k in ("ftune", "transformers", "torch", "peft")}
    rows = [("method", cfg.method.name + (f" ({details})" if details else "")),
            ("epochs", f"{train.get('epochs', cfg.train.epochs)} of {cfg.train.epochs}{early}, "
                       f"{train.get('steps', '?')} steps"),
            ("learning rate", f"{rate.get('value', cfg.train.learning_rate)}"
                              + (f" ({rate['source']})" if rate.get("source") else "")),
            ("batch size", f"{cfg.train.batch_size} x {cfg.train.gradient_accumulation_steps} accumulation"),
            ("max length", f"{cfg.data.max_length} tokens"),
            ("seed", str(cfg.train.seed)),
            ("precision", str(cfg.train.precision)),
            ("trainable parameters", f"{train.get('trainable_parameters', 0):,} of "
                                     f"{train.get('total_parameters', 0):,}"),
            ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()))]
    return "## Training\n\n| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {cell(v)} |" for k, v in rows)


def _usage(facts: RunFacts, folder: str, repo_id: str | None) -> str:
    task = facts.config.task.name
    chat = TASKS[task].serves == "chat"  # causal-lm, preference, kto: a decoder that writes text
    where = repo_id or f"path/to/{folder}"
    if folder == "adapter":
        cls = "AutoPeftModelForCausalLM" if chat else PEFT_CLASSES.get(task, "AutoPeftModelForSequenceClassification")
        id2label, label2id = dict(enumerate(facts.labels)), {n: i for i, n in enumerate(facts.labels)}
        names = "" if chat else \
            f", num_labels={len(facts.labels)},\n    id2label={id2label!r},\n    label2id={label2id!r}"
        code = (f"from peft import {cls}\nfrom transformers import AutoTokenizer\n\n"
                f"model = {cls}.from_pretrained(\"{where}\"{names})\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{where}\")")
        note = (f"The adapter holds the {facts.config.method.name} weights and the new head; peft loads the base "
                "model named in adapter_config.json. The label names are in labels.json (pass them as above).")
    else:
        pipeline = _pipeline(task) or "text-classification"
        extra = {"token-classification": ', aggregation_strategy="simple"', "multi-label": ", top_k=None"}.get(task, "")
        code = (f"from transformers import pipeline\n\nmodel = pipeline(\"{pipeline}\", model=\"{where}\"{extra})\n"
                f"print(model(\"{'an instruction to answer' if chat else 'a text to label'}\"))")
        note = ""
        if task == "regression":
            mean, std = facts.task_state.get("mean"), facts.task_state.get("std")
            if getattr(facts.config.task, "normalize", False) and mean is not None:
                note = (f"The model outputs the target standardized: multiply by {std:.6g} and add {mean:.6g} "
                        f"(ftune predict does).")
        if task == "multi-label" and facts.task_state.get("thresholds"):
            note = f"Each label has its own decision threshold, fixed on validation: {facts.task_state['thresholds']}."
    if chat:
        commands = "`ftune generate RUN --prompt \"...\"`, `ftune serve RUN` (an OpenAI-compatible chat API)"
    else:
        commands = "`ftune predict RUN --text \"...\"`, `ftune serve RUN`" + \
            (", `ftune export RUN --quantize int8` (ONNX)" if TASKS[task].exportable else "")
    note = f"{note}\n\n" if note else ""
    return f"## How to use\n\n```python\n{code}\n```\n\n{note}With ftune, on the run folder: {commands}."


def _limitations(facts: RunFacts) -> str:
    cfg, (_, finetuned) = facts.config, facts.headline()
    long_text = getattr(cfg.task, "long_text", None)
    if long_text is not None and long_text.strategy == "chunk":
        length = (f"Texts longer than {cfg.data.max_length} tokens are read in overlapping windows by ftune; other "
                  f"tools cut them to the first {cfg.data.max_length}.")
    else:
        length = f"Texts longer than {cfg.data.max_length} tokens are cut to that length before the model reads them."
    scored = (f"The test scores are estimates from {finetuned['n']} examples of the same source; the 95% interval "
              f"shows how far they may be off." if "n" in finetuned else
              "It was not scored on a test split (train.evaluate_test was false): how well it does is not known.")
    lines = [f"Intended for the {cfg.task.name} task it was trained on, on texts like those of "
             f"{file_name(cfg.data.train)}. Expect lower scores on texts unlike them (another domain, style, "
             f"language or time).",
             length,
             f"{scored} The model was not evaluated for bias across groups of people or topics: check it on your "
             f"own data before relying on it."]
    diagnosis = facts.metrics.get("diagnosis")
    if diagnosis:
        lines.append(f"ftune's diagnosis: this run {diagnosis.get('verdict')}; see below before using it.")
    return "## Intended use and limitations\n\n" + "\n\n".join(lines)


def _warnings(facts: RunFacts) -> list[str]:
    from ftune.diagnosis import lines

    diagnosis = facts.metrics.get("diagnosis")
    found = lines({**diagnosis, "try": None} if diagnosis else None)  # its `try` is a command for this machine
    found += [f"data: {w}" for w in (facts.metrics.get("data") or {}).get("warnings") or []]
    return ["## Warnings and diagnosis\n\n" + "\n".join(f"- {line}" for line in found)] if found else []


def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
