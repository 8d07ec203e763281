"""Several seeds, one answer: one run per training seed on one fixed split, and a summary across them.

    OUTPUT/seed-0, seed-1, ...   ordinary run directories (train.seed = 0, 1, ...; data.split_seed fixed)
    OUTPUT/summary.json          per test metric: mean, sd, min, max, 95% t-interval, each seed's value
    OUTPUT/summary.md, .html     the same as a report page

The split stays at the config's seed (data.split_seed, else train.seed) so the spread measures training
randomness (head initialization, batch order, dropout), not which rows happened to land in the test split.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftune import recipe
from ftune.config import Config, dotted, validate
from ftune.errors import ConfigError, RunError, TrainingStopped
from ftune.integrity import read_yaml_file, write_text
from ftune.progress import TrainProgress
from ftune.report import ROWS, Section, to_html, to_markdown
from ftune.schema import MAX_SEED
from ftune.run import RUN_FILE, Run, check_run_dir, default_output_dir, read_json, write_json

SUMMARY = "summary.json"
ORDER = ("accuracy", "macro_f1", "entity_f1", "loss", "perplexity")  # runs before metrics.json named the task's
NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "entity_f1": "entity F1", "loss": "loss",
         "perplexity": "perplexity"}
# Where each score can lie: a t-interval over a few scattered seeds can reach past it (accuracy 1.2), and is cut there.
RANGES = {"accuracy": (0.0, 1.0), "macro_f1": (0.0, 1.0), "entity_f1": (0.0, 1.0), "loss": (0.0, math.inf),
          "perplexity": (1.0, math.inf)}


@dataclass
class Stats:
    """One metric across seeds; `values` maps each seed to its run's score."""

    mean: float
    sd: float
    min: float
    max: float
    ci95: tuple[float, float]
    values: dict[int, float]

    def to_json(self) -> dict:
        return {"mean": self.mean, "sd": self.sd, "min": self.min, "max": self.max, "ci95": list(self.ci95),
                "values": {str(s): v for s, v in self.values.items()}}


@dataclass
class SeedSummary:
    """What `train_seeds` returns and writes to OUTPUT/summary.json."""

    path: Path
    seeds: list[int]
    split_seed: int
    finetuned: dict[str, Stats]
    baselines: dict[str, dict[str, Stats]]
    runs: list[Run] = field(repr=False)

    def to_json(self) -> dict:
        first = self.runs[0]
        n = len(self.seeds)
        return {"seeds": self.seeds, "split_seed": self.split_seed, "task": first.config.task.name,
                "model": first.config.model.name, "method": first.config.method.name, "data": first.config.data.train,
                "test_examples": first.metrics["test"]["finetuned"].get("n"),
                "runs": {str(s): r.path.name for s, r in zip(self.seeds, self.runs)},
                "interval": {"level": 0.95, "kind": "t-interval over the seeds' scores", "t": t_quantile(n),
                             "half_width_in_sd": t_quantile(n) / math.sqrt(n)},
                "finetuned": {k: s.to_json() for k, s in self.finetuned.items()},
                "diagnosis": {str(s): _verdict(r.metrics) for s, r in zip(self.seeds, self.runs) if _verdict(r.metrics)},
                "baselines": {name: {k: s.to_json() for k, s in scores.items()}
                              for name, scores in self.baselines.items()}}


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; anything else is one ConfigError saying what to pass."""
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise ConfigError("--seeds is empty; pass two or more seeds separated by commas, e.g. --seeds 0,1,2")
    for part in parts:
        if not part.isascii() or not part.isdigit() or len(part) > len(str(MAX_SEED)):
            raise ConfigError(f"--seeds: {part[:30]!r} is not a seed (a whole number from 0 to {MAX_SEED}); e.g. "
                              f"--seeds 0,1,2")
    return check_seeds([int(p) for p in parts])


def check_seeds(seeds: list[int]) -> list[int]:
    """The seeds as given, refused when a spread cannot be measured from them."""
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:  # the same seed twice is the same run twice: it would shrink the spread for nothing
        raise ConfigError(f"--seeds: seed {repeated[0]} is given twice; list each seed once, e.g. --seeds 0,1,2")
    bad = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= MAX_SEED]
    if bad:
        raise ConfigError(f"--seeds: seeds are whole numbers from 0 to {MAX_SEED} (2**32-1, what numpy takes); got "
                          f"{str(bad[0])[:30]}; e.g. --seeds 0,1,2")
    if len(seeds) < 2:
        raise ConfigError(f"--seeds needs at least two seeds to measure a spread (got {len(seeds)}); e.g. "
                          f"--seeds 0,1,2, or train one run with --set train.seed=N")
    return list(seeds)


def train_seeds(config: Config, seeds: list[int], resume: bool = False, quiet: bool = False) -> SeedSummary:
    """Train one run per seed into OUTPUT/seed-N on the config's split, then write and return the summary.

    `resume` continues unfinished seeds and skips complete ones (after checking they used the same settings)."""
    from ftune.training import train

    seeds = check_seeds(seeds)
    if not getattr(config.train, "evaluate_test", True):  # a tuning trial's setting: no test scores to summarize
        raise ConfigError("--seeds summarizes each seed's test scores; drop train.evaluate_test=false")
    root = _seeds_folder(config, resume)
    split_seed = config.train.seed if config.data.split_seed is None else config.data.split_seed
    configs = [seed_config(config, root, seed, split_seed) for seed in seeds]
    plan = [_plan(cfg) for cfg in configs]  # every seed's folder checked before the first one trains
    progress = TrainProgress(quiet)
    runs = []
    for i, (seed, cfg, step) in enumerate(zip(seeds, configs, plan)):
        run_dir = Path(cfg.output_dir)
        if step == "complete":
            progress.note(f"seed {seed}: {run_dir} is complete, skipped")
            runs.append(Run(run_dir, trust_remote_code=cfg.model.trust_remote_code))
            continue
        progress.note(f"seed {seed} ({i + 1} of {len(seeds)}): {run_dir}")
        try:
            runs.append(train(cfg, resume=step == "resume", quiet=quiet))
        except TrainingStopped as e:  # the run's own advice would resume that one seed, not the others
            raise TrainingStopped(f"seed {seed} stopped, its checkpoint kept in {run_dir}; continue all seeds with the "
                                  f"same command plus `--resume --output-dir {shlex.quote(str(root))}`", e.exit_code) from None
    summary = summarize(root, seeds, runs, split_seed)
    write_summary(summary)
    return summary


def seed_config(config: Config, root: Path, seed: int, split_seed: int) -> Config:
    """The config of one seed's run: its own folder and training seed, the split seed of them all."""
    cfg = config.model_copy(update={"output_dir": str(root / f"seed-{seed}")}, deep=True)  # keeps the lr's source
    cfg.train.seed = seed
    cfg.data.split_seed = split_seed
    return cfg


def _seeds_folder(config: Config, resume: bool) -> Path:
    if resume and not config.output_dir:
        raise RunError("--resume with --seeds needs the seeds folder to continue: pass --output-dir DIR")
    root = Path(config.output_dir) if config.output_dir else default_output_dir(config)
    if root.exists() and not root.is_dir():
        raise RunError(f"output_dir {root} is a file, not a folder; choose another --output-dir")
    if resume and not any(root.glob("seed-*")):
        raise RunError(f"{root} holds no seed runs to resume; drop --resume to start them there")
    if not resume and root.exists() and any(root.iterdir()):
        raise RunError(f"{root} already holds files; pass --resume to continue its seeds or choose another "
                       f"--output-dir")
    return root


def _plan(cfg: Config) -> str:
    """What one seed's folder needs: "new" (train), "resume" (continue) or "complete" (skip); a folder that cannot
    be any of these, or that ran with other settings, is an error here."""
    run_dir = Path(cfg.output_dir)
    if not (run_dir / RUN_FILE).is_file():
        check_run_dir(cfg, resume=False)
        return "new"
    if read_json(run_dir / RUN_FILE).get("status") != "complete":
        check_run_dir(cfg, resume=True)
        return "resume"
    _check_same_settings(run_dir, cfg)
    return "complete"


def _check_same_settings(run_dir: Path, cfg: Config) -> None:
    """A finished seed counts only if it ran with the settings asked for now: else its scores do not belong here."""
    saved = validate(read_yaml_file(run_dir / "config.yaml", "train that seed again"), str(run_dir / "config.yaml"))
    old, new = dotted(saved.model_dump()), dotted(cfg.model_dump())
    old.pop("output_dir"), new.pop("output_dir")  # the same folder, however the path was written
    for key in old:
        if key.startswith(recipe.left_to_data(cfg)):  # unset now: the seed's run chose it from the same data
            continue
        if old[key] != new.get(key):
            raise RunError(f"{run_dir}: {key} is {new.get(key)!r} now but the finished seed used {old[key]!r}; "
                           f"resume with the same settings, or choose another --output-dir")


def t_quantile(n: int) -> float:
    """The 97.5% point of Student's t with n - 1 degrees of freedom (4.30 for 3 seeds, 2.78 for 5)."""
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def stats(values: dict[int, float], bounds: tuple[float, float] = (-math.inf, math.inf)) -> Stats:
    """Mean, sample sd, range and the 95% t-interval of the mean over seeds, cut to the score's `bounds`."""
    x = np.array(list(values.values()), dtype=np.float64)
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = t_quantile(len(x)) * sd / math.sqrt(len(x))
    low, high = max(mean - half, bounds[0]), min(mean + half, bounds[1])
    return Stats(mean, sd, float(x.min()), float(x.max()), (low, high), dict(values))


def summarize(root: Path, seeds: list[int], runs: list[Run], split_seed: int) -> SeedSummary:
    """Every score (a float) the fine-tuned model and each baseline got on the test split, across the seeds."""
    tests = [run.metrics["test"] for run in runs]
    order = (runs[0].metrics.get("scores") or {}).get("metrics") or ORDER  # the task's scores first, in its order

    def across(model: str) -> dict[str, Stats]:
        # counts (n, words) are ints; a baseline's own validation score and search time are not test scores
        keys = [k for k, v in tests[0][model].items() if isinstance(v, float) and k not in ("validation", "seconds")]
        keys = sorted(keys, key=lambda k: order.index(k) if k in order else len(order))
        return {k: stats({s: t[model][k] for s, t in zip(seeds, tests)}, RANGES.get(k, (-math.inf, math.inf)))
                for k in keys
                if all(isinstance((t.get(model) or {}).get(k), float) for t in tests)}

    baselines = {name: across(name) for name, scores in tests[0].items()
                 if name != "finetuned" and isinstance(scores, dict)}
    return SeedSummary(root, seeds, split_seed, across("finetuned"), baselines, runs)


def write_summary(summary: SeedSummary) -> None:
    """summary.json, then summary.md and summary.html from the same sections the run reports use."""
    write_json(summary.path / SUMMARY, summary.to_json())
    title, sections = summary_sections(summary)
    write_text(summary.path / "summary.md", to_markdown(title, sections))
    write_text(summary.path / "summary.html", to_html(title, sections, summary.path))


def summary_table(summary: SeedSummary) -> tuple[list[str], list[tuple]]:
    """The fine-tuned model's scores across seeds: one row per metric, then each seed's value."""
    header = ["metric", "mean ± sd", "95% interval", "min – max", *(f"seed {s}" for s in summary.seeds)]
    rows = [(NAMES.get(k, k), f"{s.mean:.4f} ± {s.sd:.4f}", f"{s.ci95[0]:.4f} – {s.ci95[1]:.4f}",
             f"{s.min:.4f} – {s.max:.4f}", *(f"{s.values[seed]:.4f}" for seed in summary.seeds))
            for k, s in summary.finetuned.items()]
    return header, rows


def baseline_table(summary: SeedSummary) -> tuple[list[str], list[tuple]]:
    """Each baseline once: one value where every seed agrees, else mean ± sd (the base model's random head)."""
    titles = dict(ROWS)
    rows = [(titles.get(name, name), NAMES.get(k, k), f"{s.mean:.4f}" if s.min == s.max else
             f"{s.mean:.4f} ± {s.sd:.4f} ({s.min:.4f} – {s.max:.4f})")
            for name, scores in summary.baselines.items() for k, s in scores.items()]
    return ["baseline", "metric", "score"], rows


def interval_note(n: int) -> str:
    """How wide the t-interval is for `n` seeds, in standard deviations."""
    t = t_quantile(n)
    return (f"95% interval: mean ± t·sd/√n over the {n} seeds, t = {t:.2f} ({n - 1} degrees of freedom), so it "
            f"spans the mean ± {t / math.sqrt(n):.2f} sd; it is where the mean over many seeds would lie, not where "
            f"one more seed would land. More seeds narrow it: ± {t_quantile(5) / math.sqrt(5):.2f} sd with 5 seeds, "
            f"± {t_quantile(10) / math.sqrt(10):.2f} sd with 10. Cut to the score's range (accuracy 0–1).")


def diagnosis_lines(summary: SeedSummary) -> list[str]:
    """A line per seed whose run learned nothing or little: its score is in the mean, and may be why sd is large."""
    return [f"seed {s} {r.metrics['diagnosis']['verdict']} ({r.path / 'report.html'}); the mean includes it"
            for s, r in zip(summary.seeds, summary.runs) if r.metrics.get("diagnosis")]


def summary_sections(summary: SeedSummary) -> tuple[str, list[Section]]:
    first = summary.runs[0].config
    n = len(summary.seeds)
    title = f"ftune seeds {summary.path.name}: {first.data.train}, {first.method.name}, {first.model.name}, {n} seeds"
    header, rows = summary_table(summary)
    examples = summary.runs[0].metrics["test"]["finetuned"].get("n")
    sections = [Section(f"Fine-tuned model on the test split ({examples} examples), across {n} seeds",
                        f"Each seed is one run with train.seed = that seed, all on the split of data.split_seed = "
                        f"{summary.split_seed}: the spread is training randomness (head initialization, batch "
                        f"order, dropout), not split luck. sd is the sample standard deviation. "
                        f"{interval_note(n)}", header, rows)]
    if summary.baselines:
        b_header, b_rows = baseline_table(summary)
        sections.append(Section("Baselines, on the same test split", "TF-IDF does not depend on the training seed; "
                                "the base model's untrained head is drawn from it, so its score can differ between "
                                "seeds (then shown as mean ± sd and range).", b_header, b_rows))
    sections.append(Section("Runs", "", ["seed", "run directory", "best validation", "steps", "train s", "diagnosis"],
                            [(s, str(r.path), _best(r.metrics), r.metrics["train"]["steps"],
                              f"{r.metrics['train']['seconds']:.1f}", _verdict(r.metrics))
                             for s, r in zip(summary.seeds, summary.runs)]))
    return title, sections


def _verdict(metrics: dict) -> str:
    return (metrics.get("diagnosis") or {}).get("verdict", "")


def _best(metrics: dict) -> str:
    validation = metrics["validation"]
    return "" if validation["best"] is None else f"{validation['metric']} {validation['best']:.4f}"


class Spread(float):
    """A mean over seeds that keeps its sd: `ftune runs compare` computes with it as a number, shows mean ± sd."""

    sd: float

    def __new__(cls, mean: float, sd: float) -> "Spread":
        value = super().__new__(cls, mean)
        value.sd = sd
        return value


@dataclass
class SeedsEntry:
    """A seeds folder as `ftune runs compare` reads a run: a path, the (shared) config, and mean metrics."""

    path: Path
    config: Config
    metrics: dict


def compared_entry(path: Path) -> Run | SeedsEntry:
    """A run directory as a Run; a finished seeds folder (OUTPUT of --seeds) as one entry of means over its seeds."""
    path = Path(path)
    seed_runs = any(path.glob(f"seed-*/{RUN_FILE}"))
    if (path / RUN_FILE).is_file() or not (seed_runs or (path / SUMMARY).is_file()):
        return Run(path)
    if not (path / SUMMARY).is_file():
        raise RunError(f"{path} holds seed runs but no {SUMMARY} yet; finish them with the same `ftune train --seeds` "
                       f"command plus --resume --output-dir {path}")
    summary = read_json(path / SUMMARY)
    seeds = summary.get("seeds") if isinstance(summary, dict) else None
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise RunError(f"{path / SUMMARY} is damaged; write it again with the same `ftune train --seeds` command plus "
                       f"--resume --output-dir {path}")
    runs = [Run(path / f"seed-{s}") for s in seeds]  # each must still be complete: the error names the one that is not
    return SeedsEntry(path, runs[0].config, mean_metrics([run.metrics for run in runs]))


def mean_metrics(trees: list) -> object:
    """metrics.json of several seeds as one: numbers that differ become their Spread, what agrees stays as it is,
    anything else that differs (intervals, lists) is left out (None)."""
    first = trees[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(t, dict) and k in t for t in trees)]
        return {k: mean_metrics([t[k] for t in trees]) for k in keys}
    if all(t == first for t in trees):
        return first
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in trees):
        return Spread(float(np.mean(trees)), float(np.std(trees, ddof=1)))
    return None
