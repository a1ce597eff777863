import pytest
import torch

from specialists.eq5 import (SpecialistBatch, active_specialists, objective, solve, solve_em, solve_gradient,
                             specialist_batch)

SUBSETS = [list(range(0, 8)), list(range(6, 15)), list(range(20, 30))]
CLASSES = 30


def _softmax(rows: int, columns: int, generator: torch.Generator, scale: float = 3.0) -> torch.Tensor:
    return torch.softmax(torch.randn(rows, columns, generator=generator, dtype=torch.float64) * scale, dim=1)


@pytest.fixture
def problem() -> tuple[torch.Tensor, SpecialistBatch]:
    """64 inputs, 30 classes, three specialists (two overlapping) active on the generalist's top-2 classes."""
    generator = torch.Generator().manual_seed(0)
    generalist = _softmax(64, CLASSES, generator)
    membership = torch.zeros(len(SUBSETS), CLASSES, dtype=torch.bool)
    for m, subset in enumerate(SUBSETS):
        membership[m, subset] = True
    active = active_specialists(generalist, membership, top_n=2)
    outputs = {m: _softmax(int(active[:, m].sum()), len(subset) + 1, generator, 2.0) for m, subset in enumerate(SUBSETS)}
    return generalist, specialist_batch(CLASSES, SUBSETS, active, outputs)


def test_active_specialists_follow_the_generalists_top_classes():
    generalist = torch.tensor([[0.1, 0.6, 0.3, 0.0], [0.5, 0.0, 0.1, 0.4]])
    membership = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert active_specialists(generalist, membership, 1).tolist() == [[True, False, False], [True, False, False]]
    assert active_specialists(generalist, membership, 2).tolist() == [[True, True, False], [True, False, True]]


def test_no_active_specialist_returns_the_generalist(problem):
    generalist, batch = problem
    idle = SpecialistBatch(torch.zeros_like(batch.special), torch.zeros_like(batch.dustbin),
                           torch.zeros_like(batch.active), batch.membership)
    for solver in ("em", "gradient"):
        torch.testing.assert_close(solve(generalist, idle, solver), generalist)
    inactive_rows = ~batch.active.any(1)
    assert inactive_rows.any()
    torch.testing.assert_close(solve_em(generalist, batch)[inactive_rows], generalist[inactive_rows])


def test_without_dustbin_mass_the_answer_is_the_arithmetic_mean():
    """Specialists whose subsets hold every class the generalist believes in put nothing in their dustbins."""
    generalist = torch.tensor([[0.5, 0.3, 0.2, 0.0]], dtype=torch.float64)
    subsets = [[0, 1, 2], [0, 1, 2, 3]]
    active = torch.tensor([[True, True]])
    outputs = {0: torch.tensor([[0.2, 0.2, 0.6, 0.0]], dtype=torch.float64),
               1: torch.tensor([[0.1, 0.1, 0.1, 0.7, 0.0]], dtype=torch.float64)}
    batch = specialist_batch(4, subsets, active, outputs)
    expected = (generalist + torch.tensor([[0.2, 0.2, 0.6, 0.0]]) + torch.tensor([[0.1, 0.1, 0.1, 0.7]])) / 3
    torch.testing.assert_close(solve_em(generalist, batch), expected.double())


def test_golden_numbers_of_one_dustbin_specialist():
    """p_g = (.5, .3, .2), specialist on {0, 1} says (.6, .2 | dustbin .2). By hand: class 2 is seen only by the
    generalist and the dustbin, so q_2 = (.2 + .2 q_2 / q_2) / 2 = .2; then q_0 = (.5 + .6) / 2, q_1 = (.3 + .2) / 2."""
    generalist = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    batch = specialist_batch(3, [[0, 1]], torch.tensor([[True]]), {0: torch.tensor([[0.6, 0.2, 0.2]])})
    torch.testing.assert_close(solve_em(generalist, batch), torch.tensor([[0.55, 0.25, 0.2]], dtype=torch.float64))


def test_em_and_gradient_descent_agree_and_give_distributions(problem):
    generalist, batch = problem
    em, gradient = solve_em(generalist, batch), solve_gradient(generalist, batch)
    assert (em - gradient).abs().max() < 1e-5
    for q in (em, gradient):
        assert (q >= 0).all()
        torch.testing.assert_close(q.sum(1), torch.ones(len(q), dtype=torch.float64))
    assert objective(em, generalist, batch).sum() <= objective(gradient, generalist, batch).sum() + 1e-9


def test_em_is_the_optimum_of_eq5(problem):
    """No random feasible perturbation of the EM answer lowers the objective (it is convex in q)."""
    generalist, batch = problem
    em = solve_em(generalist, batch)
    best = objective(em, generalist, batch)
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        direction = torch.randn(em.shape, generator=generator, dtype=torch.float64) * em * 1e-3
        nudged = (em + direction - em * direction.sum(1, keepdim=True)).clamp_min(1e-12)
        nudged = nudged / nudged.sum(1, keepdim=True)
        assert (objective(nudged, generalist, batch) >= best - 1e-12).all()


def test_gradients_flow_through_the_dustbin_aggregation(problem):
    generalist, batch = problem
    rows = batch.active.any(1)
    part = SpecialistBatch(batch.special[rows][:4], batch.dustbin[rows][:4], batch.active[rows][:4],
                           batch.membership)
    logits = generalist[rows][:4].log().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: objective(torch.softmax(z, 1), generalist[rows][:4], part), (logits,))
    only_dustbin = SpecialistBatch(torch.zeros_like(part.special), part.dustbin, part.active, part.membership)
    (grad,) = torch.autograd.grad(objective(torch.softmax(logits, 1), torch.zeros_like(logits), only_dustbin).sum(),
                                  logits)
    assert grad.abs().sum() > 0  # the dustbin term alone moves the logits
