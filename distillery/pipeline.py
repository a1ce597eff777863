"""`distillery run`: teachers -> transfer set -> soft targets -> student and baseline -> evaluation -> report.

1. Teachers (distillery.teachers): one model, an ensemble of members trained in parallel on Ray, or a teacher
   checkpoint; with specialists, the generalist's classes are clustered and one specialist per subset trains in
   parallel too.
2. The transfer set and its soft targets (distillery.soft_targets), computed once and cached.
3. The student on the soft targets, and the baseline on hard labels (here, in the driver, through the same
   resumable `ensembles.jobs.run_job` as every model); with `specialists.generalist_student`, also a student of
   the generalist alone, the control of what the student owes to the specialists.
4. Evaluation (distillery.evaluation) writes metrics.json; the report (distillery.report) report.md.

Every model's seed is derived from the run's seed and its name, and recorded in metrics.json. Models resume from
their last epoch and the stages between them are sealed by manifests (distillery.manifests), so a rerun with
`resume=True` reuses what finished from the same inputs and reruns whatever was computed from inputs that changed.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from distill.config import ModelSpec, RunConfig
from distill.data import Dataset, load_dataset, make_transfer_set
from distill.errors import ConfigError
from distill.memory import check_fits
from distill.models import create_model
from distillery.context import RunContext
from distillery.evaluation import evaluate
from distillery.metrics import RunMetrics
from distillery.progress import Progress
from distillery.report import report_manifest, write_report
from distillery.run_folder import prepare_run_folder
from distillery.soft_targets import generalist_soft_targets, soft_targets
from distillery.teachers import load_teacher, train_specialists, train_teachers
from ensembles.fanout import task_resources
from ensembles.ray_connection import ray_session
from specialists.specialist import output_layer
from specialists.training import GENERALIST_STUDENT


def run(config: RunConfig, out_dir: Path, data_root: Path, download: bool = False, progress: bool = False,
        address: str | None = None, resume: bool = False, fan_out: bool = True) -> RunMetrics:
    """Run the whole pipeline and write config.yaml, checkpoints, metrics.json and report.md into `out_dir`.

    Everything that can be checked before training (data, class ids, model specs, a given teacher checkpoint,
    the transfer set, the run folder) is checked before the run folder is written to. `address` names the Ray
    cluster to join (None: a private local one); `resume` continues a run in `out_dir` made with the same config.
    `fan_out=False` trains every model in this process, one after another: a study runs whole pipelines as Ray
    tasks (distillery.sweep), and each of them computes on the CPUs its task holds.
    """
    started = time.perf_counter()
    context = RunContext(config, out_dir, Progress(progress))
    data = load_dataset(config.data.name, data_root, config.data.options, download).to(context.device)
    _check_against_data(config, data)
    context.data_key = data.fingerprint()
    transfer = make_transfer_set(data.y_train, data.num_classes, config.transfer.fraction,
                                 config.transfer.omit_classes, config.transfer.keep_classes,
                                 seed=context.model_seed("transfer"))
    loaded_teacher = load_teacher(context, data) if config.teacher.checkpoint else None
    if not fan_out or not _uses_ray(config, address):
        context.cluster = dataclasses.replace(config.cluster, executor="local")
    with ray_session(address) if context.cluster.executor == "ray" else nullcontext():
        if context.cluster.executor == "ray":
            task_resources(config.cluster, tasks=1)  # a request no node can meet fails now, not after hours
        prepare_run_folder(context.out_dir, config, resume)
        context.progress.announce("teacher" if loaded_teacher else "teachers")
        teachers = loaded_teacher or train_teachers(context, data)
        if config.specialists.count:
            teachers.specialists = train_specialists(context, data, teachers.members[0])
        inputs, labels = data.x_train[transfer.indices], data.y_train[transfer.indices]
        context.progress.announce("soft targets")
        targets = soft_targets(context, teachers, inputs)
    student = config.student
    context.progress.announce("student")
    students = {"student": context.fit("student", student.model, data, inputs, labels, student.train, student.loss,
                                       targets, upstream={"teachers": teachers.checksums})}
    if config.specialists.count and config.specialists.generalist_student:
        context.progress.announce("student of the generalist alone")
        generalist = {teachers.members[0].name: teachers.members[0].checksum}
        students[GENERALIST_STUDENT] = context.fit(GENERALIST_STUDENT, student.model, data, inputs, labels,
                                                   student.train, student.loss,
                                                   generalist_soft_targets(context, teachers, inputs),
                                                   upstream={"teachers": generalist}, seed_of="student")
    if config.baseline.enabled:
        context.progress.announce("baseline")
        students["baseline"] = context.fit("baseline", student.model, data, inputs, labels, student.train)
    context.progress.announce("evaluation and report")
    metrics = evaluate(context, data, teachers, students, transfer, started)
    report = report_manifest(context.out_dir, config)
    if not report.reusable():
        report.seal(write_report(context.out_dir, config, metrics))
    return metrics


def _uses_ray(config: RunConfig, address: str | None) -> bool:
    """Ray fans out several models at once. A run that trains one model at a time (a lone teacher, no
    specialists) would only pay Ray's start-up, so it runs in this process unless --address names a cluster."""
    parallel = config.ensemble.size > 1 or config.specialists.count > 0
    return config.cluster.executor == "ray" and (parallel or address is not None)


def _shapes_only(spec: ModelSpec, data: Dataset) -> torch.nn.Module:
    """The model of `spec` for the data, built on the meta device (shapes only: a model too large for the machine
    is refused, not allocated) and checked to map inputs to one logit per class. A user's builder that computes
    with tensors while it builds cannot run there; it is built on the CPU instead."""
    try:
        with torch.device("meta"):
            model = create_model(spec.name, data.num_classes, data.input_shape, **spec.kwargs)
    except ConfigError:
        raise
    except Exception:  # a user's builder may fail on meta tensors in any way; on the CPU it either builds or says why
        model = create_model(spec.name, data.num_classes, data.input_shape, **spec.kwargs)
    device = next(model.parameters(), torch.empty(0)).device
    with torch.device(device):
        _check_output_shape(model, data)
    return model


def _check_output_shape(model: torch.nn.Module, data: Dataset) -> None:
    """A model built for the data maps a batch of its inputs to one logit per class."""
    try:
        shape = tuple(model.eval()(torch.zeros((2, *data.input_shape))).shape)
    except Exception as error:  # a user's model can fail on a wrong input shape in any way
        raise ConfigError(f"the model does not run on inputs of shape {data.input_shape} "
                          f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    if shape != (2, data.num_classes):
        raise ConfigError(f"the model maps a batch of 2 inputs to shape {shape}, not (2, {data.num_classes})")


def _check_against_data(config: RunConfig, data: Dataset) -> None:
    """Fail before hours of training when the config cannot fit the data: class ids and model arguments."""
    for cls in config.bias.fixed:
        if not 0 <= cls < data.num_classes:
            raise ConfigError(f"bias.fixed names class {cls}, but {data.name} has classes 0..{data.num_classes - 1}")
    specs = {"teacher.model": config.teacher.model, "student.model": config.student.model,
             **{f"ensemble.models[{i}]": spec for i, spec in enumerate(config.ensemble.models)}}
    for key, spec in specs.items():
        try:
            model = _shapes_only(spec, data)
            parameters = sum(parameter.numel() for parameter in model.parameters())
            # fp32 weights, gradients, momentum, and one more copy (bf16 weights or an average)
            check_fits(16 * parameters, f"{spec.name} {spec.kwargs}, {parameters:,} parameters,")
            if key == "teacher.model" and config.specialists.count:
                output_layer(model)  # specialists replace its rows: refuse a model without one now
        except ConfigError as error:
            raise ConfigError(f"{key}: {error}") from None
    specialists, classes = config.specialists, data.num_classes
    if specialists.count:
        clustering = specialists.clustering
        if specialists.count > classes:
            raise ConfigError(f"specialists.count={specialists.count} is more than the {classes} classes of {data.name}")
        if clustering.min_size >= classes or (clustering.max_size or 0) > classes:
            raise ConfigError(f"specialists.clustering.min_size={clustering.min_size} and max_size="
                              f"{clustering.max_size} must be below the {classes} classes of {data.name}")
        if config.student.train.augments:
            raise ConfigError("student.train.augment_shift and augment_flip need a teacher run on each augmented "
                              "batch, which specialists do not support: turn them off")
