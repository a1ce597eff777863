"""The specialists' training jobs (docs/method.md section 4, steps 3-5): one per subset, initialised from the
generalist and trained on half special, half other examples, with the dustbin shift each gets once trained.

The jobs are plain values (`ensembles.jobs.TrainJob`); the orchestration fans them out with the ensemble members'
machinery, so specialists get the same per-epoch checkpoints, retries and `--resume`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from distill.config import ModelSpec, RunConfig, to_dict
from distill.data import Dataset
from distill.errors import ConfigError
from distill.train import HARD_LABELS
from ensembles.jobs import JobData, TrainJob
from specialists.specialist import dustbin_shift, specialist_data, specialist_labels, specialist_state

INIT_ROWS = 10_000  # training inputs the dustbin row is fitted on: enough for a least-squares fit of ~1,000 weights


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
