import math

import pytest
import torch

from distill.measures import (classification_metrics, expected_calibration_error, prior_matching_shift, shift_logits,
                              shift_tuned_on_labels)


def test_metrics_on_a_hand_made_case():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    metrics = classification_metrics(logits, labels, teacher_logits=logits)
    assert metrics.errors == 1 and metrics.accuracy == 0.75  # the tie in row 4 goes to class 0
    assert metrics.per_class_errors == [0, 1]
    confident, tie = -math.log(1 / (1 + math.exp(-2))), math.log(2)
    assert metrics.nll == pytest.approx((2 * confident + (2 + confident) + tie) / 4)
    assert metrics.agreement == 1.0 and metrics.kl_to_teacher == pytest.approx(0.0, abs=1e-7)


def test_ece_of_a_calibrated_and_an_overconfident_model():
    labels = torch.tensor([0, 0, 0, 1])
    calibrated = torch.tensor([[0.75, 0.25]] * 4)
    assert expected_calibration_error(calibrated, labels) == pytest.approx(0.0, abs=1e-6)
    overconfident = torch.tensor([[1.0, 0.0]] * 4)
    assert expected_calibration_error(overconfident, labels) == pytest.approx(0.25)


def test_shift_changes_only_listed_classes():
    logits = torch.zeros(3, 4)
    shifted = shift_logits(logits, {1: 2.0, 3: -1.0})
    assert shifted[:, 1].eq(2.0).all() and shifted[:, 3].eq(-1.0).all() and shifted[:, [0, 2]].eq(0).all()
    assert logits.eq(0).all()


def test_prior_matching_recovers_the_share_of_an_absent_class():
    torch.manual_seed(0)
    logits = torch.randn(1000, 3)
    logits[:, 2] -= 10.0  # class 2 never predicted, like a class absent from the transfer set
    shift = prior_matching_shift(logits, [2], target_share=0.3)
    share = (shift_logits(logits, {2: shift}).argmax(1) == 2).float().mean().item()
    assert share == pytest.approx(0.3, abs=0.002)
    assert 8.0 < shift < 12.0


def test_shift_tuned_on_labels_minimises_errors_and_prefers_small_shifts():
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    labels = torch.tensor([1, 1, 0, 0])

    shift = shift_tuned_on_labels(logits, labels, [1])
    # Any shift in (1, 2) turns the first two rows to class 1 and keeps the last two: 1 error, the minimum.
    assert 1.0 < shift <= 1.1
    assert shift_tuned_on_labels(torch.tensor([[0.0, 5.0]]), torch.tensor([1]), [1]) == 0.0
