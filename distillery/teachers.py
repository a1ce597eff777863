"""The teachers of a run: one model, an ensemble of members trained in parallel, or a teacher checkpoint given by
the user; and, with `specialists.count`, the generalist's specialists (clustering, then training in parallel)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distill.config import RunConfig, to_dict
from distill.data import Dataset
from distill.errors import CheckpointError
from distillery.context import RunContext
from distillery.manifests import StageManifest
from distillery.metrics import METRICS_VERSION
from ensembles.jobs import JobData, TrainedModel, load_trained
from specialists.clustering import affinity_path, cluster_classes, read_subsets, subsets_path
from specialists.combiner import SpecialistEnsemble
from specialists.subsets import Subsets
from specialists.training import COMPUTE_MATCHED, compute_matched_job, specialist_jobs


@dataclass
class Specialists:
    """The generalist combined with its trained specialists (eq. 5), how their subsets were found, the
    specialists themselves and the example-epochs they trained for, and the compute-matched generalist (None
    unless `specialists.compute_matched`)."""

    combiner: SpecialistEnsemble
    clustering: Subsets
    models: list[TrainedModel]
    example_epochs: int
    matched: TrainedModel | None = None


@dataclass
class Teachers:
    """The frozen teacher ("teacher", or "generalist" when it has specialists) or ensemble members ("member_0"...),
    and the specialists, if any."""

    members: list[TrainedModel]
    specialists: Specialists | None = None

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    @property
    def checksums(self) -> dict[str, str]:
        """Every model the student learns from, by name: teachers or members, and the specialists."""
        specialists = self.specialists.models if self.specialists else []
        return {model.name: model.checksum for model in [*self.members, *specialists]}


def teacher_name(config: RunConfig) -> str:
    return "generalist" if config.specialists.count else "teacher"


def train_teachers(context: RunContext, data: Dataset) -> Teachers:
    """The teacher, or the ensemble's members in parallel; member i uses ensemble.models[i % len]."""
    config = context.config
    size = config.ensemble.size
    names = [teacher_name(config)] if size == 1 else [f"member_{i}" for i in range(size)]
    specs = config.ensemble.models or [config.teacher.model]
    shared = JobData(data.x_train, data.y_train, None, (data.x_test, data.y_test))
    jobs = [(context.job(name, specs[i % len(specs)], data, config.teacher.train), shared)
            for i, name in enumerate(names)]
    return Teachers(context.train(jobs, label=names[0] if size == 1 else "members"))


def load_teacher(context: RunContext, data: Dataset) -> Teachers:
    """The trained teacher of `teacher.checkpoint`, refused unless it fits the data."""
    path = Path(context.config.teacher.checkpoint)
    teacher = load_trained(path, teacher_name(context.config), context.device)
    if teacher.num_classes != data.num_classes or teacher.input_shape != data.input_shape:
        raise CheckpointError(f"teacher checkpoint {path} is for {teacher.num_classes} classes of shape "
                              f"{teacher.input_shape}, but {data.name} has {data.num_classes} classes of "
                              f"shape {data.input_shape}")
    context.seeds[teacher.name] = teacher.seed
    return Teachers([teacher])


def train_specialists(context: RunContext, data: Dataset, generalist: TrainedModel) -> Specialists:
    """Cluster the classes on the generalist's predictions, then train one specialist per subset in parallel."""
    config = context.config
    upstream = {generalist.name: generalist.checksum}
    context.progress.announce("clustering")
    seed = context.model_seed("clustering")
    manifest = StageManifest(context.out_dir, "clustering", {
        "inputs": context.inputs_key(upstream), "seed": seed, "config": to_dict(config.specialists.clustering),
        "count": config.specialists.count, "schema": METRICS_VERSION})
    if manifest.reusable():
        clustering = read_subsets(subsets_path(context.out_dir))
    else:
        clustering = cluster_classes(config.specialists, generalist.model, data, seed, context.out_dir,
                                     generalist.precision)
        manifest.seal([subsets_path(context.out_dir), affinity_path(context.out_dir)])
    context.progress.announce("specialists")

    def inputs_of(more: dict) -> str:
        return context.inputs_key({**upstream, **more})

    planned = specialist_jobs(config, clustering.subsets, generalist, data, context.model_seed, inputs_of)
    jobs = list(planned.jobs)
    if config.specialists.compute_matched:
        jobs.append(compute_matched_job(config, generalist, data, planned.example_epochs,
                                        context.model_seed(COMPUTE_MATCHED), inputs_of({})))
    trained = context.train(jobs, label="specialists")
    models = trained[:len(planned.jobs)]
    combiner = SpecialistEnsemble(generalist.model, [model.model for model in models], clustering.subsets,
                                  planned.shifts, config.specialists.top_n, config.specialists.solver,
                                  [generalist.precision, *(model.precision for model in models)])
    matched = trained[-1] if config.specialists.compute_matched else None
    return Specialists(combiner, clustering, models, planned.example_epochs, matched)
