"""A plain word when a finished run learned nothing or little, with the likely cause read from the run itself.

Pure functions over what the run directory holds (metrics, the logged training loss, the config), so the
report and `ftune runs list` can say it again from the files alone.
"""

from __future__ import annotations

FLAT = 0.05  # the training loss fell by less than 5% from its first logged value: it did not move
ROSE = 1.5   # it ended 50% above where it started: the steps were too large
BASELINE_NAMES = {"tfidf": "TF-IDF baseline", "most_frequent_tag": "most-frequent-tag baseline"}


def baseline_name(model: str, metrics: dict) -> str:
    """A baseline as its task named it in metrics.json, e.g. "the training mean" baseline."""
    named = ((metrics.get("scores") or {}).get("titles") or {}).get(model, model.replace("_", " "))
    return f"{named} baseline"


def headline(metrics: dict) -> tuple[str, bool]:
    """The run's headline score and whether lower is better, as its task recorded them in metrics.json (runs
    written before that: accuracy, or loss for a decoder)."""
    scores = metrics.get("scores")
    if scores:
        return scores["metrics"][0], scores["metrics"][0] in scores["lower_is_better"]
    accuracy = "accuracy" in (metrics["test"].get("finetuned") or {})
    return ("accuracy", False) if accuracy else ("loss", True)


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
    show = (lambda v: f"{v:.4f}") if lower else (lambda v: f"{v:.1%}")  # noqa: E731
    interval = f" (95% CI {show(low)}–{show(high)})" if f"{name}_ci95" in finetuned else ""
    if base.get(name) is not None and not beats(worst, base[name]):
        findings.append(f"test {name} {show(value)} is not clearly {'below' if lower else 'above'} the untrained base "
                        f"model's {show(base[name])}{interval}")
    for model, scores in test.items():
        simple = (scores or {}).get(name) if model not in ("finetuned", "base_model", "teacher") else None
        if simple is not None and beats(simple, best):
            findings.append(f"test {name} {show(value)} is {'above' if lower else 'below'} the "
                            f"{BASELINE_NAMES.get(model) or baseline_name(model, metrics)}'s {show(simple)}, "
                            f"beyond the 95% interval ({show(low)}–{show(high)})")
    losses = _losses(metrics, history)
    # A distilled student's training loss has a soft-label term: not comparable with the step-0 validation loss.
    flat = len(losses) >= 2 and losses[-1] > (1 - FLAT) * losses[0] and not config.get("distill")
    if flat:
        findings.append(f"the training loss never fell below its starting value ({losses[0]:.4f} → {losses[-1]:.4f})")
    if not findings:
        return None
    causes, fix = _causes(metrics, losses, config)
    learned_nothing = flat or any("untrained base" in f or "base model's" in f for f in findings)
    return {"verdict": "learned nothing" if learned_nothing else "learned little", "findings": findings,
            "causes": causes, "try": f"ftune train {run_dir}/config.yaml {fix} --output-dir {run_dir}-retry" if fix else None}


def _losses(metrics: dict, history: list[dict]) -> list[float]:
    """The loss before training (the base model's validation loss: step 0), then each logged training loss."""
    start = (metrics["validation"].get("base_model") or {}).get("loss")
    logged = [e["loss"] for e in history if e.get("type") == "train" and e.get("loss") is not None]
    return ([start] if start is not None else []) + logged


def _causes(metrics: dict, losses: list[float], config: dict) -> tuple[list[str], str | None]:
    """Likely causes, most likely first, and the overrides that would try the first one."""
    train, method = config["train"], config["method"]["name"]
    lr, steps = train["learning_rate"], metrics["train"]["steps"]
    causes, fixes = [], []
    history = metrics["validation"].get("history") or []
    if len(losses) >= 2 and losses[-1] > ROSE * losses[0]:
        causes.append(f"the loss rose during training: learning rate {lr:g} is too high for {method}")
        fixes.append(f"--set train.learning_rate={lr / 10:g}")
    elif len(losses) >= 2 and losses[-1] > (1 - FLAT) * losses[0]:
        causes.append(f"the loss stayed flat from the start: learning rate {lr:g} is too low for {method}")
        fixes.append(f"--set train.learning_rate={lr * 10:g}")
    warmup = steps * train["warmup_ratio"]
    if steps < 20:
        causes.append(f"only {steps} optimizer steps ({warmup:.0f} of them warm-up): too few to learn much")
        fixes.append(f"--set train.epochs={min(1000, train['epochs'] * max(2, round(40 / max(steps, 1))))}")
    if len(history) >= 3:
        metric = metrics["validation"]["metric"]
        values = [h["validation"].get(metric) for h in history]
        best = min(values) if metric in (metrics.get("scores") or {}).get("lower_is_better", ["loss"]) else max(values)
        if values[0] == best and values[-1] != best:
            causes.append(f"validation {metric} was best at the first evaluation and worse after: overfitting "
                          f"(fewer epochs, more data, or a smaller learning rate)")
            fixes.append("--set train.early_stopping_patience=1")
    if not causes:
        causes.append("the task may be hard for this model, or the labels noisy: compare with the baseline's mistakes "
                      "in the report, and try `ftune data validate`")
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
