"""The before/after report: base model, TF-IDF baseline and fine-tuned model on the same test split."""

from __future__ import annotations

from pathlib import Path

from ftune.config import Config, to_yaml

ROWS = (("base_model", "base model, untrained head"), ("tfidf", "TF-IDF + logistic regression"),
        ("finetuned", "fine-tuned"))


def before_after_rows(test: dict) -> list[tuple[str, str, str, str]]:
    """(model, accuracy, 95% interval, macro-F1) for each model that was scored."""
    rows = []
    for key, title in ROWS:
        if key not in test or test[key] is None:
            continue
        m = test[key]
        ci = m.get("accuracy_ci95")
        interval = f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else ""
        rows.append((title, f"{m['accuracy']:.4f}", interval, f"{m['macro_f1']:.4f}"))
    return rows


def markdown_table(header: list[str], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(path: Path, config: Config, metrics: dict, labels: list[str]) -> None:
    test = metrics["test"]
    n = test["finetuned"]["n"]
    per_class = [(name, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", s["support"])
                 for name, s in test["finetuned"]["per_class"].items()]
    confusion = [(labels[i], *row) for i, row in enumerate(test["finetuned"]["confusion"])]
    train = metrics["train"]
    text = f"""# ftune run: {config.data.train}, {config.method.name}, {config.model.name}

## Before and after, on the same test split ({n} examples)

{markdown_table(["model", "accuracy", "95% CI", "macro-F1"], before_after_rows(test))}

## Fine-tuned model per class

{markdown_table(["class", "precision", "recall", "F1", "support"], per_class)}

## Confusion matrix (rows: true, columns: predicted)

{markdown_table(["", *labels], confusion)}

## Training

{train['steps']} steps, {train['epochs']} epochs{' (stopped early)' if train['stopped_early'] else ''},
{train['seconds']:.1f} s, {train['samples_per_s']:.1f} samples/s; {train['trainable_parameters']:,} of
{train['total_parameters']:,} parameters trained. Data: {metrics['data']['train']} train,
{metrics['data']['validation']} validation, {metrics['data']['test']} test. Best validation
{metrics['validation']['metric']}: {metrics['validation']['best']:.4f} at step {metrics['validation']['best_step']}.

## Config

```yaml
{to_yaml(config).strip()}
```
"""
    path.write_text(text, encoding="utf-8")
