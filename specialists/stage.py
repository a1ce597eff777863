"""The specialist stages of a run (method.md section 4): cluster the classes, train the specialists in parallel
through the ensembles fan-out, combine them with the generalist, and measure what they changed.

Each function takes and returns plain values; the run folder gets `specialists/subsets.json` and the affinity
figure (reused by --resume while their manifest matches), and one checkpoint per specialist (`specialist_M.pt`,
trained by `ensembles.jobs`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from distill.config import ModelSpec, RunConfig, SpecialistsConfig, to_dict
from distill.data import Dataset
from distill.errors import ConfigError
from distill.evaluate import classification_metrics
from distill.models import freeze
from distill.storage import atomic_write_json, fingerprint
from distill.train import HARD_LABELS, predict_logits
from ensembles.fanout import train_jobs
from ensembles.jobs import JobData, JobResult, TrainJob, load_job_model
from specialists.combined import SpecialistEnsemble
from specialists.covariance import CovarianceAccumulator, confusion_affinity
from specialists.figures import plot_affinity
from specialists.specialist import dustbin_shift, specialist_data, specialist_labels, specialist_state
from specialists.study import conditional_accuracy, gain_by_coverage, relative_gain
from specialists.subsets import Subsets, adjusted_rand_index, find_subsets, normalised_columns

log = logging.getLogger(__name__)

FOLDER = "specialists"
INIT_ROWS = 10_000  # training inputs the dustbin row is fitted on: enough for a least-squares fit of ~1,000 weights


def cluster_classes(config: SpecialistsConfig, generalist: nn.Module, data: Dataset, seed: int,
                    run_dir: Path) -> dict:
    """The special subsets (method.md section 4, step 2), written with how they were found to `subsets_path`,
    and the affinity figure to `affinity_path` (the pipeline decides, from its manifest, whether to reuse them)."""
    started = time.perf_counter()
    clustering = config.clustering
    affinity, dropped = _affinity(config, generalist, data)
    matrix = normalised_columns(affinity) if clustering.normalize else affinity
    subsets = find_subsets(matrix, config.count, clustering.overlap, clustering.min_size, clustering.max_size,
                           clustering.algorithm, seed)
    record = {"subsets": subsets.subsets, "clusters": subsets.clusters, "source": clustering.source,
              "covariance_dropped_mass": dropped, "seconds": time.perf_counter() - started,
              "sizes": [len(subset) for subset in subsets.subsets],
              "uncovered_classes": int((subsets.coverage(data.num_classes) == 0).sum()),
              "ari": adjusted_rand_index(subsets.clusters, data.groups) if data.groups is not None else None}
    scaled = "\n(diagonal zeroed, unit columns)" if clustering.normalize else ""
    plot_affinity(matrix, subsets.clusters, affinity_path(run_dir),
                  f"{clustering.source} of the generalist's predictions, {config.count} clusters{scaled}")
    atomic_write_json(subsets_path(run_dir), record)
    return record


def subsets_path(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER / "subsets.json"


def affinity_path(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER / "affinity.png"


def _affinity(config: SpecialistsConfig, generalist: nn.Module, data: Dataset) -> tuple[torch.Tensor, float | None]:
    """The class-affinity matrix (C, C) on the training inputs, and the probability mass top-k dropped."""
    clustering = config.clustering
    if clustering.source == "confusion":
        predicted = predict_logits(generalist, data.x_train).argmax(1)
        return confusion_affinity(predicted.cpu(), data.y_train.cpu(), data.num_classes), None
    accumulator = CovarianceAccumulator(data.num_classes, clustering.top_k)
    for chunk in data.x_train.split(8192):
        accumulator.update(torch.softmax(predict_logits(generalist, chunk) / clustering.temperature, dim=1))
    return accumulator.covariance(), accumulator.dropped_mass if clustering.top_k else None


def specialist_jobs(config: RunConfig, subsets: list[list[int]], generalist: nn.Module, spec: ModelSpec,
                    data: Dataset, seed_of: Callable[[str], int], inputs_of: Callable[[dict], str]
                    ) -> tuple[list[tuple[TrainJob, JobData]], list[float]]:
    """One training job per subset (initialised from the generalist, half special data), and the dustbin shift
    each specialist gets once trained (0 without `dustbin_correction`). `inputs_of(upstream)` fingerprints
    what a job learns from (the data and the generalist, which the caller knows, and here the subset)."""
    sample = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed_of("specialist_init")))
    init_inputs = data.x_train[sample[:INIT_ROWS].to(data.x_train.device)]
    jobs, shifts = [], []
    for m, subset in enumerate(subsets):
        natural = torch.isin(data.y_train.cpu(), torch.tensor(subset)).float().mean().item()
        if natural in (0.0, 1.0):
            raise ConfigError(f"specialist {m}'s subset holds {'no' if natural == 0 else 'every'} training example: "
                              "lower specialists.clustering.overlap or min_size")
        name = f"specialist_{m}"
        seed = seed_of(name)
        chosen = specialist_data(data.y_train, subset, seed)
        job = TrainJob(name, spec, config.specialists.train, seed, len(subset) + 1, data.input_shape, HARD_LABELS,
                       to_dict(config), specialist_state(generalist, subset, init_inputs),
                       inputs_of({"subset": subset}))
        device = data.x_train.device
        jobs.append((job, JobData(data.x_train[chosen.indices.to(device)], chosen.labels.to(device), None,
                                  (data.x_test, specialist_labels(data.y_test, subset).to(device)))))
        shifts.append(dustbin_shift(natural, chosen.special_share) if config.specialists.dustbin_correction else 0.0)
    return jobs, shifts


def train_specialists(config: RunConfig, subsets: list[list[int]], generalist: nn.Module, spec: ModelSpec,
                      data: Dataset, seed_of: Callable[[str], int], inputs_of: Callable[[dict], str], run_dir: Path,
                      progress: bool = False) -> tuple[SpecialistEnsemble, dict[str, JobResult], dict[str, str]]:
    """Train every specialist in parallel (or reuse / resume it) and return the combined model, the job results
    and each specialist's checkpoint checksum."""
    jobs, shifts = specialist_jobs(config, subsets, generalist, spec, data, seed_of, inputs_of)
    results = train_jobs(jobs, run_dir, config.cluster, progress, label="specialists")
    device = data.x_train.device
    loaded = [load_job_model(run_dir, job.name, device) for job, _ in jobs]
    ensemble = SpecialistEnsemble(generalist, [freeze(model) for model, _ in loaded], subsets, shifts,
                                  config.specialists.top_n, config.specialists.solver)
    return ensemble, results, {job.name: checksum for (job, _), (_, checksum) in zip(jobs, loaded)}


def combined_identity(checksums: dict[str, str], ensemble: SpecialistEnsemble, temperature: float) -> str:
    """A checksum-like key of the combined model at `temperature`, for the soft-target cache."""
    parts = {"checksums": checksums, "subsets": ensemble.subsets, "shifts": ensemble.dustbin_shifts,
             "top_n": ensemble.top_n, "solver": ensemble.solver, "temperature": temperature}
    return fingerprint(parts)


def study(ensemble: SpecialistEnsemble, clustering: dict, generalist_logits: torch.Tensor,
          combined_log_probs: torch.Tensor, data: Dataset) -> dict:
    """The metrics.json `specialists` section: subsets, ARI, overall and conditional top-1 of the generalist and
    the combined model, the gain by coverage (the paper's Table 4), and each specialist's dustbin."""
    labels = data.y_test
    coverage = Subsets(ensemble.subsets, clustering["clusters"]).coverage(data.num_classes)
    overall = {name: classification_metrics(logits, labels)["accuracy"]
               for name, logits in (("generalist", generalist_logits), ("combined", combined_log_probs))}
    conditional = {name: conditional_accuracy(logits.cpu(), labels.cpu(), ensemble.subsets)
                   for name, logits in (("generalist", generalist_logits), ("combined", combined_log_probs))}
    table = gain_by_coverage(generalist_logits.cpu(), combined_log_probs.cpu(), labels.cpu(), coverage)
    return {**clustering, "top_n": ensemble.top_n, "solver": ensemble.solver,
            "dustbin_shifts": ensemble.dustbin_shifts,
            "top1": {**overall, "relative_gain": relative_gain(overall["generalist"], overall["combined"])},
            "conditional_top1": {**conditional, "relative_gain": relative_gain(conditional["generalist"] or 0.0,
                                                                               conditional["combined"] or 0.0)},
            "gain_by_coverage": table}
