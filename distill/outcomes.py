"""Every model's answer on every test example: what paired comparisons between models resample.

metrics.json holds each model's totals; a paired bootstrap (distill.intervals) needs the per-example scores behind
them, on the same examples for both models. They are saved as one NumPy archive per run, `test_outcomes.npz`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.storage import atomic_write_bytes


@dataclass
class ModelOutcomes:
    """One model on the test set: its predicted class and the log-probability it gave the true class, per example."""

    predicted: np.ndarray
    log_prob_true: np.ndarray

    def correct(self, labels: np.ndarray) -> np.ndarray:
        return (self.predicted == labels).astype(np.float64)


@dataclass
class TestOutcomes:
    labels: np.ndarray
    models: dict[str, ModelOutcomes]


def outcomes_of(logits: torch.Tensor, labels: torch.Tensor) -> ModelOutcomes:
    """The outcomes of logits (or log-probabilities) (N, C) against labels (N,)."""
    log_probs = F.log_softmax(logits.float().cpu(), dim=1)
    true = log_probs.gather(1, labels.cpu().long()[:, None])[:, 0]
    return ModelOutcomes(log_probs.argmax(dim=1).numpy().astype(np.int32), true.numpy().astype(np.float32))


def write_outcomes(path: Path, outcomes: TestOutcomes) -> None:
    arrays = {"labels": outcomes.labels}
    for name, model in outcomes.models.items():
        arrays[f"{name}/predicted"], arrays[f"{name}/log_prob_true"] = model.predicted, model.log_prob_true
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def read_outcomes(path: Path) -> TestOutcomes:
    with np.load(path) as archive:
        names = [key.removesuffix("/predicted") for key in archive.files if key.endswith("/predicted")]
        return TestOutcomes(archive["labels"], {name: ModelOutcomes(archive[f"{name}/predicted"],
                                                                    archive[f"{name}/log_prob_true"])
                                                for name in names})
