"""What the stages of one `distillery run` share: the config, the run folder, where models train, every model's
seed, and the training curves and times of the models trained so far."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from distill.config import Device, LossWeights, ModelSpec, RunConfig, TrainConfig, to_dict
from distill.data import Dataset
from distill.errors import ConfigError
from distill.provenance import git_sha
from distill.seed import derive_seed, set_seed
from distill.storage import fingerprint
from distill.streamed import Inputs
from distill.train import HARD_LABELS, EpochRecord, SoftTargets, TopKSoftTargets
from distillery.progress import Progress
from ensembles.fanout import train_jobs
from ensembles.jobs import JobData, JobResult, TrainedModel, TrainJob, load_job_model


class RunContext:
    def __init__(self, config: RunConfig, out_dir: Path, progress: Progress):
        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        self.seed = set_seed(config.seed)
        self.cluster = config.cluster  # where models train: the config's, or this process (see pipeline._uses_ray)
        self.git_sha = git_sha()  # now: the code this run imported, whatever is committed while it runs
        self.device = resolve_device(config.device)
        self.seeds: dict[str, int] = {}
        self.data_key = ""  # the data's fingerprint, once loaded
        self.history: dict[str, list[EpochRecord]] = {}
        self.seconds: dict[str, float] = {}

    def model_seed(self, name: str) -> int:
        """The seed of model (or random step) `name`, derived from the run's seed and recorded in metrics.json."""
        self.seeds[name] = derive_seed(self.seed, name)
        return self.seeds[name]

    def inputs_key(self, upstream: dict | None = None) -> str:
        """What a model or stage learns from beyond the config: the data, and `upstream` (models' checksums)."""
        return fingerprint({"data": self.data_key, **(upstream or {})})

    def job(self, name: str, spec: ModelSpec, data: Dataset, train_config: TrainConfig,
            weights: LossWeights = HARD_LABELS, upstream: dict | None = None, seed_of: str | None = None) -> TrainJob:
        """Model `name`'s training job; `seed_of` names another model whose seed it shares (a control that should
        differ from that model only in what it learns from)."""
        self.seeds[name] = self.model_seed(seed_of or name)
        return TrainJob(name, spec, train_config, self.seeds[name], data.num_classes, data.input_shape, weights,
                        to_dict(self.config), inputs=self.inputs_key(upstream))

    def train(self, jobs: list[tuple[TrainJob, JobData]], label: str, here: bool = False) -> list[TrainedModel]:
        """Train `jobs` in parallel (in this process with `here`), or reuse / resume them from the run folder, with
        a progress bar labelled `label`; returns the finished models in job order."""
        cluster = dataclasses.replace(self.cluster, executor="local") if here else self.cluster
        with self.progress.training(self.out_dir, [job for job, _ in jobs], label) as bar:
            results = train_jobs(jobs, self.out_dir, cluster, watch=bar.refresh)
        for result in results.values():
            self._record(result)
        return [load_job_model(self.out_dir, job.name, self.device) for job, _ in jobs]

    def fit(self, name: str, spec: ModelSpec, data: Dataset, inputs: Inputs, labels: torch.Tensor,
            train_config: TrainConfig, weights: LossWeights = HARD_LABELS,
            targets: SoftTargets | TopKSoftTargets | None = None, upstream: dict | None = None,
            seed_of: str | None = None) -> TrainedModel:
        """Train model `name` in this process (its soft targets live here), or reuse / resume it."""
        job = self.job(name, spec, data, train_config, weights, upstream, seed_of)
        (model,) = self.train([(job, JobData(inputs, labels, targets, (data.x_test, data.y_test)))], name, here=True)
        return model

    def _record(self, result: JobResult) -> None:
        self.history[result.name], self.seconds[result.name] = result.history, result.train_seconds


def resolve_device(name: Device) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is available (use device=cpu or auto)")
    return torch.device(name)
