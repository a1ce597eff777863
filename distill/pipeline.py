"""`distillery run`: teachers -> transfer set -> soft targets -> student and baseline -> evaluation -> report.

The teacher is one model, an ensemble of members trained in parallel (ensembles.fanout), or a generalist whose
specialists are found by clustering and trained in parallel (specialists.stage). Every model's seed is
derived from the run's seed and its name, and recorded in metrics.json. Every model is trained through
`ensembles.jobs.run_job` and the other stages (clustering, evaluation, report) are sealed by manifests
(distill.stages), so a rerun with `resume=True` reuses what finished from the same inputs, resumes unfinished
models from their last epoch, and reruns whatever was computed from inputs that have changed since.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from distill.checkpoint import load_checkpoint
from distill.config import LossWeights, ModelSpec, RunConfig, TrainConfig, dump_config, to_dict
from distill.data import Dataset, TransferSet, load_dataset, make_transfer_set
from distill.errors import CheckpointError, ConfigError
from distill.evaluate import classification_metrics, prior_matching_shift, shift_logits, shift_tuned_on_labels
from distill.models import create_model, freeze
from distill.provenance import git_sha, machine, versions
from distill.report import write_report
from distill.seed import derive_seed, set_seed
from distill.soft_targets import cached_logits
from distill.stages import Stage
from distill.storage import atomic_write_json, atomic_write_text, cache_home, fingerprint, sha256_file
from distill.train import HARD_LABELS, SoftTargets, TopKSoftTargets, predict_logits
from ensembles.cluster import ray_session
from ensembles.combine import Ensemble, combine_log_probs, ensemble_logits
from ensembles.fanout import predict_all, task_resources, train_jobs
from ensembles.jobs import JobData, JobResult, TrainJob, checkpoint_path, load_job_model
from specialists.combined import SpecialistEnsemble
from specialists.stage import (affinity_path, cluster_classes, combined_identity, study, subsets_path,
                               train_specialists)

log = logging.getLogger(__name__)


class Run:
    """The state one `distillery run` builds up: data, models, seeds, histories and timings."""

    def __init__(self, config: RunConfig, out_dir: Path, progress: bool = False):
        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        self.seed = set_seed(config.seed)
        self.cluster = config.cluster  # where models train: the config's, or this process (see _uses_ray)
        self.git_sha = git_sha()  # now: the code this run imported, whatever is committed while it runs
        self.device = _resolve_device(config.device)
        self.seeds: dict[str, int] = {}
        self.data_key = ""  # the data's fingerprint, once loaded
        self.checksums: dict[str, str] = {}
        self.history: dict[str, list[dict]] = {}
        self.seconds: dict[str, float] = {}

    def stage(self, name: str) -> None:
        """Say which stage starts: on the terminal when showing progress, in the log either way."""
        log.info("stage: %s", name)
        if self.progress:
            tqdm.write(f"distillery: {name}", file=sys.stderr)

    def model_seed(self, name: str) -> int:
        self.seeds[name] = derive_seed(self.seed, name)
        return self.seeds[name]

    def inputs_key(self, upstream: dict | None = None) -> str:
        """What a model or stage learns from beyond the config: the data, and `upstream` (models' checksums)."""
        return fingerprint({"data": self.data_key, **(upstream or {})})

    def job(self, name: str, spec: ModelSpec, data: Dataset, train_config: TrainConfig,
            weights: LossWeights = HARD_LABELS, upstream: dict | None = None) -> TrainJob:
        return TrainJob(name, spec, train_config, self.model_seed(name), data.num_classes, data.input_shape, weights,
                        to_dict(self.config), inputs=self.inputs_key(upstream))

    def record(self, result: JobResult) -> None:
        self.history[result.name], self.seconds[result.name] = result.history, result.train_seconds
        self.checksums[result.name] = result.checksum

    def fit(self, name: str, spec: ModelSpec, data: Dataset, inputs: torch.Tensor, labels: torch.Tensor,
            train_config: TrainConfig, weights: LossWeights = HARD_LABELS, targets: SoftTargets | None = None,
            upstream: dict | None = None) -> nn.Module:
        """Train model `name` in this process (or reuse / resume it from the run folder) and return it."""
        job = self.job(name, spec, data, train_config, weights, upstream)
        job_data = JobData(inputs, labels, targets, (data.x_test, data.y_test))
        here = dataclasses.replace(self.cluster, executor="local")  # its soft targets live in this process
        self.record(train_jobs([(job, job_data)], self.out_dir, here, self.progress, label=name)[name])
        return load_job_model(self.out_dir, name, self.device)[0]


def run(config: RunConfig, out_dir: Path, data_root: Path, download: bool = False, progress: bool = False,
        address: str | None = None, resume: bool = False) -> dict:
    """Run the whole pipeline and write config.yaml, checkpoints, metrics.json and report.md into `out_dir`.

    Everything that can be checked before training (data, class ids, model specs, a given teacher checkpoint,
    the transfer set, the run folder) is checked before the run folder is written to. `address` names the Ray
    cluster to join (None: a private local one); `resume` continues a run in `out_dir` made with the same config.
    """
    started = time.perf_counter()
    state = Run(config, out_dir, progress)
    data = _to_device(load_dataset(config.data.name, data_root, config.data.options, download), state.device)
    _check_against_data(config, data)
    state.data_key = data.fingerprint()
    transfer = make_transfer_set(data.y_train, data.num_classes, config.transfer.fraction,
                                 config.transfer.omit_classes, config.transfer.keep_classes,
                                 seed=state.model_seed("transfer"))
    loaded_teacher = _load_teacher(state, data) if config.teacher.checkpoint else None
    if not _uses_ray(config, address):
        state.cluster = dataclasses.replace(config.cluster, executor="local")
    with ray_session(address) if state.cluster.executor == "ray" else nullcontext():
        if state.cluster.executor == "ray":
            task_resources(config.cluster, tasks=1)  # a request no node can meet fails now, not after hours
        _prepare_run_folder(state.out_dir, config, resume)
        state.stage("teacher" if loaded_teacher else "teachers")
        teachers = loaded_teacher or _train_teachers(state, data)
        if config.specialists.count:
            teachers.specialists = _train_specialists(state, data, teachers)
        inputs, labels = data.x_train[transfer.indices], data.y_train[transfer.indices]
        state.stage("soft targets")
        targets = _soft_targets(state, teachers, inputs)
    student_spec, student_train = config.student.model, config.student.train
    state.stage("student")
    models = {"student": state.fit("student", student_spec, data, inputs, labels, student_train,
                                   config.student.loss, targets, upstream={"teachers": teachers.all_checksums})}
    if config.baseline.enabled:
        state.stage("baseline")
        models["baseline"] = state.fit("baseline", student_spec, data, inputs, labels, student_train)
    state.stage("evaluation and report")
    metrics = _evaluation_stage(state, data, teachers, models, transfer, started)
    report = report_stage(state.out_dir, config)
    if not report.reusable():
        report.seal(write_report(state.out_dir, config, metrics))
    return metrics


def report_stage(out_dir: Path, config: RunConfig) -> Stage:
    """report.md and its figures: made from metrics.json and the config (also by `distillery report DIR`)."""
    return Stage(out_dir, "report", {"metrics": sha256_file(Path(out_dir) / "metrics.json"),
                                     "config": _computed_settings(config)})


def _evaluation_stage(state: Run, data: Dataset, teachers: Teachers, students: dict[str, nn.Module],
                      transfer: TransferSet, started: float) -> dict:
    """metrics.json: evaluated anew unless a finished evaluation of the same models and settings is there."""
    path = state.out_dir / "metrics.json"
    checksums = {**teachers.all_checksums, **{name: state.checksums[name] for name in students}}
    stage = Stage(state.out_dir, "evaluation", {"inputs": state.inputs_key({"models": checksums}),
                                                "config": _computed_settings(state.config)})
    if stage.reusable():
        return json.loads(path.read_text())
    metrics = _evaluate(state, data, teachers, students, transfer.absent_classes)
    metrics["transfer"] = {"size": len(transfer.indices), "absent_classes": transfer.absent_classes}
    metrics["teacher"] = _teacher_record(state.config, teachers)
    metrics["run"] = _run_record(state, time.perf_counter() - started)
    atomic_write_json(path, metrics)
    stage.seal([path])
    return metrics


def _uses_ray(config: RunConfig, address: str | None) -> bool:
    """Ray fans out several models at once. A run that trains one model at a time (a lone teacher, no
    specialists) would only pay Ray's start-up, so it runs in this process unless --address names a cluster."""
    parallel = config.ensemble.size > 1 or config.specialists.count > 0
    return config.cluster.executor == "ray" and (parallel or address is not None)


def _prepare_run_folder(out_dir: Path, config: RunConfig, resume: bool) -> None:
    """Write config.yaml, refusing to mix two runs in one folder: a finished model there would be reused.

    Only the `cluster` section may change on --resume: where a run continues does not change what it computes.
    """
    saved = out_dir / "config.yaml"
    if saved.is_file() and not resume:
        raise ConfigError(f"{out_dir} already holds a run: pass --resume to continue it, or choose another --out")
    if saved.is_file() and (difference := _first_difference(saved, config)):
        raise ConfigError(f"--resume: {out_dir} holds a run of a different config ({difference})"
                          "; rerun with its config.yaml or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, dump_config(config))


def _computed_settings(config: RunConfig | dict) -> dict:
    """The config without its `cluster` section: where a run computes does not change what it computes."""
    return {key: value for key, value in (to_dict(config) if isinstance(config, RunConfig) else config).items()
            if key != "cluster"}


def _first_difference(saved: Path, config: RunConfig) -> str | None:
    """The first setting outside `cluster` on which the saved config and this one differ, or None."""
    import yaml

    def flat(node, prefix=""):
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}{key}.").items()}

    old, new = (flat(_computed_settings(c)) for c in (yaml.safe_load(saved.read_text()), config))
    key = next((k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)), None)
    return key and f"{key.rstrip('.')}: {old.get(key)!r} there, {new.get(key)!r} now"


def _check_against_data(config: RunConfig, data: Dataset) -> None:
    """Fail before hours of training when the config cannot fit the data: class ids and model arguments."""
    for cls in config.bias.fixed:
        if not 0 <= cls < data.num_classes:
            raise ConfigError(f"bias.fixed names class {cls}, but {data.name} has classes 0..{data.num_classes - 1}")
    for spec in (config.teacher.model, *config.ensemble.models, config.student.model):
        create_model(spec.name, data.num_classes, data.input_shape, **spec.kwargs)
    specialists, classes = config.specialists, data.num_classes
    if specialists.count:
        clustering = specialists.clustering
        if specialists.count > classes:
            raise ConfigError(f"specialists.count={specialists.count} is more than the {classes} classes of {data.name}")
        if clustering.min_size >= classes or (clustering.max_size or 0) > classes:
            raise ConfigError(f"specialists.clustering subset sizes (min {clustering.min_size}, max "
                              f"{clustering.max_size}) must be below the {classes} classes of {data.name}")
        if config.student.train.augment_shift:
            raise ConfigError("student.train.augment_shift needs a teacher run on each augmented batch, which "
                              "specialists do not support: set it to 0")


@dataclass
class Teachers:
    """The frozen teacher ("teacher") or ensemble members ("member_0", ...), with checkpoint paths and checksums."""

    models: dict[str, nn.Module]
    paths: dict[str, Path]
    checksums: dict[str, str]
    specs: dict[str, dict]
    specialists: Specialists | None = None

    @property
    def is_ensemble(self) -> bool:
        return len(self.models) > 1

    @property
    def all_checksums(self) -> dict[str, str]:
        """Every model the student learns from: teachers or members, and the specialists, if any."""
        return {**self.checksums, **(self.specialists.checksums if self.specialists else {})}


@dataclass
class Specialists:
    """The generalist combined with its trained specialists, how their subsets were found, and their checksums."""

    ensemble: SpecialistEnsemble
    clustering: dict
    checksums: dict[str, str]


def _teacher_name(config: RunConfig) -> str:
    return "generalist" if config.specialists.count else "teacher"


def _train_teachers(state: Run, data: Dataset) -> Teachers:
    """One teacher, or the ensemble's members trained in parallel; member i uses ensemble.models[i % len]."""
    config = state.config
    size = config.ensemble.size
    names = [_teacher_name(config)] if size == 1 else [f"member_{i}" for i in range(size)]
    specs = config.ensemble.models or [config.teacher.model]
    shared = JobData(data.x_train, data.y_train, None, (data.x_test, data.y_test))
    jobs = [(state.job(name, specs[i % len(specs)], data, config.teacher.train), shared)
            for i, name in enumerate(names)]
    label = names[0] if size == 1 else "members"
    for result in train_jobs(jobs, state.out_dir, state.cluster, state.progress, label).values():
        state.record(result)
    loaded = {name: load_job_model(state.out_dir, name, state.device) for name in names}
    return Teachers({name: freeze(model) for name, (model, _) in loaded.items()},
                    {name: checkpoint_path(state.out_dir, name) for name in names},
                    {name: checksum for name, (_, checksum) in loaded.items()},
                    {job.name: to_dict(job.spec) for job, _ in jobs})


def _load_teacher(state: Run, data: Dataset) -> Teachers:
    path = Path(state.config.teacher.checkpoint)
    teacher, payload = load_checkpoint(path, state.device)
    if payload["num_classes"] != data.num_classes or tuple(payload["input_shape"]) != data.input_shape:
        raise CheckpointError(f"teacher checkpoint {path} is for {payload['num_classes']} classes of shape "
                              f"{tuple(payload['input_shape'])}, but {data.name} has {data.num_classes} classes of "
                              f"shape {data.input_shape}")
    name = _teacher_name(state.config)
    state.seeds[name] = payload["seed"]
    return Teachers({name: freeze(teacher)}, {name: path}, {name: payload["sha256"]}, {name: payload["model"]})


def _train_specialists(state: Run, data: Dataset, teachers: Teachers) -> Specialists:
    """Cluster the classes on the generalist's predictions, then train one specialist per subset in parallel."""
    config = state.config
    generalist, upstream = teachers.models["generalist"], {"generalist": teachers.checksums["generalist"]}
    state.stage("clustering")
    seed = state.model_seed("clustering")
    stage = Stage(state.out_dir, "clustering", {"inputs": state.inputs_key(upstream), "seed": seed,
                                                "config": to_dict(config.specialists.clustering),
                                                "count": config.specialists.count})
    if stage.reusable():
        clustering = json.loads(subsets_path(state.out_dir).read_text())
    else:
        clustering = cluster_classes(config.specialists, generalist, data, seed, state.out_dir)
        stage.seal([subsets_path(state.out_dir), affinity_path(state.out_dir)])
    inputs_of = lambda more: state.inputs_key({**upstream, **more})  # noqa: E731
    state.stage("specialists")
    ensemble, results, checksums = train_specialists(config, clustering["subsets"], generalist,
                                                     ModelSpec(**teachers.specs["generalist"]), data,
                                                     state.model_seed, inputs_of, state.out_dir, state.progress)
    for result in results.values():
        state.record(result)
    return Specialists(ensemble, clustering, checksums)


def _soft_targets(state: Run, teachers: Teachers, inputs: torch.Tensor) -> SoftTargets | None:
    """Cached teacher logits (each member's cached by its checksum, computed in parallel shards when missing),
    unless the student's inputs are augmented: then the teachers see each augmented batch."""
    config = state.config
    loss = config.student.loss
    if not loss.w_soft:
        return None
    if teachers.specialists:
        return _combined_soft_targets(config, teachers, inputs)
    if config.student.train.augment_shift:
        members = list(teachers.models.values())
        return SoftTargets(teacher=Ensemble(members, loss.temperature, config.ensemble.combine,
                                            config.ensemble.weights) if teachers.is_ensemble else members[0])
    compute = lambda names: predict_all({n: teachers.paths[n] for n in names}, inputs, state.cluster)  # noqa: E731
    logits = cached_logits(teachers.checksums, inputs, cache_home() / "soft_targets", compute)
    if not teachers.is_ensemble:
        return SoftTargets(logits=logits["teacher"])
    stacked = torch.stack([logits[name] for name in teachers.models])
    return SoftTargets(logits=ensemble_logits(stacked, loss.temperature, config.ensemble.combine,
                                              config.ensemble.weights))


def _combined_soft_targets(config: RunConfig, teachers: Teachers, inputs: torch.Tensor
                           ) -> SoftTargets | TopKSoftTargets:
    """The generalist-plus-specialists distributions at the student's T on the transfer set (cached), whole or
    as their top-k probabilities (specialists.targets_top_k)."""
    temperature, ensemble = config.student.loss.temperature, teachers.specialists.ensemble
    key = combined_identity({**teachers.checksums, **teachers.specialists.checksums}, ensemble, temperature)
    compute = lambda names: {"combined": temperature * ensemble.log_probs(inputs, temperature)}  # noqa: E731
    logits = cached_logits({"combined": key}, inputs, cache_home() / "soft_targets", compute)["combined"]
    top_k = config.specialists.targets_top_k
    return TopKSoftTargets.from_logits(logits, temperature, top_k) if top_k else SoftTargets(logits=logits)


def _evaluate(state: Run, data: Dataset, teachers: Teachers, students: dict[str, nn.Module],
              absent: list[int]) -> dict:
    """Every teacher or member, the ensemble, and each student measured against the teacher (or ensemble)."""
    teacher_logits = {name: predict_logits(model, data.x_test) for name, model in teachers.models.items()}
    results = {name: classification_metrics(logits, data.y_test) for name, logits in teacher_logits.items()}
    section = {}
    if teachers.is_ensemble:
        reference = combine_log_probs(torch.stack(list(teacher_logits.values())), 1.0, state.config.ensemble.combine,
                                      state.config.ensemble.weights)
        results["ensemble"] = classification_metrics(reference, data.y_test)
    elif teachers.specialists:
        stage = teachers.specialists
        reference = stage.ensemble.log_probs(data.x_test, generalist_logits=teacher_logits["generalist"])
        results["specialists"] = classification_metrics(reference, data.y_test)
        section["specialists"] = study(stage.ensemble, stage.clustering, teacher_logits["generalist"], reference,
                                       data)
    else:
        reference = teacher_logits["teacher"]
    student_logits = {name: predict_logits(model, data.x_test) for name, model in students.items()}
    for name, logits in student_logits.items():
        results[name] = classification_metrics(logits, data.y_test, reference)
    bias = _bias_corrections(state, data, students["student"], student_logits["student"], absent)
    for name, corrected in bias.pop("corrected").items():
        results[name] = classification_metrics(corrected, data.y_test, reference)
    for name, seconds in state.seconds.items():
        if name in results:
            results[name]["train_seconds"] = seconds
    if "specialists" in section:
        section["specialists"]["train_seconds"] = {name: seconds for name, seconds in state.seconds.items()
                                                   if name.startswith("specialist_")}
    return {"models": results, "bias": bias, "history": state.history, **section}


def _teacher_record(config: RunConfig, teachers: Teachers) -> dict:
    record = {"checkpoint": config.teacher.checkpoint,
              "members": {name: {"model": teachers.specs[name], "checksum": teachers.checksums[name]}
                          for name in teachers.models}}
    if teachers.is_ensemble:
        record["combine"] = {"method": config.ensemble.combine, "weights": config.ensemble.weights}
    if teachers.specialists:
        record["specialists"] = teachers.specialists.checksums
    return record


def _bias_corrections(state: Run, data: Dataset, student: nn.Module, student_logits: torch.Tensor,
                      absent: list[int]) -> dict:
    """The student's test logits with the config's fixed shift, the automatic prior-matching shift, and, for
    reference, the shift tuned on the test labels (how the paper chose its shifts)."""
    config = state.config.bias
    corrected, record = {}, {"absent_classes": absent}
    if absent:
        tuned = shift_tuned_on_labels(student_logits.cpu(), data.y_test.cpu(), absent)
        corrected["student_bias_test_tuned"] = shift_logits(student_logits, dict.fromkeys(absent, tuned))
        record["test_tuned"] = {"shift_on_absent_classes": tuned, "method": "fewest test errors (uses test labels)"}
    if config.fixed:
        corrected["student_bias_fixed"] = shift_logits(student_logits, config.fixed)
        record["fixed"] = config.fixed
    if config.auto and absent:
        train_logits = predict_logits(student, data.x_train)
        prior = torch.isin(data.y_train.cpu(), torch.tensor(absent)).float().mean().item()
        shift = prior_matching_shift(train_logits.cpu(), absent, prior)
        corrected["student_bias_auto"] = shift_logits(student_logits, dict.fromkeys(absent, shift))
        record["auto"] = {"shift_on_absent_classes": shift, "matched_prior": prior,
                          "method": "prior matching on the training inputs (no test labels)"}
    record["corrected"] = corrected
    return record


def _run_record(state: Run, seconds: float) -> dict:
    return {"seconds": seconds, "seeds": {"base": state.seed, **state.seeds}, "device": str(state.device),
            "executor": state.cluster.executor,
            "versions": versions(), "git_sha": state.git_sha, "machine": machine()}


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is available (use device=cpu or auto)")
    return torch.device(name)


def _to_device(data: Dataset, device: torch.device) -> Dataset:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        setattr(data, field, getattr(data, field).to(device))
    return data
