"""A plain word when a finished run learned nothing or little, with the likely cause read from the run itself.

Pure functions over what the run directory holds (metrics, the logged training loss, the config), so the
report and `ftune runs list` can say it again from the files alone.
"""

from __future__ import annotations

FLAT = 0.05  # the training loss fell by less than 5% from its first logged value: it did not move
ROSE = 1.5   # it ended 50% above where it started: the steps were too large


def diagnose(metrics: dict, history: list[dict], config: dict, run_dir: str) -> dict | None:
    """None for a run that learned; else {"verdict", "findings", "causes", "try"} in words a user acts on."""
    test = metrics["test"]
    finetuned, base = test["finetuned"], test.get("base_model") or {}
    findings = []
    lower_is_better = "accuracy" not in finetuned  # causal-lm: loss and perplexity only
    if lower_is_better:
        if base.get("loss") is not None and finetuned["loss"] >= base["loss"]:
            findings.append(f"test loss {finetuned['loss']:.4f} is not below the base model's {base['loss']:.4f}")
    else:
        low, high = finetuned.get("accuracy_ci95") or (finetuned["accuracy"], finetuned["accuracy"])
        if base.get("accuracy") is not None and low <= base["accuracy"]:
            findings.append(f"test accuracy {finetuned['accuracy']:.1%} is not clearly above the untrained base "
                            f"model's {base['accuracy']:.1%} (95% CI {low:.1%}–{high:.1%})")
        for name, label in (("tfidf", "TF-IDF baseline"), ("most_frequent_tag", "most-frequent-tag baseline")):
            simple = (test.get(name) or {}).get("accuracy")
            if simple is not None and high < simple:
                findings.append(f"test accuracy {finetuned['accuracy']:.1%} is below the {label}'s {simple:.1%}, "
                                f"beyond the 95% interval ({low:.1%}–{high:.1%})")
    losses = _losses(metrics, history)
    flat = len(losses) >= 2 and losses[-1] > (1 - FLAT) * losses[0]
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
        best = min(values) if metric == "loss" else max(values)
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
