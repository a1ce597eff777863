"""Averaging the members of an ensemble into one predictive distribution (docs/method.md section 1).

The paper averages the members' distributions (arithmetic mean); the geometric mean (a normalised product of
experts, equal to the softmax of the mean logits when weights are equal) is the other natural choice. Which one is
used is always explicit: `ensemble.combine` in the config, recorded in metrics.json.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.config import EnsembleMethod
from distill.precision import ComputePrecision, autocast
from distill.records import check_choice


def normalised_weights(weights: list[float] | None, members: int) -> torch.Tensor:
    """Member weights that sum to one; None means equal weights."""
    if weights is None:
        return torch.full((members,), 1.0 / members)
    if len(weights) != members or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights must be {members} numbers >= 0, not all zero; got {weights}")
    tensor = torch.tensor(weights, dtype=torch.float64)
    return (tensor / tensor.sum()).float()


def combine_log_probs(member_logits: torch.Tensor, temperature: float = 1.0, method: EnsembleMethod = "arithmetic",
                      weights: list[float] | None = None) -> torch.Tensor:
    """Log-probabilities (N, C) of the combined distribution at temperature T.

    member_logits: (M, N, C), one slice per member.
      arithmetic: p = sum_m w_m softmax(z_m / T)                 (Hinton et al. 2015, section 1)
      geometric:  p proportional to prod_m softmax(z_m / T)^w_m
    """
    check_choice(method, EnsembleMethod, "method")
    w = normalised_weights(weights, member_logits.shape[0]).to(member_logits.device)[:, None, None]
    log_probs = F.log_softmax(member_logits.float() / temperature, dim=-1)
    if method == "arithmetic":
        return torch.logsumexp(log_probs + w.log(), dim=0)
    return F.log_softmax((w * log_probs).sum(dim=0), dim=-1)


def ensemble_logits(member_logits: torch.Tensor, temperature: float = 1.0, method: EnsembleMethod = "arithmetic",
                    weights: list[float] | None = None) -> torch.Tensor:
    """Logits (N, C) whose softmax at `temperature` is the combined distribution at that temperature.

    T * log p: soft-target code that applies softmax(z / T) to teacher logits then sees the ensemble's
    distribution at T unchanged, so one training loop serves single teachers and ensembles.
    """
    return temperature * combine_log_probs(member_logits, temperature, method, weights)


class Ensemble(nn.Module):
    """Frozen members whose forward pass gives `ensemble_logits` at `temperature`: a drop-in teacher for code
    that applies softmax(z / T), such as a student whose augmented batches need fresh teacher outputs. Each member
    runs in its own precision (default fp32)."""

    def __init__(self, members: list[nn.Module], temperature: float = 1.0, method: EnsembleMethod = "arithmetic",
                 weights: list[float] | None = None, precisions: list[ComputePrecision] | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.temperature, self.method, self.weights = temperature, method, weights
        self.precisions = precisions or ["fp32"] * len(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        member_logits = []
        for member, precision in zip(self.members, self.precisions):
            with autocast(precision, x.device):
                member_logits.append(member(x).float())
        return ensemble_logits(torch.stack(member_logits), self.temperature, self.method, self.weights)
