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

At large C almost every class lies outside all of an input's active subsets, and for those classes the EM step
multiplies q_j by one common factor: starting from p_g they keep q proportional to p_g. `lumped_batch` and
`solve_lumped` therefore solve each input on its own classes only (the union of its active subsets) plus one
lumped class holding the rest of p_g, and spread the lumped class's mass back in proportion to p_g: the same
optimum, at a cost set by the active subsets instead of C x M. This is what the combiner runs; the dense solvers
are its reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch



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


@dataclass
class LumpedBatch:
    """eq. 5 for B inputs, each on its own W columns (the classes of its active subsets, padded) plus a lumped
    class, with its K active specialists in slots (padded to the largest subset, S; C classes).

    Column W + 1 is the lumped class: the generalist's mass outside the row's active subsets. Padding columns
    (class id C; column W is one in every row) stay at 0, and the padding entries of a slot point at one of them.
    """

    generalist: torch.Tensor  # (B, C) p_g, to spread the lumped class's mass back over its classes
    columns: torch.Tensor     # (B, W + 1) class id of each column, C for padding
    observed: torch.Tensor    # (B, W + 2) p_g + the active specialists' special mass; last: p_g outside the union
    position: torch.Tensor    # (B, K * S) the column of each class of each slot's subset
    dustbin: torch.Tensor     # (B, K) the dustbin mass of the specialist in slot k, 0 in empty slots
    taken: torch.Tensor       # (B, K) bool: slot k holds an active specialist


def lumped_batch(generalist_probs: torch.Tensor, subsets: list[list[int]], active: torch.Tensor,
                 outputs: dict[int, torch.Tensor]) -> LumpedBatch:
    """A `LumpedBatch` from the generalist's probabilities (B, C), the active mask (B, M) and each active
    specialist's probabilities on its active rows (as `specialist_batch` takes them), in p_g's dtype."""
    rows_count, num_classes = generalist_probs.shape
    dtype, device = generalist_probs.dtype, generalist_probs.device
    slots = max(1, int(active.sum(1).max()))
    taken, slot_owner = active.to(dtype).topk(slots, dim=1)  # the first slots hold each row's active specialists
    taken = taken.bool()
    width = max(len(subset) for subset in subsets)
    table = torch.full((len(subsets), width), num_classes, dtype=torch.long, device=device)
    for m, subset in enumerate(subsets):
        table[m, :len(subset)] = torch.tensor(subset, device=device)
    special = torch.zeros(rows_count, slots, width, dtype=dtype, device=device)
    dustbin = torch.zeros(rows_count, slots, dtype=dtype, device=device)
    for m, probs in outputs.items():
        rows = active[:, m].nonzero().squeeze(1)
        slot = (slot_owner[rows] == m).to(torch.int8).argmax(1)
        special[rows, slot, :len(subsets[m])] = probs[:, :-1].to(dtype)
        dustbin[rows, slot] = probs[:, -1].to(dtype)
    classes = torch.where(taken[:, :, None], table[slot_owner], num_classes).reshape(rows_count, -1)
    # Each row's distinct classes become its columns, in sorted order; padding (C) sorts last, after the union.
    ordered, order = classes.sort(dim=1)
    first_seen = torch.ones_like(ordered, dtype=torch.bool)
    first_seen[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    rank = first_seen.cumsum(1) - 1
    # the last sorted entry is padding, ranked after the row's classes, or the row's largest class
    union_width = int((rank[:, -1] + (ordered[:, -1] < num_classes)).max())
    columns = torch.full((rows_count, union_width + 1), num_classes, dtype=torch.long, device=device)
    columns.scatter_(1, rank, ordered)
    position = torch.empty_like(rank).scatter_(1, order, rank)
    union = _at_columns(generalist_probs, columns)
    rest = generalist_probs.sum(1, keepdim=True, dtype=torch.float64) - union.sum(1, keepdim=True, dtype=torch.float64)
    observed = torch.cat([union, rest.clamp_min(0).to(dtype)], dim=1)
    observed.scatter_add_(1, position, special.reshape(rows_count, -1))
    return LumpedBatch(generalist_probs, columns, observed, position, dustbin, taken)


def _at_columns(values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """values (B, C) at each row's columns (B, W), 0 at padding columns (class id C)."""
    num_classes = values.shape[1]
    return torch.where(columns < num_classes, values.gather(1, columns.clamp(max=num_classes - 1)), 0.0)


def solve_lumped(batch: LumpedBatch, tol: float = 1e-9, max_iter: int = 1000) -> torch.Tensor:
    """The eq. 5 optimum q (B, C): `solve_em`'s fixed point on each row's own columns and lumped class, reached
    with SQUAREM steps (Varadhan and Roland 2008), then the lumped mass spread over its classes in proportion to
    p_g. A row is done when one EM step moves none of its entries by more than `tol` (at least 8 ulps of the
    dtype); only rows not yet done take further steps.

    Why SQUAREM: where active specialists overlap and their dustbins are large, plain EM contracts slowly (the
    dense float64 iteration needed thousands of steps on rows of a 1,000-class run at top_n = 3), and a float32
    iteration that stops when its step reaches rounding noise is then still 1e-5 away from the optimum. Each
    SQUAREM step extrapolates along two EM steps, falls back to the plain second step for a row where the
    extrapolation leaves the simplex, and ends with one EM step, so q stays a distribution.
    """
    dtype = batch.observed.dtype
    tol, tiny = max(tol, 8 * torch.finfo(dtype).eps), torch.finfo(dtype).tiny
    q = torch.cat([_at_columns(batch.generalist, batch.columns[:, :-1]), batch.observed[:, -2:]], dim=1)
    live = torch.arange(len(q), device=q.device)
    dustbin, count = batch.dustbin.double(), 1.0 + batch.taken.sum(1, keepdim=True).to(dtype)
    for _ in range(max_iter):
        parts = (batch.observed[live], batch.position[live], dustbin[live], batch.taken[live], count[live])
        start = q[live]
        first = _em_step(start, *parts)
        second = _em_step(first, *parts)
        step, curvature = first - start, second - 2 * first + start
        alpha = (step.norm(dim=1, keepdim=True) / curvature.norm(dim=1, keepdim=True).clamp_min(tiny)).clamp_min(1)
        extrapolated = start + 2 * alpha * step + alpha ** 2 * curvature
        extrapolated = torch.where((extrapolated >= 0).all(1, keepdim=True), extrapolated, second)
        settled = _em_step(extrapolated, *parts)
        q[live] = settled
        live = live[(settled - extrapolated).abs().amax(1) > tol]
        if not len(live):
            break
    rows_count, num_classes = batch.generalist.shape
    rest = batch.observed[:, -1:]
    spread_back = batch.generalist.new_empty(rows_count, num_classes + 1)
    torch.mul(batch.generalist, torch.where(rest > 0, q[:, -1:] / rest.clamp_min(tiny), 0.0),
              out=spread_back[:, :num_classes])
    return spread_back.scatter_(1, batch.columns, q[:, :-1])[:, :num_classes]


def _em_step(q: torch.Tensor, observed: torch.Tensor, position: torch.Tensor, dustbin: torch.Tensor,
             taken: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """One EM step of `solve_lumped` on rows (R, W + 2) with their parts of the batch (dustbin in float64, count
    1 + the active specialists).

    Q_k, the mass outside slot k's subset, is the row's total less the mass inside, summed in float64 so that a
    Q_k much smaller than 1 keeps its digits; the inside sums and the spread of each dustbin over the classes
    outside its subset touch only the K x S entries of the slots, not K x W.
    """
    rows_count, slots = taken.shape
    inside = q.gather(1, position).view(rows_count, slots, -1).sum(2, dtype=torch.float64)          # (R, K)
    outside = q.sum(1, keepdim=True, dtype=torch.float64) - inside                                    # Q_k
    share = torch.where(taken, dustbin / outside.clamp_min(torch.finfo(q.dtype).tiny), 0.0)
    entries = share.repeat_interleave(position.shape[1] // slots, dim=1)
    within = torch.zeros(q.shape, dtype=torch.float64, device=q.device).scatter_add_(1, position, entries)
    spread = (share.sum(1, keepdim=True) - within).to(q.dtype)  # sum of d_k / Q_k over the slots not holding j
    return (observed + q * spread) / count
