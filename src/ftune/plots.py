"""The report's figures, drawn with matplotlib and saved as PNG. Each function takes plain data."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ftune.integrity import atomic_path  # noqa: E402

DPI = 110


def training_curves(history: list[dict], metric: str, path: Path) -> Path:
    """Loss (training and validation), the chosen validation metric and the learning rate, per step."""
    train = [e for e in history if e["type"] == "train"]
    evals = [e for e in history if e["type"] == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    loss, score, lr = axes
    loss.plot([e["step"] for e in train], [e["loss"] for e in train], label="training", color="tab:blue")
    loss.plot([e["step"] for e in evals], [e["validation"]["loss"] for e in evals], "o-", label="validation",
              color="tab:orange")
    loss.set_title("loss")
    loss.legend()
    measured = evals[0]["validation"] if evals else {}
    shown = metric if metric != "loss" else next((m for m in ("accuracy", "perplexity") if m in measured), "loss")
    score.plot([e["step"] for e in evals], [e["validation"][shown] for e in evals], "o-", color="tab:green")
    score.set_title(f"validation {shown}")
    lr.plot([e["step"] for e in train], [e["lr"] for e in train], color="tab:purple")
    lr.set_title("learning rate")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    if not train:
        for ax in (loss, lr):
            ax.annotate("fewer steps than train.log_steps", (0.5, 0.9), xycoords="axes fraction", ha="center")
    return _save(fig, path)


def confusion_heatmaps(matrix: list[list[int]], labels: list[str], path: Path) -> Path:
    """Counts and row-normalized (recall per true class) side by side."""
    counts = np.asarray(matrix, dtype=float)
    normalized = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(labels) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, values, title, fmt in ((axes[0], counts, "counts", "{:.0f}"), (axes[1], normalized, "normalized by true class", "{:.2f}")):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
        ax.set_yticks(range(len(labels)), labels)
        if len(labels) <= 20:  # beyond that the numbers no longer fit in the cells
            threshold = values.max() / 2
            for i, j in np.ndindex(values.shape):
                ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] > threshold else "black")
    return _save(fig, path)


def length_histogram(tokens: dict, path: Path) -> Path:
    """Token lengths per split (after truncation), with the max_length window marked."""
    edges = np.asarray(tokens["histogram"]["edges"])
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name in ("train", "validation", "test"):
        ax.stairs(tokens["histogram"][name], edges, label=name)
    ax.axvline(tokens["max_length"], color="tab:red", linestyle="--", label=f"max_length {tokens['max_length']}")
    ax.set_xlabel("tokens per text")
    ax.set_ylabel("texts")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def compare_curves(runs: dict[str, list[dict]], path: Path) -> Path:
    """Training loss, validation loss and validation accuracy of several runs, against epochs."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, history in runs.items():
        train = [e for e in history if e["type"] == "train"]
        evals = [e for e in history if e["type"] == "eval"]
        line, = axes[0].plot([e["epoch"] for e in train], [e["loss"] for e in train], label=name)
        axes[1].plot([e["epoch"] for e in evals], [e["validation"]["loss"] for e in evals], "o-", color=line.get_color())
        axes[2].plot([e["epoch"] for e in evals], [e["validation"]["accuracy"] for e in evals], "o-", color=line.get_color())
    for ax, title in zip(axes, ("training loss", "validation loss", "validation accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def lr_range_test(curve: dict, path: Path) -> Path:
    """The learning-rate range test (lr_find.json): loss per step against the rate, smoothed, with the choice."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(curve["rates"], curve["losses"], color="tab:blue", alpha=0.35, label="loss per step")
    ax.plot(curve["rates"], curve["smoothed"], color="tab:blue", label="smoothed")
    ax.axvline(curve["minimum_at"], color="tab:gray", linestyle=":",
               label=f"smoothed minimum {curve['minimum_at']:.1e}")
    ax.axvline(curve["chosen"], color="tab:red", linestyle="--", label=f"chosen {curve['chosen']:.1e}")
    ax.set_xscale("log")
    if curve["smoothed"]:  # the diverging tail would squash the part that matters
        low, first = min(curve["losses"] + curve["smoothed"]), curve["smoothed"][0]
        ax.set_ylim(low - 0.05 * (first - low) - 1e-3, first + 0.5 * (first - low) + 1e-3)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:  # a symlink at `path` is replaced, never written through
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return path
