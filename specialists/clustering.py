"""A run's special subsets (docs/method.md section 4, step 2): the generalist's class affinity on the training
inputs, k-means into subsets, and the record of how they were found (`specialists/subsets.json`, with the affinity
figure beside it). The orchestration decides, from its stage manifest, whether an earlier result is reused."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from torch import nn

from distill.config import SpecialistsConfig
from distill.data import Dataset
from distill.precision import ComputePrecision
from distill.records import from_plain, to_plain
from distill.storage import atomic_write_json
from distill.train import predict_logits
from specialists.covariance import CovarianceAccumulator, confusion_affinity
from specialists.figures import plot_affinity
from specialists.subsets import Subsets, adjusted_rand_index, find_subsets, normalised_columns

FOLDER = "specialists"


def cluster_classes(config: SpecialistsConfig, generalist: nn.Module, data: Dataset, seed: int, run_dir: Path,
                    precision: ComputePrecision = "fp32") -> Subsets:
    """The special subsets and how they were found, written to `subsets_path`, and the affinity figure; the
    generalist predicts in `precision`."""
    started = time.perf_counter()
    clustering = config.clustering
    affinity, dropped = _affinity(config, generalist, data, precision)
    matrix = normalised_columns(affinity) if clustering.normalize else affinity
    found = find_subsets(matrix, config.count, clustering.overlap, clustering.min_size, clustering.max_size,
                         clustering.algorithm, seed)
    ari = adjusted_rand_index(found.clusters, data.groups) if data.groups is not None else None
    subsets = dataclasses.replace(found, source=clustering.source, covariance_dropped_mass=dropped, ari=ari,
                                  seconds=time.perf_counter() - started)
    scaled = "\n(diagonal zeroed, unit columns)" if clustering.normalize else ""
    plot_affinity(matrix, subsets.clusters, affinity_path(run_dir),
                  f"{clustering.source} of the generalist's predictions, {config.count} clusters{scaled}")
    atomic_write_json(subsets_path(run_dir), to_plain(subsets))
    return subsets


def read_subsets(path: Path) -> Subsets:
    return from_plain(Subsets, json.loads(Path(path).read_text()), label="subsets.json key")


def subsets_path(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER / "subsets.json"


def affinity_path(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER / "affinity.png"


def _affinity(config: SpecialistsConfig, generalist: nn.Module, data: Dataset,
              precision: ComputePrecision) -> tuple[torch.Tensor, float | None]:
    """The class-affinity matrix (C, C) on the training inputs, and the probability mass top-k dropped."""
    clustering = config.clustering
    if clustering.source == "confusion":
        predicted = predict_logits(generalist, data.x_train, precision=precision).argmax(1)
        return confusion_affinity(predicted.cpu(), data.y_train.cpu(), data.num_classes), None
    accumulator = CovarianceAccumulator(data.num_classes, clustering.top_k)
    for chunk in data.x_train.split(8192):
        logits = predict_logits(generalist, chunk, precision=precision)
        accumulator.update(torch.softmax(logits / clustering.temperature, dim=1))
    return accumulator.covariance(), accumulator.dropped_mass if clustering.top_k else None
