"""The specialists' training jobs (docs/method.md section 4, steps 3-5): one per subset, initialised from the
generalist and trained on half special, half other examples, with the dustbin shift each gets once trained; and
the compute-matched control, the generalist trained on for as many example-epochs as its specialists used.

The jobs are plain values (`ensembles.jobs.TrainJob`); the orchestration fans them out with the ensemble members'
machinery, so specialists get the same per-epoch checkpoints, retries and `--resume`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from distill.config import RunConfig, to_dict
from distill.data import Dataset
from distill.errors import ConfigError
from distill.losses import softmax_at
from distill.streamed import Inputs
from distill.train import HARD_LABELS, SoftTargets, predict_logits
from ensembles.jobs import JobData, TrainedModel, TrainJob
from specialists.specialist import (dustbin_shift, penultimate_features, specialist_data, specialist_labels,
                                    specialist_state)

INIT_ROWS = 10_000  # training inputs the dustbin row is fitted on: enough for a least-squares fit of ~1,000 weights
COMPUTE_MATCHED = "generalist_matched"  # the control's model name
GENERALIST_STUDENT = "generalist_student"  # the student control's model name: distilled from the generalist alone


@dataclass
class SpecialistJobs:
    """One training job per subset with its data, the dustbin shift each specialist gets once trained (0 without
    `dustbin_correction`), and the example-epochs they consume together (what the compute-matched control gets)."""

    jobs: list[tuple[TrainJob, JobData]]
    shifts: list[float]
    example_epochs: int


def specialist_jobs(config: RunConfig, subsets: list[list[int]], generalist: TrainedModel, data: Dataset,
                    seed_of: Callable[[str], int], inputs_of: Callable[[dict], str]) -> SpecialistJobs:
    """The specialists' jobs, initialised from the generalist, on half special data. `inputs_of(upstream)`
    fingerprints what a job learns from (the data and the generalist, which the caller knows, and here the
    subset)."""
    settings = config.specialists
    sample = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed_of("specialist_init")))
    init_features = penultimate_features(generalist.model, data.x_train[sample[:INIT_ROWS].to(data.x_train.device)])
    jobs, shifts, example_epochs = [], [], 0
    for m, subset in enumerate(subsets):
        natural = torch.isin(data.y_train.cpu(), torch.tensor(subset)).float().mean().item()
        if natural in (0.0, 1.0):
            raise ConfigError(f"specialist {m}'s subset holds {'no' if natural == 0 else 'every'} training example: "
                              "lower specialists.clustering.overlap or min_size")
        name = f"specialist_{m}"
        seed = seed_of(name)
        chosen = specialist_data(data.y_train, subset, seed)
        inputs = data.x_train[chosen.indices.to(data.x_train.device)]
        soft = settings.loss.w_soft > 0
        targets = folded_targets(generalist, inputs, subset, settings.loss.temperature) if soft else None
        job = TrainJob(name, generalist.spec, settings.train, seed, len(subset) + 1, data.input_shape, settings.loss,
                       to_dict(config), specialist_state(generalist.model, subset, init_features),
                       inputs_of({"subset": subset}))
        jobs.append((job, JobData(inputs, chosen.labels.to(inputs.device), targets,
                                  (data.x_test, specialist_labels(data.y_test, subset).to(inputs.device)))))
        shifts.append(dustbin_shift(natural, chosen.special_share) if settings.dustbin_correction else 0.0)
        example_epochs += len(chosen.indices) * settings.train.epochs
    return SpecialistJobs(jobs, shifts, example_epochs)


def folded_targets(generalist: TrainedModel, inputs: Inputs, subset: list[int],
                   temperature: float) -> SoftTargets:
    """The generalist's distribution at `temperature` in a specialist's output space: its subset's classes, then
    all other mass in the dustbin; kept as logits T log p, so the training loop's softmax at T gives it back."""
    probs = softmax_at(predict_logits(generalist.model, inputs, precision=generalist.precision), temperature)
    others = torch.ones(probs.shape[1], dtype=torch.bool, device=probs.device)
    others[subset] = False
    folded = torch.cat([probs[:, subset], probs[:, others].sum(1, keepdim=True)], dim=1)
    return SoftTargets(logits=temperature * folded.clamp_min(torch.finfo(folded.dtype).tiny).log())


def matched_epochs(example_epochs: int, training_examples: int) -> int:
    """Whole epochs over the training set nearest to `example_epochs` (at least one)."""
    return max(1, round(example_epochs / training_examples))


def compute_matched_job(config: RunConfig, generalist: TrainedModel, data: Dataset, example_epochs: int, seed: int,
                        inputs: str) -> tuple[TrainJob, JobData]:
    """The control: the generalist's weights trained on with its own settings (`teacher.train`, a fresh schedule,
    hard labels) on the whole training set, for `matched_epochs` epochs. A specialists' gain it matches is extra
    training, not specialisation.

    Why the generalist's settings and not the specialists': on EMNIST (configs/emnist_specialists.yaml, one seed)
    35 more epochs at the specialists' constant rate left the generalist worse than it was (80.95 % against
    82.00 %), a control that flatters the specialists."""
    train = dataclasses.replace(config.teacher.train, epochs=matched_epochs(example_epochs, len(data.y_train)))
    job = TrainJob(COMPUTE_MATCHED, generalist.spec, train, seed, data.num_classes, data.input_shape, HARD_LABELS,
                   to_dict(config), {key: value.clone() for key, value in generalist.model.state_dict().items()},
                   inputs)
    return job, JobData(data.x_train, data.y_train, None, (data.x_test, data.y_test))
