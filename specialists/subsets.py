"""Special subsets: k-means (scikit-learn) on the columns of a class-affinity matrix (docs/method.md section 4, step 2).

Plain k-means gives disjoint subsets of varying size. The paper's specialists had fixed-size, overlapping subsets
and it does not say how they came from k-means; Distillery's choice, in three steps:

1. k-means on the C columns gives `count` centres and each class's distance to every centre.
2. Overlap: each class joins the subsets of its `overlap` nearest centres (overlap = 1 is plain k-means).
3. Size limits: a subset larger than `max_size` keeps the classes nearest its centre; one smaller than
   `min_size` takes in the nearest classes it lacks (which then belong to two subsets). min_size = max_size = S
   gives the paper's fixed-size subsets: each centre's S nearest classes.

A class left in no subset is simply covered by no specialist: the combiner answers for it with the generalist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distill.config import AffinitySource, KMeansAlgorithm
from distill.records import check_choice


@dataclass
class Subsets:
    """The specialists' special subsets, and how they were found: the one record of a run's clustering, saved as
    `specialists/subsets.json` and repeated in metrics.json (`specialists.clustering`).

    `subsets` holds the sorted class ids of each specialist's subset, `clusters` each class's k-means cluster (its
    nearest centre), so it has one entry per class. The rest is filled in by `specialists.clustering` for a run
    (a bare `find_subsets` leaves it unset): what the classes were clustered on, the probability mass a top-k
    covariance dropped, the adjusted Rand index against the data set's known groups, and the seconds it took.
    """

    subsets: list[list[int]]
    clusters: list[int]
    source: AffinitySource | None = None
    covariance_dropped_mass: float | None = None
    ari: float | None = None
    seconds: float | None = None

    @property
    def sizes(self) -> list[int]:
        return [len(subset) for subset in self.subsets]

    def coverage(self) -> torch.Tensor:
        """How many subsets hold each class: (C,) int64."""
        counts = torch.zeros(len(self.clusters), dtype=torch.long)
        for subset in self.subsets:
            counts[subset] += 1
        return counts

    @property
    def uncovered_classes(self) -> int:
        """Classes in no subset: the combiner answers for them with the generalist alone."""
        return int((self.coverage() == 0).sum())

    def membership(self) -> torch.Tensor:
        """(M, C) bool: row m marks the classes of subset m."""
        member = torch.zeros(len(self.subsets), len(self.clusters), dtype=torch.bool)
        for m, subset in enumerate(self.subsets):
            member[m, subset] = True
        return member


def normalised_columns(affinity: torch.Tensor) -> torch.Tensor:
    """The affinity (C, C) with its diagonal zeroed and each column scaled to unit length.

    Why: a class's own variance dominates its covariance column, so raw columns are all nearly orthogonal and of
    similar length, and k-means on them cuts the classes into singletons and a few large clusters. Without the
    diagonal, and compared by direction, the columns show only which other classes rise and fall together. On the
    1,000-class synthetic run (benchmarks/clustering_choices.py) the adjusted Rand index against the true groups
    is 0.01 raw and 0.97 normalised at T = 1, 0.38 and 1.00 at T = 2.
    """
    columns = affinity.clone()
    columns.fill_diagonal_(0)
    return columns / columns.norm(dim=0, keepdim=True).clamp_min(1e-12)


def find_subsets(affinity: torch.Tensor, count: int, overlap: int = 1, min_size: int = 1,
                 max_size: int | None = None, algorithm: KMeansAlgorithm = "kmeans", seed: int = 0) -> Subsets:
    """`count` subsets of the C classes from the columns of `affinity` (C, C), deterministic under `seed`.

    algorithm "kmeans" is Lloyd's k-means with 4 seeded restarts; "online" is mini-batch k-means, the paper's
    on-line variant, for very large C.
    """
    num_classes = affinity.shape[0]
    if not 1 <= count <= num_classes:
        raise ValueError(f"count must be in [1, {num_classes}], got {count}")
    if not 1 <= overlap <= count:
        raise ValueError(f"overlap must be in [1, count={count}], got {overlap}")
    check_choice(algorithm, KMeansAlgorithm, "algorithm")
    from sklearn.cluster import KMeans, MiniBatchKMeans  # here, not at the top: importing it takes a second

    columns = affinity.T.float().cpu().numpy()
    if algorithm == "kmeans":
        model = KMeans(n_clusters=count, n_init=4, random_state=seed)
    else:
        model = MiniBatchKMeans(n_clusters=count, n_init=4, random_state=seed, batch_size=4096)
    distances = model.fit_transform(columns)  # (C, count): each class's distance to each centre
    order = np.argsort(distances, axis=1, kind="stable")
    nearest_first = np.argsort(distances, axis=0, kind="stable")  # (C, count): classes by distance to centre m
    subsets = []
    for m in range(count):
        members = set(np.flatnonzero((order[:, :overlap] == m).any(axis=1)).tolist())
        ranked = [int(c) for c in nearest_first[:, m]]
        if max_size is not None and len(members) > max_size:
            members = set([c for c in ranked if c in members][:max_size])
        for c in ranked:
            if len(members) >= min_size:
                break
            members.add(c)
        subsets.append(sorted(members))
    return Subsets(subsets, order[:, 0].tolist())


def adjusted_rand_index(clusters: list[int], groups: torch.Tensor) -> float:
    """Agreement of the k-means clusters with a known coarse grouping of the classes (1: identical, ~0: chance)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(groups.cpu().numpy(), np.asarray(clusters)))
