import pytest
import torch
import torch.nn.functional as F

from distill.losses import (distillation_loss, distillation_loss_gradient, hard_label_loss, soft_target_loss,
                            softmax_at)


def _example(batch=6, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, classes, (batch,), generator=g)
    return student, teacher, labels


@pytest.mark.parametrize("temperature", [1.0, 2.5, 20.0])
def test_soft_target_loss_is_t_squared_cross_entropy_minus_teacher_entropy(temperature):
    student, teacher, _ = _example()
    p = softmax_at(teacher, temperature)
    q = softmax_at(student, temperature)
    cross_entropy = -(p * q.log()).sum(1).mean()
    entropy = -(p * p.log()).sum(1).mean()
    expected = temperature**2 * (cross_entropy - entropy)
    assert soft_target_loss(student, p, temperature).item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_soft_target_gradient_is_q_minus_p_over_t_times_t_squared(temperature):
    student, teacher, _ = _example()
    student.requires_grad_(True)
    p = softmax_at(teacher, temperature)
    soft_target_loss(student, p, temperature).backward()
    q = softmax_at(student.detach(), temperature)
    expected = temperature**2 * (q - p) / temperature / len(student)  # batch mean
    torch.testing.assert_close(student.grad, expected, rtol=1e-10, atol=1e-12)


def test_high_temperature_gradient_approaches_logit_matching():
    """Paper, section 2.1: for zero-mean logits and large T, dC/dz_i ~ (z_i - v_i) / (N T^2)."""
    student, teacher, _ = _example(batch=1, classes=10)
    student = (student - student.mean()).requires_grad_(True)
    teacher = teacher - teacher.mean()
    temperature = 1e4
    soft_target_loss(student, softmax_at(teacher, temperature), temperature).backward()
    logit_matching = (student.detach() - teacher) / (10 * temperature**2)
    torch.testing.assert_close(student.grad / temperature**2, logit_matching, rtol=1e-2, atol=1e-12)


def test_t1_without_hard_term_equals_plain_kl():
    student, teacher, labels = _example()
    p = F.softmax(teacher, dim=1)
    ours = distillation_loss(student, p, labels, temperature=1.0, w_soft=1.0, w_hard=0.0)
    plain = F.kl_div(F.log_softmax(student, dim=1), p, reduction="batchmean")
    assert ours.item() == pytest.approx(plain.item(), rel=1e-12)


def test_weighted_mix_is_the_sum_of_weighted_terms():
    student, teacher, labels = _example()
    p = softmax_at(teacher, 4.0)
    mix = distillation_loss(student, p, labels, temperature=4.0, w_soft=0.7, w_hard=0.3)
    expected = 0.7 * soft_target_loss(student, p, 4.0) + 0.3 * hard_label_loss(student, labels)
    assert mix.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-15), (torch.float32, 1e-7)])
@pytest.mark.parametrize("temperature, w_soft, w_hard", [(1.0, 0.0, 1.0), (4.0, 1.0, 0.0), (20.0, 0.7, 0.3),
                                                         (2.0, 1.0, 1.0)])
def test_the_closed_form_gradient_is_autograds(dtype, tolerance, temperature, w_soft, w_hard):
    student, teacher, labels = _example(batch=7, classes=11)
    student = student.to(dtype).requires_grad_()
    p = softmax_at(teacher.to(dtype), temperature)
    distillation_loss(student, p, labels, temperature, w_soft, w_hard).backward()
    closed = distillation_loss_gradient(student.detach(), p, labels, temperature, w_soft, w_hard)
    torch.testing.assert_close(closed, student.grad, rtol=0, atol=tolerance * temperature)


def test_hard_only_ignores_missing_teacher():
    student, _, labels = _example()
    loss = distillation_loss(student, None, labels, temperature=1.0, w_soft=0.0, w_hard=1.0)
    assert loss.item() == pytest.approx(F.cross_entropy(student, labels).item())


def test_perfect_match_has_zero_soft_loss():
    student, _, _ = _example()
    assert soft_target_loss(student, softmax_at(student, 3.0), 3.0).item() == pytest.approx(0.0, abs=1e-12)
