"""Distillation losses (Hinton, Vinyals & Dean, 2015, section 2)."""

import torch
import torch.nn.functional as F


def soft_target_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p || softmax(z / T)), averaged over the batch.

    Shapes: student_logits z is (B, C); teacher_probs p is (B, C), the teacher's softmax at the same T.
    The paper's term is the cross-entropy CE(p, q) = -sum_i p_i log q_i with q = softmax(z / T); KL differs from
    it only by the teacher's entropy, a constant with no gradient, and reads 0 when the student matches exactly.
    The factor T^2 (paper, section 2) keeps the gradient's size as T changes:
    d/dz_i = T^2 * (q_i - p_i) / T = T * (q_i - p_i) per example, before averaging over the batch.
    """
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    return temperature**2 * F.kl_div(log_q, teacher_probs, reduction="batchmean")


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE(y, softmax(z)) at T = 1, averaged over the batch. Shapes: logits (B, C), labels (B,) int64."""
    return F.cross_entropy(student_logits, labels)


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor | None, labels: torch.Tensor,
                      temperature: float, w_soft: float, w_hard: float) -> torch.Tensor:
    """The paper's weighted objective: w_soft * T^2 * KL(p_T || q_T) + w_hard * CE(y, q_1).

    Shapes: student_logits (B, C); teacher_probs (B, C) at temperature T, or None when w_soft is 0; labels (B,).
    """
    loss = student_logits.new_zeros(())
    if w_soft:
        loss = loss + w_soft * soft_target_loss(student_logits, teacher_probs, temperature)
    if w_hard:
        loss = loss + w_hard * hard_label_loss(student_logits, labels)
    return loss


def softmax_at(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax at temperature T: q_i = exp(z_i / T) / sum_j exp(z_j / T). Shape (B, C) -> (B, C)."""
    return F.softmax(logits / temperature, dim=-1)
