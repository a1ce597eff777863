"""The clustered affinity matrix: drawn when the classes are clustered, since the (C, C) matrix is not kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.figures import pyplot, save_figure


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
