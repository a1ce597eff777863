"""Figures of training curves and calibration, and the matplotlib set-up every figure of the project shares.

Drawn from the typed records of metrics.json alone, so that `distillery report DIR` can redraw them.
"""

from __future__ import annotations

from pathlib import Path

from distill.measures import ModelMetrics
from distill.train import EpochRecord


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: runs on machines without a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> Path:
    """Write `figure` as PNG atomically: a crash never leaves a half-drawn figure under the final name."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.tight_layout()
    figure.savefig(temporary)
    plt.close(figure)
    temporary.replace(path)
    return path


def plot_training_curves(history: dict[str, list[EpochRecord]], path: Path,
                         background: dict[str, str] | None = None) -> Path:
    """Training loss per epoch (left, log scale) and test accuracy at the curve points (right), one line per model.

    Models named in `background` (name -> group label, such as "members" or "specialists") are thin grey lines
    under one legend entry per group, so the models compared stand out."""
    plt = pyplot()
    background = background or {}
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    labelled = set()
    for name, records in history.items():
        group = background.get(name)
        style = {"color": "#aaaaaa", "linewidth": 0.7} if group else {"linewidth": 1.4}
        label = name if group is None else (group if group not in labelled else None)
        labelled.add(group)
        loss_axes.plot([r.epoch for r in records], [r.loss for r in records], **style)
        points = [r for r in records if r.test_accuracy is not None]
        accuracy_axes.plot([r.epoch for r in points], [100 * r.test_accuracy for r in points], marker=".",
                           markersize=3, label=label, **style)
    loss_axes.set(xlabel="epoch", ylabel="training loss", yscale="log")
    accuracy_axes.set(xlabel="epoch", ylabel="test accuracy (%)")
    loss_axes.set_title("training loss", fontsize=9)
    accuracy_axes.set_title("test accuracy (a curve only, never used to choose a model)", fontsize=9)
    accuracy_axes.legend(fontsize=7, loc="lower right")
    return save_figure(figure, path)


def plot_reliability(models: dict[str, ModelMetrics], path: Path) -> Path:
    """One reliability diagram per model: top-1 accuracy per confidence bin against the diagonal of perfect
    calibration, the gap to it shaded, and below it how many examples fall in each bin (log scale: most fall in
    the last bin)."""
    plt = pyplot()
    figure, axes_grid = plt.subplots(2, len(models), figsize=(3.3 * len(models), 4.4), dpi=110, squeeze=False,
                                     gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for column, (name, metrics) in enumerate(models.items()):
        table, top, bottom = metrics.reliability, axes_grid[0][column], axes_grid[1][column]
        bins = len(table.count)
        lefts = [b / bins for b in range(bins)]
        filled = [b for b in range(bins) if table.count[b]]
        accuracy = [table.accuracy[b] for b in filled]
        confidence = [table.confidence[b] for b in filled]
        top.bar([lefts[b] for b in filled], accuracy, width=1 / bins, align="edge", color="#4477aa",
                edgecolor="white", linewidth=0.5, label="accuracy")
        top.bar([lefts[b] for b in filled], [c - a for a, c in zip(accuracy, confidence)], bottom=accuracy,
                width=1 / bins, align="edge", color="#cc6677", alpha=0.45, label="gap to confidence")
        top.plot([0, 1], [0, 1], color="black", linewidth=0.6, linestyle="--")
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{name} (ECE {metrics.ece:.4f})")
        top.title.set_fontsize(9)
        bottom.bar([lefts[b] for b in filled], [table.count[b] for b in filled], width=1 / bins, align="edge",
                   color="#999999")
        bottom.set(yscale="log", ylim=(0.8, None), xlabel="confidence", ylabel="examples")
    axes_grid[0][0].legend(fontsize=7, loc="upper left")
    return save_figure(figure, path)
