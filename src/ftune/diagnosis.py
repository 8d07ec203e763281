"""A plain word when a finished run learned nothing or little, with the likely cause read from the run itself.

Pure functions over what the run directory holds (metrics, the logged training loss, the config), so the
report and `ftune runs list` can say it again from the files alone.
"""

from __future__ import annotations

import math
import statistics
from typing import NamedTuple

from ftune.recipe import FEW_PER_CLASS

FLAT = 0.05   # a loss that fell by less than 5% from its start did not move
ROSE = 1.5    # one that ended 50% above its start: the steps were too large
TAIL = 0.1    # the last evaluation's fall was at least 10% of the whole fall: the curve had not levelled off
POINTS = 3    # a curve of fewer points than this says nothing about its shape (one logged batch loss is noise)
FEW_STEPS = 20  # fewer optimizer steps than this are too few to learn much; a retry aims at about twice that
# The highest learning rate a suggestion goes to, per method (config["method"]["name"]): well above the usual peaks
# (full 1e-5-5e-5, LoRA 2e-4-1e-3, prompt tuning 3e-2), and beyond them a run diverges more often than it learns.
# A method not listed gets full fine-tuning's, the most careful.
MAX_RATE = {"full": 2e-4, "freeze": 3e-3, "lora": 3e-3, "dora": 3e-3, "prompt-tuning": 0.1}
CHOSEN_FELL = 0.01  # preference tuning: the chosen answers' log-probability fell by more than this a token
BASELINE_NAMES = {"tfidf": "TF-IDF baseline", "most_frequent_tag": "most-frequent-tag baseline"}


def baseline_name(model: str, metrics: dict) -> str:
    """A baseline as its task named it in metrics.json, e.g. "the training mean" baseline."""
    named = ((metrics.get("scores") or {}).get("titles") or {}).get(model, model.replace("_", " "))
    return f"{named} baseline"


def baseline_scores(test: dict, key: str) -> dict[str, float]:
    """Each simple baseline's number under `key` in a run's test table (a metric, or "validation": the score it was
    chosen by); the fine-tuned model, the untrained base and a distillation teacher are not baselines."""
    return {model: row[key] for model, row in test.items() if model not in ("finetuned", "base_model", "teacher")
            and isinstance(row, dict) and isinstance(row.get(key), (int, float))}


def headline(metrics: dict) -> tuple[str, bool]:
    """The run's headline score and whether lower is better, as its task recorded them in metrics.json (runs
    written before that: accuracy, or loss for a decoder)."""
    scores = metrics.get("scores")
    if scores:
        return scores["metrics"][0], scores["metrics"][0] in scores["lower_is_better"]
    accuracy = "accuracy" in (metrics["test"].get("finetuned") or {})
    return ("accuracy", False) if accuracy else ("loss", True)


def shown(lower: bool):
    """How a headline score is written: a loss-like score (lower is better) to 4 decimals, else as a percentage."""
    return (lambda v: f"{v:.4f}") if lower else (lambda v: f"{v:.1%}")


def better_baseline(metrics: dict, run_dir: str, ships: bool = False) -> dict | None:
    """The baseline that beat the fine-tuned model on validation, the split both chose on (the baseline its settings,
    the run its checkpoint), as {"baseline", "line"}: the run's first summary line says it, so the user ships the
    better model (`ships`: the task's baseline exports, `ftune export RUN --baseline`). A run whose validation split
    was too small to choose by (it kept its last weights) is compared on the test split instead, and the line says
    so. None when the fine-tuned model is at least as good, or no baseline has a score to compare."""
    name, lower = headline(metrics)
    validation, test = metrics["validation"], metrics["test"]
    on_test = validation.get("kept") == "last"  # a handful of validation texts: a comparison there is chance
    split = "test" if on_test else "validation"
    ours = (test.get("finetuned") or {}).get(name) if on_test else \
        validation.get("best") if validation.get("metric") == name else None
    scored = baseline_scores(test, name if on_test else "validation")
    if ours is None or not scored:
        return None
    key = (min if lower else max)(scored, key=scored.get)
    if not ((scored[key] < ours) if lower else (scored[key] > ours)):
        return None
    show = shown(lower)
    titled = ((metrics.get("scores") or {}).get("titles") or {}).get(key, key.replace("_", " "))
    ship = f"ship it with `ftune export {run_dir} --baseline`" if ships else "a model to prefer over this run"
    why = " (the validation split is too small to compare on)" if on_test else ""
    return {"baseline": key, "line": f"the {titled} baseline beat the fine-tuned model on {split}{why} ({name} "
                                      f"{show(scored[key])} against {show(ours)}): it is the better model for this "
                                      f"data, {ship}; see the diagnosis for what to try"}


def diagnose(metrics: dict, history: list[dict], config: dict, run_dir: str) -> dict | None:
    """None for a run that learned; else {"verdict", "findings", "causes", "try"} in words a user acts on."""
    test = metrics["test"]
    finetuned, base = test["finetuned"], test.get("base_model") or {}
    findings = []
    name, lower = headline(metrics)
    value = finetuned[name]
    low, high = finetuned.get(f"{name}_ci95") or (value, value)
    worst, best = (high, low) if lower else (low, high)  # the interval's ends nearest to failing and to passing
    beats = (lambda a, b: a < b) if lower else (lambda a, b: a > b)  # noqa: E731
    show = shown(lower)
    interval = f" (95% CI {show(low)}–{show(high)})" if f"{name}_ci95" in finetuned else ""
    not_above_base = base.get(name) is not None and not beats(worst, base[name])
    if not_above_base:
        findings.append(f"test {name} {show(value)} is not clearly {'below' if lower else 'above'} the untrained base "
                        f"model's {show(base[name])}{interval}")
    for model, simple in baseline_scores(test, name).items():
        if beats(simple, best):
            findings.append(f"test {name} {show(value)} is {'above' if lower else 'below'} the "
                            f"{BASELINE_NAMES.get(model) or baseline_name(model, metrics)}'s {show(simple)}, "
                            f"beyond the 95% interval ({show(low)}–{show(high)})")
    curves = read_curves(metrics, history)
    flat = _flat(curves)
    if flat and (not_above_base or base.get(name) is None):  # a score clearly above the base's is read over the loss
        findings.append(f"the loss never fell: {flat}")
    both_fell = _both_answers_fell(finetuned)
    if both_fell:
        findings.append(both_fell)
    if not findings:
        return None
    causes, fix = _causes(metrics, curves, config, flat is not None)
    if both_fell:  # preference tuning's own failure, and its own fix, before the generic ones
        causes.insert(0, "the margin grew by pushing both answers down, a known failure of DPO on pairs whose "
                         "answers differ little: the model drifts from answers it should keep")
        fix = "--set task.loss=orpo" if (config.get("task") or {}).get("loss", "dpo") == "dpo" else fix
    # "Nothing" only for a model no better than its untrained self (or, without that score, a loss that never moved):
    # one clearly above its base but below a simple baseline learned, only less than the baseline did.
    nothing = not_above_base or (base.get(name) is None and flat is not None)
    retry = f"ftune train {run_dir}/config.yaml {fix} --output-dir {run_dir}-retry" if fix else None
    return {"verdict": "learned nothing" if nothing else "learned little", "findings": findings, "causes": causes,
            "try": retry}


def _both_answers_fell(finetuned: dict) -> str | None:
    """Preference tuning: the chosen answers' log-probability fell with the rejected ones' (it should hold or rise)."""
    chosen, rejected = finetuned.get("chosen_shift"), finetuned.get("rejected_shift")
    if chosen is None or rejected is None or chosen >= -CHOSEN_FELL or rejected >= chosen:
        return None
    return (f"the chosen answers' log-probability fell ({chosen:+.3f} a token) along with the rejected ones' "
            f"({rejected:+.3f}) on test")


class Curves(NamedTuple):
    """A run's loss curves. Each is read against itself only: a logged training loss is the mean of a few noisy
    batches, the validation loss one number over the whole split, and the two are not on one scale."""

    start: float | None                # the validation loss before training (step 0: the base model's)
    evaluations: list[float]           # the validation loss at each evaluation
    training: list[tuple[int, float]]  # (step, the mean training loss logged there)

    def validation(self) -> list[float]:
        return ([self.start] if self.start is not None else []) + self.evaluations


def read_curves(metrics: dict, history: list[dict]) -> Curves:
    """The loss curves from metrics.json (the evaluations) and the metrics.jsonl history (the logged training loss)."""
    validation = metrics["validation"]
    start = (validation.get("base_model") or {}).get("loss")
    evaluations = [h["validation"]["loss"] for h in validation.get("history") or []
                   if (h.get("validation") or {}).get("loss") is not None]
    training = [(e.get("step", i), e["loss"]) for i, e in enumerate(history)
                if e.get("type") == "train" and e.get("loss") is not None]
    return Curves(start, evaluations, training)


def _ends(values: list[float]) -> tuple[float, float, str]:
    """The mean of the first and of the last few values (a third, at most 5), and how they were taken."""
    k = max(1, min(5, len(values) // 3))
    said = "first → last logged" if k == 1 else f"mean of the first {k} logged → of the last {k}"
    return statistics.fmean(values[:k]), statistics.fmean(values[-k:]), said


def _flat(c: Curves) -> str | None:
    """The figures of a loss that fell on no curve long enough to read; None when one fell, or none can be read."""
    said = []
    validation = c.validation()
    if len(validation) >= POINTS:
        if min(validation[1:]) < (1 - FLAT) * validation[0]:
            return None
        began = "before training" if c.start is not None else "first evaluation"
        said.append(f"validation loss {validation[0]:.4f} → {validation[-1]:.4f} ({began} → last evaluation)")
    if len(c.training) >= POINTS:
        first, last, how = _ends([loss for _, loss in c.training])
        if last < (1 - FLAT) * first:
            return None
        said.append(f"training loss {first:.4f} → {last:.4f} ({how})")
    return ", ".join(said) or None


def _rose(c: Curves) -> str | None:
    """The figures of a loss that ended far above its start, from the training loss; without one, from a validation
    loss that never fell below its start (one that fell first and rose after is overfitting, not too large steps)."""
    if len(c.training) >= POINTS:
        first, last, how = _ends([loss for _, loss in c.training])
        return f"training loss {first:.4f} → {last:.4f}, {how}" if last > ROSE * first else None
    validation = c.validation()
    if len(validation) >= POINTS and validation[-1] > ROSE * validation[0] > 0 \
            and min(validation) >= (1 - FLAT) * validation[0]:
        return f"validation loss {validation[0]:.4f} → {validation[-1]:.4f}"
    return None


def _still_falling(c: Curves) -> str | None:
    """The figures of a loss still falling when training ended; None if it had levelled off or cannot be read.
    Read from the validation loss given two evaluations or more (the last the lowest, its fall at least TAIL of the
    whole fall), else from a line fitted to the last third of the logged training loss."""
    curve = c.validation()
    if len(c.evaluations) >= 2 and len(curve) >= POINTS:
        fall, last_fall = curve[0] - curve[-1], curve[-2] - curve[-1]
        if curve[-1] == min(curve) and last_fall > 0 and last_fall >= TAIL * fall:
            return f"validation loss {_arrows(c.evaluations)}, the lowest at the last evaluation"
        return None
    if len(c.training) < 3 * POINTS:
        return None
    steps, losses = zip(*c.training[-(len(c.training) // 3):])
    if len(set(steps)) < len(steps):  # a hand-edited history: no line to fit, and the diagnosis must not fail the run
        return None
    slope, intercept = statistics.linear_regression(steps, losses)
    fitted = [intercept + slope * s for s in steps]
    residual = math.sqrt(sum((y - f) ** 2 for y, f in zip(losses, fitted)) / (len(steps) - 2))
    error = residual / math.sqrt(sum((s - statistics.fmean(steps)) ** 2 for s in steps))
    # Clearly falling: more than two standard errors below a flat line, and by FLAT or more across the window.
    if slope + 2 * error < 0 and fitted[-1] < (1 - FLAT) * fitted[0]:
        return (f"training loss {fitted[0]:.4g} → {fitted[-1]:.4g} on a line fitted to the last {len(steps)} logged, "
                f"steps {steps[0]}–{steps[-1]}")
    return None


def _overfit(metrics: dict) -> bool:
    """Validation's headline score best at the first of three evaluations or more, and worse after."""
    history = metrics["validation"].get("history") or []
    metric = metrics["validation"].get("metric")
    values = [h["validation"][metric] for h in history if (h.get("validation") or {}).get(metric) is not None]
    if len(values) < 3:
        return False
    best = min(values) if metric in (metrics.get("scores") or {}).get("lower_is_better", ["loss"]) else max(values)
    return values[0] == best and values[-1] != best


def _arrows(values: list[float]) -> str:
    shown = [f"{v:.4g}" for v in values]
    return " → ".join(shown if len(shown) <= 5 else shown[:2] + ["…"] + shown[-2:])


def _raised_rate(lr: float, method: str) -> float | None:
    """3x the rate (a step: 10x overshoots from a rate that was nearly right), at most the method's MAX_RATE; None
    when the rate is there already."""
    ceiling = MAX_RATE.get(method, MAX_RATE["full"])
    return min(3 * lr, ceiling) if lr < ceiling else None


def _more_epochs(train: dict, ran: dict) -> str | None:
    """The override for about 3x the steps (2 * FEW_STEPS at least), within the schema's 1000 epochs."""
    before = train.get("epochs") or ran.get("epochs")  # a config without epochs: the number the run chose and ran
    if not before:
        return None
    epochs = min(1000, before * max(3, round(2 * FEW_STEPS / max(ran["steps"], 1))))
    return f"--set train.epochs={epochs}" if epochs > before else None


def _causes(metrics: dict, curves: Curves, config: dict, flat: bool) -> tuple[list[str], str | None]:
    """Likely causes, most likely first, and the overrides that would try the first one."""
    train, method = config["train"], config["method"]["name"]
    lr, steps = train["learning_rate"], metrics["train"]["steps"]
    causes, fixes = [], []
    more_steps = _more_epochs(train, metrics["train"])
    rose, overfit = _rose(curves), _overfit(metrics)
    falling = None if rose or flat or overfit else _still_falling(curves)
    named_steps = False  # a cause already blames the number of steps
    if rose:
        causes.append(f"the loss rose during training ({rose}): learning rate {lr:g} is too high for {method}")
        fixes.append(f"--set train.learning_rate={lr / 10:g}")  # a diverging run needs a large cut; lower is safe
    elif flat and (raised := _raised_rate(lr, method)):
        causes.append(f"the loss stayed flat from the start: learning rate {lr:g} is too low for {method}")
        fixes.append(f"--set train.learning_rate={raised:g}")
    elif flat:
        ceiling = MAX_RATE.get(method, MAX_RATE["full"])
        causes.append(f"the loss stayed flat from the start at learning rate {lr:g}, at or above the highest rate "
                      f"ftune suggests for {method} ({ceiling:g}): too few steps ({steps}), or a task too hard for "
                      f"this model")
        fixes.append(more_steps)
        named_steps = True
    if falling:
        causes.append(f"the loss was still falling at the last step ({falling}): too few steps ({steps}) or too small "
                      f"a learning rate")
        fixes.append(more_steps)
    elif steps < FEW_STEPS and not named_steps:
        warmup = steps * train["warmup_ratio"]
        causes.append(f"only {steps} optimizer steps ({warmup:.0f} of them warm-up): too few to learn much")
        fixes.append(more_steps)
    if overfit:
        metric = metrics["validation"]["metric"]
        causes.append(f"validation {metric} was best at the first evaluation and worse after: overfitting "
                      f"(fewer epochs, more data, or a smaller learning rate)")
        fixes.append("--set train.early_stopping_patience=1")
    counts = ((metrics.get("data") or {}).get("classes") or {}).get("train") or {}
    if counts and min(counts.values()) <= FEW_PER_CLASS:  # a few texts a label: fewer than anything above can fix
        fewest = min(counts, key=counts.get)
        causes.append(f"few labeled texts: {counts[fewest]} in training for '{fewest}' "
                      f"({min(counts.values())}–{max(counts.values())} a label), too few for this model to learn the "
                      f"task reliably: label more texts")
    if not causes:
        causes.append("the task may be hard for this model, or the labels noisy: compare with the baseline's mistakes "
                      "in the report, and try `ftune data validate`")
    fixes = [f for f in fixes if f]
    return causes, fixes[0] if fixes else None


def lines(diagnosis: dict | None) -> list[str]:
    """The diagnosis as the lines the terminal and the report show."""
    if not diagnosis:
        return []
    out = [f"this run {diagnosis['verdict']}: " + "; ".join(diagnosis["findings"])]
    out += [f"likely cause: {c}" for c in diagnosis["causes"]]
    if diagnosis["try"]:
        out.append(f"try: {diagnosis['try']}")
    return out
