"""Distillation losses (Hinton, Vinyals & Dean, 2015, section 2)."""

import torch
import torch.nn.functional as F

from distill.config import LossWeights


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
    terms = []
    if w_soft:
        terms.append(_weighted(w_soft, soft_target_loss(student_logits, teacher_probs, temperature)))
    if w_hard:
        terms.append(_weighted(w_hard, hard_label_loss(student_logits, labels)))
    return sum(terms[1:], terms[0]) if terms else student_logits.new_zeros(())


def run_loss(logits: torch.Tensor, teacher_probs: torch.Tensor | None, labels: torch.Tensor,
             weights: LossWeights) -> torch.Tensor:
    """distillation_loss with a run's weights, on fp32 logits (a bf16 forward pass's are cast up first): the loss
    of a training step."""
    return distillation_loss(logits.float(), teacher_probs, labels, weights.temperature, weights.w_soft,
                             weights.w_hard)


def distillation_loss_gradient(student_logits: torch.Tensor, teacher_probs: torch.Tensor | None, labels: torch.Tensor,
                               temperature: float, w_soft: float, w_hard: float) -> torch.Tensor:
    """distillation_loss's gradient with respect to the student's logits in closed form (section 2 of the paper):
    w_soft * T * (q_T - p) / B + w_hard * (q_1 - y) / B, y the one-hot labels, for teacher probabilities that sum
    to 1. Arguments as distillation_loss; shape (B, C). Autograd's up to float rounding, in a few operations and
    without a graph: the written-out bf16 step (distill/bf16_step.py) uses it."""
    terms = []
    if w_soft:
        terms.append((softmax_at(student_logits, temperature) - teacher_probs).mul_(w_soft * temperature))
    if w_hard:
        hard = F.softmax(student_logits, dim=-1)
        hard.scatter_add_(1, labels[:, None], hard.new_full((len(labels), 1), -1.0))
        terms.append(hard if w_hard == 1 else hard.mul_(w_hard))
    gradient = sum(terms[1:], terms[0]) if terms else torch.zeros_like(student_logits)
    return gradient.div_(len(student_logits))


def _weighted(weight: float, term: torch.Tensor) -> torch.Tensor:
    # A weight of 1 multiplies nothing: the same numbers with one operation fewer each way, on every training step.
    return term if weight == 1 else weight * term


def softmax_at(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax at temperature T: q_i = exp(z_i / T) / sum_j exp(z_j / T). Shape (B, C) -> (B, C)."""
    return F.softmax(logits / temperature, dim=-1)
