"""The paper's eq. 5: one distribution over all classes from a generalist and its active specialists.

For one input, with the generalist's distribution p_g and each active specialist's p_m over its subset S_m plus a
dustbin, find the q over all C classes minimising

    KL(p_g, q) + sum_{m in A} KL(p_m, q_m),    q_m = (q on S_m, Q_m = sum of q outside S_m in the dustbin).

Up to constants this is the negative log-likelihood -sum_j c_j log q_j - sum_m d_m log Q_m, with c_j the summed
mass p_g_j + sum_{m: j in S_m} p_m_j and d_m the dustbin masses: convex in q, so its optimum is global. Two
solvers work on whole batches:

- `solve_em` (default): the fixed-point (EM) iteration of docs/method.md; each dustbin's mass is split over the
  classes outside S_m in proportion to q, then q is the normalised total. No learning rate; each step keeps q a
  distribution.
- `solve_gradient`: the paper's gradient descent on logits z, q = softmax(z) (Adam steps).

Batches are described by `SpecialistBatch`: the summed special masses (B, C), the dustbin masses (B, M) (zero
where a specialist is inactive), the active mask (B, M) and the membership matrix (M, C).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.config import Eq5Solver
from distill.records import check_choice


@dataclass
class SpecialistBatch:
    """What the active specialists say about a batch of B inputs; M specialists, C classes."""

    special: torch.Tensor     # (B, C): sum over active m with j in S_m of p_m_j
    dustbin: torch.Tensor     # (B, M): p_m of the dustbin, 0 where m is inactive
    active: torch.Tensor      # (B, M) bool
    membership: torch.Tensor  # (M, C) float: 1 where class j is in S_m


def active_specialists(generalist_probs: torch.Tensor, membership: torch.Tensor, top_n: int = 1) -> torch.Tensor:
    """(B, M) bool: specialist m is active for an input when S_m holds one of the generalist's top-n classes.

    generalist_probs (B, C), membership (M, C) bool or float. The paper used n = 1.
    """
    top = generalist_probs.topk(top_n, dim=1).indices                     # (B, n)
    return membership.bool()[:, top].any(dim=2).T                          # (M, B, n) -> (B, M)


def specialist_batch(num_classes: int, subsets: list[list[int]], active: torch.Tensor,
                     outputs: dict[int, torch.Tensor], dtype=torch.float64, device=None) -> SpecialistBatch:
    """Assemble a `SpecialistBatch` from each active specialist's probabilities on its active rows.

    outputs[m]: (rows active for m, |S_m| + 1) probabilities, rows in batch order, dustbin last.
    """
    batch_size = len(active)
    membership = torch.zeros(len(subsets), num_classes, dtype=dtype, device=device)
    special = torch.zeros(batch_size, num_classes, dtype=dtype, device=device)
    dustbin = torch.zeros(batch_size, len(subsets), dtype=dtype, device=device)
    for m, subset in enumerate(subsets):
        membership[m, subset] = 1.0
        rows = active[:, m].nonzero().squeeze(1)
        if len(rows):
            probs = outputs[m].to(dtype)
            special[rows[:, None], torch.tensor(subset, device=device)] += probs[:, :-1]
            dustbin[rows, m] = probs[:, -1]
    return SpecialistBatch(special, dustbin, active, membership)


def objective(q: torch.Tensor, generalist_probs: torch.Tensor, batch: SpecialistBatch) -> torch.Tensor:
    """Eq. 5 per input, up to the constant entropies: -sum_j c_j log q_j - sum_m d_m log Q_m. (B, C) -> (B,).

    Q_m, the mass q puts outside S_m, is the dustbin aggregation; gradients flow through it.
    """
    outside = q @ (1.0 - batch.membership).T                                # (B, M)
    dustbin_term = torch.where(batch.active, batch.dustbin * outside.clamp_min(1e-300).log(), 0.0).sum(1)
    return -((generalist_probs + batch.special) * q.clamp_min(1e-300).log()).sum(1) - dustbin_term


def solve_em(generalist_probs: torch.Tensor, batch: SpecialistBatch, tol: float = 1e-9,
             max_iter: int = 1000) -> torch.Tensor:
    """The eq. 5 optimum q (B, C) by the fixed-point iteration of docs/method.md:

        q_j <- [p_g_j + sum_{m in A, j in S_m} p_m_j + sum_{m in A, j not in S_m} d_m q_j / Q_m] / (1 + |A|)

    until no entry moves by more than `tol` (at least 8 ulps of the dtype: float32 iterates keep moving by
    rounding). Returns p_g exactly where no specialist is active, and the arithmetic mean of p_g and the
    specialists where no dustbin mass is involved.
    """
    tol = max(tol, 8 * torch.finfo(generalist_probs.dtype).eps)
    count = 1.0 + batch.active.sum(1, keepdim=True).to(generalist_probs.dtype)
    observed = generalist_probs + batch.special
    q = generalist_probs
    for _ in range(max_iter):
        outside = q @ (1.0 - batch.membership).T                            # Q_m, (B, M)
        share = torch.where(batch.active, batch.dustbin / outside.clamp_min(1e-300), 0.0)
        spread = share.sum(1, keepdim=True) - share @ batch.membership      # sum over m with j not in S_m
        updated = (observed + q * spread) / count
        converged = (updated - q).abs().max() <= tol
        q = updated
        if converged:
            break
    return q


def solve_gradient(generalist_probs: torch.Tensor, batch: SpecialistBatch, lr: float = 0.1,
                   steps: int = 2000) -> torch.Tensor:
    """The eq. 5 optimum q (B, C) by gradient descent on logits z, q = softmax(z), as the paper did.

    Starts at z = log p_g; each input's objective is divided by its 1 + |A| so one step size suits every row.
    The steps are Adam's, with a cosine-decayed rate: plain gradient descent stalls where a dustbin's mass must
    spread over many classes of tiny probability, because d/dz_j is proportional to q_j (100,000 plain steps
    still left errors of 4e-5 in q on the test problem; Adam's per-coordinate scale reaches 1e-11 in 2,000).
    """
    count = 1.0 + batch.active.sum(1).to(generalist_probs.dtype)
    logits = generalist_probs.clamp_min(1e-300).log().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        optimizer.zero_grad()
        (objective(torch.softmax(logits, dim=1), generalist_probs, batch) / count).sum().backward()
        optimizer.step()
        schedule.step()
    return torch.softmax(logits.detach(), dim=1)


def solve(generalist_probs: torch.Tensor, batch: SpecialistBatch, solver: Eq5Solver = "em") -> torch.Tensor:
    check_choice(solver, Eq5Solver, "solver")
    return solve_em(generalist_probs, batch) if solver == "em" else solve_gradient(generalist_probs, batch)
