"""Measures of a model's predictions, and output-bias correction for classes absent from the transfer set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Reliability:
    """A reliability diagram's data over equal-width confidence bins: per bin the number of examples, their mean
    top-1 confidence and their top-1 accuracy (0 where a bin is empty)."""

    count: list[int]
    confidence: list[float]
    accuracy: list[float]


@dataclass
class ModelMetrics:
    """What is measured of one model on the test set: metrics.json's entry for each model.

    agreement (top-1) and kl_to_teacher (mean KL(teacher || model)) are measured against the model the students
    learn from, for students only; train_seconds is set for the models the run trained; precision is that of the
    model's matrix products (for a combination: its models', or "mixed").
    """

    accuracy: float
    errors: int
    nll: float
    ece: float
    reliability: Reliability
    per_class_errors: list[int]
    agreement: float | None = None
    kl_to_teacher: float | None = None
    train_seconds: float | None = None
    precision: str | None = None


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> Reliability:
    """The reliability diagram's data of probs (N, C) against labels (N,) over `bins` confidence bins."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    bin_index = (confidence * bins).long().clamp_(max=bins - 1)
    count = torch.bincount(bin_index, minlength=bins).float()
    per_bin = count.clamp(min=1)
    return Reliability(count.long().tolist(),
                       (torch.bincount(bin_index, weights=confidence, minlength=bins) / per_bin).tolist(),
                       (torch.bincount(bin_index, weights=correct, minlength=bins) / per_bin).tolist())


def calibration_error(table: Reliability) -> float:
    """ECE = sum_b |B|/N * |accuracy(B) - confidence(B)| over the bins of a `reliability` table."""
    count, accuracy, confidence = (torch.tensor(values, dtype=torch.float64)
                                   for values in (table.count, table.accuracy, table.confidence))
    return ((count * (accuracy - confidence).abs()).sum() / count.sum()).item()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE of probs (N, C) over `bins` equal-width confidence bins."""
    return calibration_error(reliability(probs, labels, bins))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           teacher_logits: torch.Tensor | None = None) -> ModelMetrics:
    """Accuracy, errors, NLL, ECE, its reliability bins and per-class errors; with a teacher, top-1 agreement
    and mean KL(teacher || model)."""
    logits, labels = logits.float().cpu(), labels.cpu()
    log_probs = F.log_softmax(logits, dim=1)
    predicted = logits.argmax(dim=1)
    wrong = predicted != labels
    num_classes = logits.shape[1]
    bins = reliability(log_probs.exp(), labels)
    metrics = ModelMetrics(accuracy=1.0 - wrong.float().mean().item(), errors=int(wrong.sum()),
                           nll=F.nll_loss(log_probs, labels).item(), ece=calibration_error(bins), reliability=bins,
                           per_class_errors=torch.bincount(labels[wrong], minlength=num_classes).tolist())
    if teacher_logits is not None:
        teacher_log_probs = F.log_softmax(teacher_logits.float().cpu(), dim=1)
        metrics.agreement = (teacher_log_probs.argmax(dim=1) == predicted).float().mean().item()
        metrics.kl_to_teacher = F.kl_div(log_probs, teacher_log_probs, log_target=True, reduction="batchmean").item()
    return metrics


def shift_logits(logits: torch.Tensor, shifts: dict[int, float]) -> torch.Tensor:
    """Add `shifts[c]` to the logit (the output bias) of each listed class c."""
    shifted = logits.clone()
    for cls, shift in shifts.items():
        shifted[:, cls] += shift
    return shifted


def prior_matching_shift(logits: torch.Tensor, classes: list[int], target_share: float,
                         low: float = -50.0, high: float = 50.0, steps: int = 60) -> float:
    """One logit shift b for `classes` so that the model predicts them for a `target_share` of the inputs.

    No labels of the inputs are used: `logits` are the model's outputs on unlabeled data and `target_share` is
    the classes' share of the training labels (their prior). The predicted share only grows with b, so
    bisection finds the smallest b that reaches the prior.
    """
    def share(shift: float) -> float:
        predicted = shift_logits(logits, dict.fromkeys(classes, shift)).argmax(dim=1)
        return torch.isin(predicted, torch.tensor(classes)).float().mean().item()

    for _ in range(steps):
        middle = (low + high) / 2
        if share(middle) < target_share:
            low = middle
        else:
            high = middle
    return high


def shift_tuned_on_labels(logits: torch.Tensor, labels: torch.Tensor, classes: list[int], low: float = -20.0,
                     high: float = 20.0, step: float = 0.05) -> float:
    """The shift for `classes` with the fewest errors on these labelled data: what the paper did on its test set.

    Tuned on test labels it is an optimistic reference for the shifts chosen without them, not a method to use.
    Ties go to the shift closest to zero.
    """
    shifts = torch.arange(round(low / step), round(high / step) + 1, dtype=torch.float64) * step  # exact 0.0
    shifts = shifts[shifts.abs().argsort(stable=True)]
    errors = torch.stack([(shift_logits(logits, dict.fromkeys(classes, s.item())).argmax(1) != labels).sum()
                          for s in shifts])
    return shifts[errors.argmin()].item()
