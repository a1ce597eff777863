"""What specialists changed, measured as the paper does (docs/method.md sections 4 and 5): metrics.json's
`specialists` section."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.config import Eq5Solver
from distill.measures import classification_metrics
from specialists.combiner import SpecialistEnsemble
from specialists.subsets import Subsets

COVERAGE_BUCKETS = 10  # the paper's table ends in "10 or more"


@dataclass
class TopOne:
    """Top-1 accuracy of the generalist alone and of its combination with the specialists (None where no example
    counts), and the relative change between them."""

    generalist: float | None
    combined: float | None
    relative_gain: float | None


@dataclass
class CoverageRow:
    """One row of the paper's Table 4: the test examples whose true class `covering` specialists cover."""

    covering: str
    examples: int
    generalist_accuracy: float
    combined_accuracy: float
    relative_change: float | None


@dataclass
class ComputeMatched:
    """The control: the generalist trained on for `epochs` more epochs, about the `example_epochs` its specialists
    consumed together; `top1` compares it (as "generalist") with the generalist + specialists."""

    epochs: int
    example_epochs: int
    top1: TopOne


@dataclass
class SpecialistsMetrics:
    """The subsets and how they were found, the combiner's settings, overall and conditional top-1, the gain by
    coverage, each specialist's training seconds, and the compute-matched control where it was trained."""

    clustering: Subsets
    top_n: int
    solver: Eq5Solver
    dustbin_shifts: list[float]
    top1: TopOne
    conditional_top1: TopOne
    gain_by_coverage: list[CoverageRow]
    train_seconds: dict[str, float]
    compute_matched: ComputeMatched | None = None


def measure_specialists(ensemble: SpecialistEnsemble, clustering: Subsets, generalist_logits: torch.Tensor,
                        combined_log_probs: torch.Tensor, labels: torch.Tensor, train_seconds: dict[str, float],
                        matched: tuple[torch.Tensor, int, int] | None = None) -> SpecialistsMetrics:
    """The section for a generalist's test logits and the combination's test log-probabilities (N, C); `matched`:
    the compute-matched generalist's test logits, its epochs and the specialists' example-epochs."""
    overall = [classification_metrics(logits, labels).accuracy for logits in (generalist_logits, combined_log_probs)]
    conditional = [conditional_accuracy(logits.cpu(), labels.cpu(), ensemble.subsets)
                   for logits in (generalist_logits, combined_log_probs)]
    table = gain_by_coverage(generalist_logits.cpu(), combined_log_probs.cpu(), labels.cpu(), clustering.coverage())
    control = None
    if matched is not None:
        matched_logits, epochs, example_epochs = matched
        against = [classification_metrics(matched_logits, labels).accuracy, overall[1]]
        control = ComputeMatched(epochs, example_epochs, TopOne(*against, relative_gain(*against)))
    return SpecialistsMetrics(
        clustering, ensemble.top_n, ensemble.solver, ensemble.dustbin_shifts,
        TopOne(*overall, relative_gain(*overall)),
        TopOne(*conditional, relative_gain(conditional[0] or 0.0, conditional[1] or 0.0)), table, train_seconds,
        control)


def conditional_accuracy(log_probs: torch.Tensor, labels: torch.Tensor, subsets: list[list[int]]) -> float | None:
    """Top-1 accuracy on examples of special classes with predictions restricted to the subset (the paper's
    "conditional" accuracy). With overlapping subsets every (example, subset holding its class) pair counts once.
    log_probs (N, C), labels (N,). None when no example belongs to any subset."""
    correct, total = 0, 0
    for subset in subsets:
        index = torch.tensor(subset, device=labels.device)
        rows = torch.isin(labels, index)
        if rows.any():
            predicted = index[log_probs[rows][:, index].argmax(1)]
            correct += int((predicted == labels[rows]).sum())
            total += int(rows.sum())
    return correct / total if total else None


def gain_by_coverage(generalist_logits: torch.Tensor, combined_log_probs: torch.Tensor, labels: torch.Tensor,
                     coverage: torch.Tensor) -> list[CoverageRow]:
    """The paper's Table 4: top-1 accuracy of the generalist and of the combined model, and the relative change,
    grouped by how many specialists cover each example's true class (0, 1, ..., 9, "10+"). coverage (C,)."""
    covering = coverage.to(labels.device)[labels].clamp(max=COVERAGE_BUCKETS)
    generalist_right = generalist_logits.argmax(1) == labels
    combined_right = combined_log_probs.argmax(1) == labels
    rows = []
    for bucket in covering.unique().tolist():
        chosen = covering == bucket
        before, after = generalist_right[chosen].float().mean().item(), combined_right[chosen].float().mean().item()
        rows.append(CoverageRow(f"{COVERAGE_BUCKETS}+" if bucket == COVERAGE_BUCKETS else str(bucket),
                                int(chosen.sum()), before, after, relative_gain(before, after)))
    return rows


def relative_gain(before: float, after: float) -> float | None:
    """(after - before) / before: the paper's "+4.4 % relative" for 25.0 % -> 26.1 %."""
    return (after - before) / before if before else None
