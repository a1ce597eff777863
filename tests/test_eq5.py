import pytest
import torch

from specialists.eq5 import (SpecialistBatch, active_specialists, lumped_batch, objective, solve_em, solve_gradient,
                             solve_lumped, specialist_batch)

SUBSETS = [list(range(0, 8)), list(range(6, 15)), list(range(20, 30))]
CLASSES = 30


def _softmax(rows: int, columns: int, generator: torch.Generator, scale: float = 3.0) -> torch.Tensor:
    return torch.softmax(torch.randn(rows, columns, generator=generator, dtype=torch.float64) * scale, dim=1)


def _parts(classes: int, subsets: list[list[int]], rows: int, top_n: int, seed: int, peak: float = 3.0):
    """A generalist's probabilities (rows, classes), the active mask and each active specialist's outputs."""
    generator = torch.Generator().manual_seed(seed)
    generalist = _softmax(rows, classes, generator, peak)
    membership = torch.zeros(len(subsets), classes, dtype=torch.bool)
    for m, subset in enumerate(subsets):
        membership[m, subset] = True
    active = active_specialists(generalist, membership, top_n)
    outputs = {m: _softmax(int(active[:, m].sum()), len(subset) + 1, generator, 2.0)
               for m, subset in enumerate(subsets)}
    return generalist, active, outputs


@pytest.fixture
def problem() -> tuple[torch.Tensor, SpecialistBatch]:
    """64 inputs, 30 classes, three specialists (two overlapping) active on the generalist's top-2 classes."""
    generalist, active, outputs = _parts(CLASSES, SUBSETS, 64, top_n=2, seed=0)
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
    for solve in (solve_em, solve_gradient):
        torch.testing.assert_close(solve(generalist, idle), generalist)
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


def test_lumped_solver_is_the_dense_optimum_in_float64():
    generalist, active, outputs = _parts(CLASSES, SUBSETS, 64, top_n=2, seed=0)
    dense = solve_em(generalist, specialist_batch(CLASSES, SUBSETS, active, outputs), tol=1e-14, max_iter=100_000)
    lumped = solve_lumped(lumped_batch(generalist, SUBSETS, active, outputs), tol=1e-14)
    assert active.any(1).any() and not active.any(1).all()
    torch.testing.assert_close(lumped, dense, rtol=0, atol=1e-12)
    inactive = ~active.any(1)
    assert torch.equal(lumped[inactive], generalist[inactive])


def test_lumped_solver_in_float32_stays_within_1e_6_of_dense_float64():
    """2,000 classes, 40 overlapping subsets of 94-100 classes and two halves of all classes, five active
    specialists per input on a peaked generalist: rows whose active subsets hold every class (no lumped mass), and
    rows where plain EM contracts slowly (the dense reference runs to 1e-14)."""
    generator = torch.Generator().manual_seed(3)
    classes = 2000
    subsets = [sorted(torch.randperm(classes, generator=generator)[:100 - m % 7].tolist()) for m in range(40)]
    subsets += [list(range(classes // 2)), list(range(classes // 2, classes))]
    generalist, active, outputs = _parts(classes, subsets, 128, top_n=5, seed=4, peak=5.0)
    assert active[:, -2:].all(1).any()
    dense = solve_em(generalist, specialist_batch(classes, subsets, active, outputs), tol=1e-14, max_iter=100_000)
    single = lumped_batch(generalist.float(), subsets, active, {m: p.float() for m, p in outputs.items()})
    q = solve_lumped(single)
    assert q.dtype == torch.float32 and (q >= 0).all()
    assert (q.double() - dense).abs().max() <= 1e-6
    torch.testing.assert_close(q.sum(1), torch.ones(len(q)))


def test_lumped_golden_numbers_of_one_dustbin_specialist():
    """The hand-solved case above, through the lumped batch: class 2 is the lumped class."""
    generalist = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    batch = lumped_batch(generalist, [[0, 1]], torch.tensor([[True]]), {0: torch.tensor([[0.6, 0.2, 0.2]])})
    assert batch.columns.tolist() == [[0, 1, 3]]  # the subset, then a padding column (class id C = 3)
    torch.testing.assert_close(solve_lumped(batch), torch.tensor([[0.55, 0.25, 0.2]], dtype=torch.float64))
