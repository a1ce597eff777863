"""Which classes a generalist confuses: the covariance of its predicted probabilities, or its confusion matrix.

The paper (docs/method.md section 4, step 2) clusters the columns of the covariance matrix of the generalist's predicted
class probabilities: classes that gain probability together on the same inputs are the ones a specialist should
tell apart. No labels are needed. The accumulator streams over batches and holds only C x C sums, never the
N x C predictions.
"""

from __future__ import annotations

import torch


class CovarianceAccumulator:
    """Streaming covariance of probability vectors p (rows of (B, C) batches):

        cov = E[p p^T] - E[p] E[p]^T     (population covariance, float64 sums)

    `top_k` (None: exact) keeps only the k largest probabilities of each row before accumulating. At JFT scale
    (C = 15,000) the exact sum of outer products costs N * C^2 multiply-adds, hours on a few cores; a generalist's
    predictions put almost all their mass on a few classes, so the top-k sum costs N * k^2 and changes the matrix
    by at most the mass it drops (recorded in `dropped_mass`, the mean over rows).
    """

    def __init__(self, num_classes: int, top_k: int | None = None):
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.num_classes, self.top_k = num_classes, top_k
        self.count = 0
        self.total = torch.zeros(num_classes, dtype=torch.float64)
        self.outer = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        self.dropped = 0.0

    def update(self, probs: torch.Tensor) -> None:
        """Add a batch of probability rows (B, C)."""
        probs = probs.detach().cpu().double()
        if self.top_k is None or self.top_k >= self.num_classes:
            self.outer.addmm_(probs.T, probs)
            self.total += probs.sum(0)
        else:
            values, index = probs.topk(self.top_k, dim=1)
            self.dropped += (1.0 - values.sum(1)).sum().item()
            pairs = (index[:, :, None] * self.num_classes + index[:, None, :]).reshape(-1)
            self.outer.view(-1).index_add_(0, pairs, (values[:, :, None] * values[:, None, :]).reshape(-1))
            self.total.index_add_(0, index.reshape(-1), values.reshape(-1))
        self.count += len(probs)

    def covariance(self) -> torch.Tensor:
        """The C x C covariance of everything added so far (float64)."""
        if self.count == 0:
            raise ValueError("no predictions were added")
        mean = self.total / self.count
        return self.outer / self.count - torch.outer(mean, mean)

    @property
    def dropped_mass(self) -> float:
        return self.dropped / max(1, self.count)


def confusion_affinity(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The row-normalised confusion matrix, symmetrised: A[i, j] = (P(pred j | true i) + P(pred i | true j)) / 2.

    The paper's other source of specialist subsets (docs/method.md section 4, step 2); unlike the covariance it needs
    labelled data. Rows of classes that never occur are zero. Shapes: predicted, labels (N,) -> (C, C).
    """
    counts = torch.bincount(labels * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, -1)
    rates = counts.double() / counts.sum(1, keepdim=True).clamp(min=1)
    return (rates + rates.T) / 2
