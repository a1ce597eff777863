"""The specialists' figures: the clustered affinity matrix (drawn when the classes are clustered, since the (C, C)
matrix is not kept) and the gain by coverage (redrawn from metrics.json by `distillery report`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.plots import pyplot, save_figure
from specialists.gains import CoverageRow


def plot_affinity(affinity: torch.Tensor, clusters: list[int], path: Path, title: str) -> Path:
    """The affinity (C, C) with classes reordered by k-means cluster, cluster boundaries marked."""
    plt = pyplot()
    order = np.argsort(np.asarray(clusters), kind="stable")
    matrix = affinity.float().cpu().numpy()[np.ix_(order, order)]
    limit = np.percentile(np.abs(matrix), 99) or 1.0
    figure, axes = plt.subplots(figsize=(5.5, 5), dpi=110)
    image = axes.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    boundaries = np.flatnonzero(np.diff(np.asarray(clusters)[order])) + 0.5
    for boundary in boundaries:
        axes.axhline(boundary, color="black", linewidth=0.3)
        axes.axvline(boundary, color="black", linewidth=0.3)
    axes.set_title(title, fontsize=9)
    axes.set_xlabel("class (ordered by cluster)")
    axes.set_ylabel("class (ordered by cluster)")
    figure.colorbar(image, ax=axes, fraction=0.046)
    return save_figure(figure, path)


def plot_gain_by_coverage(rows: list[CoverageRow], path: Path) -> Path:
    """Bars of the relative top-1 change by the number of specialists covering the true class, with counts."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 3.2), dpi=110)
    labels = [row.covering for row in rows]
    values = [100 * (row.relative_change or 0.0) for row in rows]
    bars = axes.bar(labels, values, width=0.6, color=["#4477aa" if v >= 0 else "#cc6677" for v in values])
    axes.margins(x=0.3 if len(rows) == 1 else 0.05, y=0.15)  # room for the counts above (or below) the bars
    for bar, row in zip(bars, rows):
        axes.annotate(f"n={row.examples}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom" if bar.get_height() >= 0 else "top", fontsize=7)
    axes.axhline(0, color="black", linewidth=0.6)
    axes.set_xlabel("specialists covering the true class")
    axes.set_ylabel("relative top-1 change (%)")
    return save_figure(figure, path)
