"""Scores by slice: every metric of a task per group of examples (a column of the data: a source, a language, a
length bucket), with counts, the headline's interval, the largest gap between groups, and the groups too small to
judge. A model right on 90% of one kind of text and 60% of another otherwise looks like an 80% model.

Fairlearn's MetricFrame does the grouping and the gaps; each group's scores are the task's own (`task.score` on the
group's examples), so every task that scores its examples one by one is sliced the same way, with the same metrics
as its report.
"""

from __future__ import annotations

import numpy as np

from ftune.data.prepare import SLICE_PREFIX
from ftune.errors import DataError

MIN_GROUP = 30  # fewer examples than this in a group: its score moves by 3+ points with one example; not judged


def slice_scores(task, rows: list, data, labels: list[str], groups, column: str, seed: int = 0) -> dict:
    """{"column", "groups": {name: {metric: value, "n", "<headline>_ci95"}}, "gap": {...}, "too_small": [...]}."""
    import pandas as pd
    from fairlearn.metrics import MetricFrame

    groups = pd.Series(np.asarray(groups, dtype=object), name=column).astype(str)
    if len(groups) != len(rows) or getattr(data, "groups", None) is not None:
        raise DataError(f"--slice-by {column}: scores by slice need one score per example (not windows of long "
                        f"texts); evaluate without --slice-by, or with task.long_text.strategy=truncate")
    index = np.arange(len(rows))

    def scored(idx: np.ndarray, interval: bool = False) -> dict:
        return task.score([rows[i] for i in idx], data.subset(idx), labels, interval_seed=seed if interval else None)[0]

    names = [m for m in task.metrics if m != "loss"]
    frame = MetricFrame(metrics={name: (lambda name: lambda truth, _: scored(np.asarray(truth))[name])(name)
                                 for name in names}, y_true=index, y_pred=index, sensitive_features=groups)
    headline = task.headline()
    out: dict = {"column": column, "metric": headline, "groups": {}, "too_small": []}
    for name, row in frame.by_group.iterrows():
        idx = index[(groups == name).to_numpy()]
        entry = {metric: float(row[metric]) for metric in names} | {"n": int(len(idx))}
        interval = scored(idx, interval=True).get(f"{headline}_ci95")
        if interval is not None:
            entry[f"{headline}_ci95"] = [float(v) for v in interval]
        out["groups"][str(name)] = entry
        if len(idx) < MIN_GROUP:
            out["too_small"].append(str(name))
    judged = {name: g[headline] for name, g in out["groups"].items() if name not in out["too_small"]}
    if len(judged) >= 2:
        lower = headline in task.lower_is_better
        best, worst = (min, max) if lower else (max, min)
        high, low = best(judged, key=judged.get), worst(judged, key=judged.get)
        out["gap"] = {"value": abs(judged[high] - judged[low]), "best": high, "worst": low,
                      "fairlearn_difference": float(frame.difference()[headline])}  # over every group, small too
    return out


def scored(task, rows: list, data, splits, split: str, interval_seed: int | None = None) -> tuple[dict, object]:
    """task.score of a split's outputs; on the test split, also each data.slice_columns column's scores by slice,
    under "slices" (the splits carry those columns as slice:NAME)."""
    metrics, outputs = task.score(rows, data, splits.labels, interval_seed)
    frame = getattr(splits, split)
    columns = [c for c in frame.columns if str(c).startswith(SLICE_PREFIX)] if split == "test" else []
    if columns and len(rows):
        metrics["slices"] = {c.removeprefix(SLICE_PREFIX): slice_scores(task, rows, data, splits.labels, frame[c],
                                                                          c.removeprefix(SLICE_PREFIX))
                             for c in columns}
    return metrics, outputs


def lines(sliced: dict) -> list[str]:
    """The slices in words: a line per group, then the gap."""
    metric, out = sliced["metric"], []
    for name, g in sliced["groups"].items():
        interval = g.get(f"{metric}_ci95")
        shown = f" (95% CI {interval[0]:.3f}–{interval[1]:.3f})" if interval else ""
        small = "  too few to judge" if name in sliced["too_small"] else ""
        out.append(f"{sliced['column']}={name}: {metric} {g[metric]:.4f}{shown}, n={g['n']}{small}")
    gap = sliced.get("gap")
    if gap:
        out.append(f"largest gap: {metric} {gap['value']:.4f} between {sliced['column']}={gap['best']} and "
                   f"{sliced['column']}={gap['worst']} (groups of {MIN_GROUP} or more)")
    else:
        out.append(f"no gap judged: fewer than two groups of {MIN_GROUP} or more examples")
    return out
