"""What specialists changed, measured as the paper does (method.md sections 4 and 5)."""

from __future__ import annotations

import torch

COVERAGE_BUCKETS = 10  # the paper's table ends in "10 or more"


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
                     coverage: torch.Tensor) -> list[dict]:
    """The paper's Table 4: top-1 accuracy of the generalist and of the combined model, and the relative change,
    grouped by how many specialists cover each example's true class (0, 1, ..., 9, "10+"). coverage (C,)."""
    covering = coverage.to(labels.device)[labels].clamp(max=COVERAGE_BUCKETS)
    generalist_right = generalist_logits.argmax(1) == labels
    combined_right = combined_log_probs.argmax(1) == labels
    rows = []
    for bucket in covering.unique().tolist():
        chosen = covering == bucket
        before, after = generalist_right[chosen].float().mean().item(), combined_right[chosen].float().mean().item()
        rows.append({"covering": f"{COVERAGE_BUCKETS}+" if bucket == COVERAGE_BUCKETS else str(bucket),
                     "examples": int(chosen.sum()), "generalist_accuracy": before, "combined_accuracy": after,
                     "relative_change": relative_gain(before, after)})
    return rows


def relative_gain(before: float, after: float) -> float | None:
    """(after - before) / before: the paper's "+4.4 % relative" for 25.0 % -> 26.1 %."""
    return (after - before) / before if before else None
