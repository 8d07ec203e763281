"""`ftune train --budget 20m`: within a time budget, try a few recipes on validation by successive halving, train the
winner at the full length, and report every candidate.

    OUTPUT/candidates/r0-1-full/   a candidate's run in rung 0 (train.evaluate_test false, tracking none)
    OUTPUT/final/                  the winner at the full length: a complete run, the test split scored
    OUTPUT/seed-1, seed-2          the winner again at other training seeds, when the budget has time left
    OUTPUT/budget.json             the plan, every candidate's recipe, per rung its steps, score, seconds, kept;
                                   the spread of the winner's test score over seeds

Successive halving (Jamieson & Talwalkar 2016): rung 0 trains every candidate for a short run, the best 1/ETA go on
to a rung ETA times as long, and so on until one is left; that one trains at the full length. The candidates are scored
on validation only, so choosing never reads the test split; only the final run scores it.

The budget: rung 0's first candidate is timed; every later run's cost is estimated from it in proportion to its steps
(the fixed cost of a run, loading the model and evaluating, then counts as if it grew with the steps, so the
estimate errs long). From that estimate: how many candidates fit, and before each later rung whether it and the final
run still fit; when not, the final run starts with the best so far.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ftune import recipe
from ftune.config import Config, default_learning_rate
from ftune.diagnosis import baseline_scores
from ftune.errors import ConfigError, RunError, TrainingStopped
from ftune.run import default_output_dir, write_json
from ftune.tasks import TASKS
from ftune.tune import with_params

ETA = 2  # keep the best half: with 4-5 candidates that is two rungs (4 -> 2 -> 1), so the last two get a second,
# twice-as-long look before one is chosen; ETA 3 would choose after one quarter-length rung (4 -> 1)
MAX_CANDIDATES = 5
SPREAD_SEEDS = 2  # more seeds of the winner when the budget has time left: three scores show how far a run swings
RATE_FACTOR = 3  # the grid's best rate was 3-4x the method's default for full and lora (docs/tuning.md)
OTHER_METHODS = ("lora", "freeze", "full")  # tried beside the config's own, in this order, while the list is short
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_budget(text: str) -> float:
    """'90s', '20m', '1.5h' or plain seconds ('600') -> seconds; anything else is one ConfigError saying what to
    pass."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([smh]?)", text.strip().lower())
    seconds = float(match[1]) * UNITS[match[2]] if match else math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"--budget {text[:30]!r} is not a time; pass seconds or a number with s, m or h, e.g. "
                          f"--budget 90s, --budget 20m, --budget 1.5h")
    return seconds


def check_flags(resume: bool, seeds: bool, processes: int) -> None:
    """Refuse the `train` flags a budgeted search cannot combine with, in one line each."""
    if resume:
        raise ConfigError("--budget starts a new search and cannot resume one; drop --resume (to continue an "
                          "interrupted final run: ftune train OUTPUT/final --resume)")
    if seeds:
        raise ConfigError("--budget and --seeds: use one at a time; search with --budget, then train the winner over "
                          "seeds with ftune train OUTPUT/final/config.yaml --seeds 0,1,2")
    if processes > 1:
        raise ConfigError("--budget trains its candidates one after another in one process; drop --nproc/--nnodes")


def check_config(config: Config) -> None:
    """Refuse a config the search cannot serve: a decoder's task (its runs take hours where an encoder's take minutes,
    and method freeze has nothing to train in a decoder whose output layer is its embeddings)."""
    if TASKS[config.task.name].decoder:
        raise ConfigError(f"--budget searches recipes for encoder tasks; task {config.task.name} trains a decoder, "
                          f"where a search of several runs costs hours and method freeze often has nothing to train: "
                          f"train it without --budget")


# --- the candidates -----------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    index: int
    method: dict[str, Any]  # the config's method section
    learning_rate: float | str  # a number, or "auto" where the config says so
    why: str

    @property
    def name(self) -> str:
        rate = self.learning_rate if isinstance(self.learning_rate, str) else \
            f"{self.learning_rate:.1e}".replace("e-0", "e-")  # 5.0e-5, as the docs write rates
        return f"{self.method['name']}, lr {rate}"


def candidates(config: Config) -> list[Candidate]:
    """A short list of recipes that differ in method and learning rate, the config as given first (the plain run,
    and the one timed): its method at its default rate and at RATE_FACTOR times that (the default is a good start,
    often too low: docs/tuning.md), then lora, freeze and full at their own defaults while the list has fewer than
    MAX_CANDIDATES. A method the task or config rules out (its `check`, met when the config is validated) is left
    out, and so is a recipe already listed."""
    task, own = config.task.name, config.method.name
    own_section = config.method.model_dump(mode="json")  # its options (LoRA's r, ...) stay with it
    default = default_learning_rate(task, own)
    wanted = [(own_section, config.train.learning_rate, "the config as given"),
              (own_section, default, f"{own} at its default rate"),
              (own_section, default * RATE_FACTOR, f"{own} at {RATE_FACTOR}x its default rate: the default is often low")]
    wanted += [({"name": m}, default_learning_rate(task, m), f"{m} at its default rate: another method")
               for m in OTHER_METHODS if m != own]
    found: list[Candidate] = []
    for method, rate, why in wanted:
        if len(found) == MAX_CANDIDATES or any((c.method["name"], c.learning_rate) == (method["name"], rate)
                                               for c in found):
            continue
        try:
            with_params(config, {"method": method, "train.learning_rate": rate}, where="--budget")
        except ConfigError:  # e.g. prompt tuning on a per-token task, an adapter on a cut distillation student
            continue
        found.append(Candidate(len(found), method, rate, why))
    return found


# --- the schedule ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rung:
    index: int
    candidates: int  # how many train in this rung
    keep: int  # how many of them go on
    fraction: float  # of the full run's steps


def halving(candidates: int, eta: int = ETA, rungs: int | None = None) -> list[Rung]:
    """The rungs of successive halving over `candidates`: each keeps the best 1/eta (at least one) and runs eta times
    longer than the one before; the last rung runs 1/eta of the full length (the winner's final run is the full
    length). `rungs` fixes the number the lengths count back from, so a shorter list keeps the longer list's lengths."""
    counts, n = [], candidates
    while n > 1:
        counts.append(n)
        n = max(1, n // eta)
    top = len(counts) if rungs is None else rungs
    return [Rung(r, n, max(1, n // eta), float(eta) ** -(top - r)) for r, n in enumerate(counts)]


@dataclass(frozen=True)
class Length:
    epochs: int
    texts: int  # training texts used (data.max_train_samples when fewer than the split has)
    steps: int


def rung_length(fraction: float, full_epochs: int, texts: int, train) -> Length:
    """A run of about `fraction` of the full run's steps. Epochs are whole numbers, so: whole passes over every text
    (rounded to the nearest) where that is at least one pass, else one pass over that share of the texts (the same
    subsample for every candidate). Seeing every text, fewer times, is closer to the full run than seeing a few
    often; only a large split, whose full run is a few passes, gets the subsample."""
    passes = fraction * full_epochs
    epochs, used = (max(1, math.floor(passes + 0.5)), texts) if passes >= 1 else (1, max(1, math.ceil(passes * texts)))
    return Length(epochs, used, epochs * recipe.steps_per_epoch(used, train))


@dataclass(frozen=True)
class Plan:
    candidates: int  # how many rung 0 trains; 0: no search, the config as given trains at full length
    rungs: list[Rung]
    run_s: float  # the estimated seconds of one full run
    total_s: float  # ...of the search and the final run together
    note: str  # the decision in words


def plan(budget_s: float, seconds_per_step: float, full_steps: int, rung_steps: list[int], candidates: int,
         eta: int = ETA) -> Plan:
    """The most of the search that fits `budget_s`, from the time of one step: every candidate where it fits, else
    the first few (at least two), else no search. `rung_steps[r]`: the steps of one run in rung r of the whole
    search's schedule (the first candidates keep those lengths)."""
    run_s = seconds_per_step * full_steps

    def total(n: int) -> float:
        return run_s + seconds_per_step * sum(r.candidates * rung_steps[r.index]
                                              for r in halving(n, eta, len(rung_steps)))

    if run_s > budget_s:
        return Plan(0, [], run_s, run_s, f"a budget of {budget_s:.0f} s is less than the ~{run_s:.0f} s one run "
                                         f"needs here; training the config as given, without a search")
    fits = [n for n in range(candidates, 1, -1) if total(n) <= budget_s]
    if not fits:
        return Plan(0, [], run_s, run_s, f"a budget of {budget_s:.0f} s fits one run (~{run_s:.0f} s) but not a "
                                         f"search of 2 candidates and the final run (~{total(2):.0f} s); training "
                                         f"the config as given, without a search")
    n = fits[0]
    rungs = halving(n, eta, len(rung_steps))
    shape = " -> ".join(f"{r.candidates} x {rung_steps[r.index]} steps" for r in rungs)
    left_out = f" (the budget fits {n} of the {candidates} candidates)" if n < candidates else ""
    return Plan(n, rungs, run_s, total(n), f"plan: {shape}, then the winner at {full_steps} steps: ~{total(n):.0f} s "
                                           f"of the {budget_s:.0f} s budget{left_out}")


# --- the search -----------------------------------------------------------------------------------------------------
@dataclass
class Trial:
    """One candidate's run in one rung (rung None: never trained, the budget left it out)."""

    candidate: int
    rung: int | None
    epochs: int = 0
    texts: int = 0
    steps: int = 0
    seconds: float = 0.0
    validation: float | None = None
    outcome: str = "not trained"  # kept, dropped, failed, not trained
    run_dir: str = ""
    note: str = ""


@dataclass
class BudgetResult:
    path: Path
    budget_s: float
    metric: str
    lower_is_better: bool
    candidates: list[Candidate]
    trials: list[Trial] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    winner: int | None = None
    final: Any = None  # the final Run
    final_seconds: float = 0.0
    elapsed_s: float = 0.0
    seconds_per_step: float | None = None
    full_steps: int = 0
    spread: dict | None = None  # the winner's test score per seed, when the budget had time for more seeds


def search(config: Config, budget_s: float, say: Callable[[str], None] = lambda line: None,
           tell: Callable[[str], None] | None = None, quiet: bool = False) -> BudgetResult:
    """Search the candidates within `budget_s` seconds (everything counted: candidates and the final run), train the
    winner in OUTPUT/final and write OUTPUT/budget.json. `say` receives a line per candidate's run, `tell` one per
    decision (the plan, a rung skipped, the final run; default: `say`), `quiet` silences the final run's progress."""
    from ftune.training import preflight, train

    start = time.monotonic()
    check_config(config)
    root = _folder(config)
    splits = preflight(config, resume=False, check_output=False)  # bad data or model: one error now, not per candidate
    root.mkdir(parents=True, exist_ok=True)
    task = TASKS[config.task.name]
    texts = len(splits.train)
    method = recipe.choose_method(config, texts, len(splits.labels))
    if method:  # few texts a label: the data's method is the config "as given", the others are still tried beside it
        config = with_params(config, {"method": {"name": method[0]},
                                      "train.learning_rate": recipe.rate_with(config, method[0])}, where="--budget")
    full_epochs = config.train.epochs or recipe.choose_epochs(texts, config.train)[0]
    full = rung_length(1.0, full_epochs, texts, config.train)
    listed = candidates(config)
    schedule = halving(len(listed))
    lengths = [rung_length(r.fraction, full_epochs, texts, config.train) for r in schedule]
    metric = config.train.metric
    result = BudgetResult(root, budget_s, metric, metric in task.lower_is_better, listed, full_steps=full.steps)

    def decide(line: str) -> None:
        result.notes.append(line)
        (tell or say)(line)

    if method:
        decide(f"method {method[0]}: chosen from the data ({method[1]})")

    def run(candidate: Candidate, rung: int, length: Length) -> Trial:
        trial = Trial(candidate.index, rung, length.epochs, length.texts, length.steps)
        folder = root / "candidates" / f"r{rung}-{candidate.index}-{candidate.method['name']}"
        trial.run_dir = str(folder)
        settings = {"method": candidate.method, "train.learning_rate": candidate.learning_rate,
                    "train.epochs": length.epochs, "tracking.backend": "none"}
        if length.texts < texts:
            settings["data.max_train_samples"] = length.texts
        began = time.monotonic()
        try:
            done = train(with_params(config, settings, where="--budget", evaluate_test=False,
                                     output_dir=str(folder)), quiet=True)
        except (ConfigError, RunError) as e:  # this recipe's trouble (diverged, out of memory): the search goes on
            trial.seconds, trial.outcome, trial.note = time.monotonic() - began, "failed", str(e)[:300]
            say(f"rung {rung}, {candidate.name}: failed: {e}")
            return trial
        except TrainingStopped as e:
            raise TrainingStopped(f"stopped during the search ({folder}); a search is not resumed: run the command "
                                  f"again with another --output-dir", e.exit_code) from None
        trial.seconds = time.monotonic() - began
        trial.steps, trial.validation = done.metrics["train"]["steps"], done.metrics["validation"]["best"]
        say(f"rung {rung}, {candidate.name}: {trial.steps} steps, validation {metric} {trial.validation:.4f} "
            f"({trial.seconds:.0f} s)")
        return trial

    alive = [c.index for c in listed]  # candidates still in, best first after each rung
    if not recipe.chooses_checkpoint(len(splits.validation)):  # a choice made by a text or two is made by chance
        alive = [0]
        decide(f"the validation split holds {len(splits.validation)} texts, too few to choose between recipes on "
               f"({recipe.MIN_VALIDATION} or more; give a larger one with --validation-data): training the config as "
               f"given, without a search")
    chosen: Plan | None = None
    for rung in schedule:
        if len(alive) < 2:
            break
        if result.seconds_per_step is not None:  # rung 0 is planned after its first run; later rungs checked here
            rung_s = result.seconds_per_step * (len(alive) * lengths[rung.index].steps + full.steps)
            left = budget_s - (time.monotonic() - start)
            if rung_s > left:
                decide(f"rung {rung.index} and the final run need ~{rung_s:.0f} s, {left:.0f} s of the budget is "
                       f"left: the final run starts with the best so far")
                break
        ran: list[Trial] = []
        for index in alive:
            if chosen is not None and rung.index == 0 and index >= max(chosen.candidates, 1):
                result.trials.append(Trial(index, None, note="the budget left it out"))
                continue
            trial = run(listed[index], rung.index, lengths[rung.index])
            ran.append(trial)
            result.trials.append(trial)
            _write(result)
            if trial.outcome != "failed":  # the slowest step yet: a later run's estimate should not fall short
                result.seconds_per_step = max(result.seconds_per_step or 0.0, trial.seconds / max(trial.steps, 1))
            if chosen is None and result.seconds_per_step is not None:
                chosen = plan(budget_s, result.seconds_per_step, full.steps, [x.steps for x in lengths], len(listed))
                decide(chosen.note)
        if not any(t.outcome != "failed" for t in ran):
            _write(result)
            if rung.index == 0:
                first = next((t.note for t in ran if t.note), "")
                raise RunError(f"every candidate of rung 0 failed (the first: {first}); see {root / 'budget.json'}")
            decide(f"every run of rung {rung.index} failed: the final run starts with the best of rung "
                   f"{rung.index - 1}")
            break
        alive = _keep(ran, 1 if chosen and chosen.candidates == 0 else max(1, len(ran) // ETA),
                      result.lower_is_better)
        if chosen is not None and chosen.candidates == 0:
            break
    result.winner = alive[0]
    winner = listed[result.winner]
    scored = ", the test split scored" if config.train.evaluate_test else ""
    decide(f"final: {winner.name} ({winner.why}) at the full length, {full.steps} steps{scored}")
    _write(result)
    began = time.monotonic()
    result.final = train(_final_config(config, winner, root / "final"), quiet=quiet)
    result.final_seconds = time.monotonic() - began
    _more_seeds(result, config, winner, budget_s - (time.monotonic() - start), decide, quiet)
    result.elapsed_s = time.monotonic() - start
    _write(result)
    return result


def _more_seeds(result: BudgetResult, config: Config, winner: Candidate, left_s: float, decide: Callable,
                quiet: bool) -> None:
    """With time left for SPREAD_SEEDS more runs as long as the final one, the winner again at other training seeds
    (OUTPUT/seed-N, the same split): result.spread holds each seed's test score and whether the gain over the best
    baseline is inside their range. Fine-tuning scores swing with the seed, most on small data."""
    from ftune.training import train

    final = result.final.metrics.get("test", {})
    if "finetuned" not in final:
        return
    if left_s < SPREAD_SEEDS * result.final_seconds:
        decide(f"spread over seeds: not measured, {left_s:.0f} s of the budget is left and another seed takes "
               f"~{result.final_seconds:.0f} s; `ftune train --seeds 0,1,2` measures it")
        return
    name = result.metric if result.metric in final["finetuned"] else next(iter(final["finetuned"]))
    scores = {config.train.seed: final["finetuned"][name]}
    for seed in range(config.train.seed + 1, config.train.seed + 1 + SPREAD_SEEDS):
        settings = _final_config(config, winner, result.path / f"seed-{seed}")
        settings.train.seed, settings.data.split_seed = seed, config.data.split_seed or config.train.seed
        scores[seed] = train(settings, quiet=quiet).metrics["test"]["finetuned"][name]
    low, high = min(scores.values()), max(scores.values())
    baselines = baseline_scores(final, name)
    best = (min if result.lower_is_better else max)(baselines, key=baselines.get) if baselines else None
    inside = best is not None and low <= baselines[best] <= high
    result.spread = {"metric": name, "seeds": scores, "min": low, "max": high, "baseline": best,
                     "baseline_score": baselines.get(best), "baseline_inside": inside}
    versus = "" if best is None else (f"; the {best} baseline's {baselines[best]:.4f} is inside that range: the "
                                      f"gain over it is within run-to-run noise" if inside else
                                      f"; the {best} baseline's {baselines[best]:.4f} is outside it")
    decide(f"spread over {len(scores)} seeds: test {name} {low:.4f} to {high:.4f}{versus}")


def _keep(trials: list[Trial], keep: int, lower_is_better: bool) -> list[int]:
    """Mark the best `keep` of a rung's runs kept and the rest dropped (failed runs stay failed); the kept
    candidates, best first. Ties keep the list's order: the config as given first."""
    scored = [t for t in trials if t.outcome != "failed"]
    ranked = sorted(scored, key=lambda t: t.validation if lower_is_better else -t.validation)
    for n, trial in enumerate(ranked):
        trial.outcome = "kept" if n < keep else "dropped"
    return [t.candidate for t in ranked[:keep]]


def _final_config(config: Config, winner: Candidate, folder: Path) -> Config:
    """The winner's recipe on the config's own length, data, tracking and test setting, in OUTPUT/final."""
    if winner.index == 0:  # the config as given: a copy keeps where its learning rate came from
        return config.model_copy(update={"output_dir": str(folder)}, deep=True)
    return with_params(config, {"method": winner.method, "train.learning_rate": winner.learning_rate},
                       where="--budget", output_dir=str(folder))


def _folder(config: Config) -> Path:
    root = Path(config.output_dir) if config.output_dir else default_output_dir(config)
    if root.exists() and not root.is_dir():
        raise RunError(f"output_dir {root} is a file, not a folder; choose another --output-dir")
    if root.exists() and any(root.iterdir()):
        raise RunError(f"{root} already holds files; a search starts in a new folder: choose another --output-dir")
    return root


def _write(result: BudgetResult) -> None:
    """OUTPUT/budget.json, rewritten after every run, so a search cut short leaves its record so far."""
    final = result.final
    write_json(result.path / "budget.json", {
        "budget_s": result.budget_s, "elapsed_s": round(result.elapsed_s, 1), "eta": ETA,
        "metric": result.metric, "lower_is_better": result.lower_is_better,
        "seconds_per_step": result.seconds_per_step, "full_steps": result.full_steps, "notes": result.notes,
        "candidates": [{**asdict(c), "name": c.name} for c in result.candidates],
        "trials": [{**asdict(t), "seconds": round(t.seconds, 1), "kept": t.outcome == "kept"} for t in result.trials],
        "winner": result.winner, "spread": result.spread,
        "final": None if final is None else {"run_dir": str(final.path), "seconds": round(result.final_seconds, 1),
                                             "steps": final.metrics["train"]["steps"],
                                             "validation": final.metrics["validation"]["best"]},
    })


def table(result: BudgetResult) -> tuple[list[str], list[tuple]]:
    """Every candidate's runs, rung by rung, and the final run: a header and rows (* marks the winner)."""
    header = ["candidate", "rung", "steps", f"validation {result.metric}", "seconds", "outcome"]
    rows = []
    for t in sorted(result.trials, key=lambda t: (t.rung is None, t.rung or 0, t.candidate)):
        name = result.candidates[t.candidate].name + ("*" if t.candidate == result.winner else "")
        rows.append((name, "" if t.rung is None else t.rung, t.steps or "",
                     "" if t.validation is None else f"{t.validation:.4f}", f"{t.seconds:.0f}" if t.seconds else "",
                     t.outcome + (f": {t.note[:60]}" if t.note else "")))
    if result.final is not None:
        rows.append((f"final: {result.candidates[result.winner].name}", "full", result.final.metrics["train"]["steps"],
                     f"{result.final.metrics['validation']['best']:.4f}", f"{result.final_seconds:.0f}",
                     "test split scored" if "finetuned" in result.final.metrics.get("test", {}) else "test not scored"))
    return header, rows
