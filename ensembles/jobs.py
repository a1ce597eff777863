"""One model to train, as plain values, and the function that trains it resumably: the unit the fan-out runs.

`run_job` needs no Ray: the fan-out calls it on Ray workers, tests and the local executor call it directly.
Its files in the run folder make it restartable at any moment:

    NAME.pt (+ .sha256)    the finished model; its presence (checksum verified) means "done, reuse me", unless
                           it was trained from other inputs than the job's ("stale") or no longer matches its
                           checksum ("damaged"): then it is trained again
    state/NAME.pt          the whole training state after the last finished epoch, rewritten atomically (one
                           that cannot be read is "damaged": the job starts over)
    logs/NAME.jsonl        one line per epoch (attempt, pid, node) and one per start or resume
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from distill.checkpoint import checksum_path, load_checkpoint, save_checkpoint
from distill.config import LossWeights, ModelSpec, TrainConfig, to_dict
from distill.errors import CheckpointError
from distill.models import create_model, freeze
from distill.precision import ComputePrecision, resolve_precision
from distill.records import to_plain
from distill.storage import append_json_line, atomic_torch_save
from distill.streamed import Inputs
from distill.train import HARD_LABELS, EpochRecord, SoftTargets, TopKSoftTargets, predict_logits, train

log = logging.getLogger(__name__)

CURVE_POINTS = 20  # test-set evaluations per curve at most (one per epoch: ~4 % of an MNIST student's training)


@dataclass(frozen=True)
class TrainJob:
    """Train model `name` of architecture `spec` with `train` settings from `seed`; `config` is the run's resolved
    config, stored in the checkpoint. `initial_state` (a state dict) replaces the seeded initial weights, as a
    specialist starts from its generalist. `inputs` fingerprints what the job learns from beyond its own settings
    (the data, the checksums of the models it learns from): a checkpoint or state of other inputs is not reused."""

    name: str
    spec: ModelSpec
    train: TrainConfig
    seed: int
    num_classes: int
    input_shape: tuple[int, ...]
    weights: LossWeights = field(default_factory=lambda: HARD_LABELS)
    config: dict = field(default_factory=dict)
    initial_state: dict[str, torch.Tensor] | None = None
    inputs: str = ""


@dataclass
class JobData:
    """What a job trains on: inputs (N, ...), labels (N,), optional soft-target logits (N, C) aligned with them, and
    an optional labelled evaluation set for the training curve (never used to choose a model)."""

    inputs: Inputs
    labels: torch.Tensor
    targets: SoftTargets | TopKSoftTargets | None = None
    evaluation: tuple[Inputs, torch.Tensor] | None = None


@dataclass
class JobResult:
    """How a job ended: its checkpoint's checksum, its training curve and seconds (over all attempts), and whether
    it resumed an earlier attempt or reused a finished checkpoint."""

    name: str
    checksum: str
    history: list[EpochRecord]
    train_seconds: float
    precision: ComputePrecision
    resumed_from_epoch: int = 0
    reused: bool = False


@dataclass
class TrainedModel:
    """A finished model, loaded from its verified checkpoint and frozen: a job's, or a teacher checkpoint given by
    the user."""

    name: str
    model: nn.Module
    spec: ModelSpec
    path: Path
    checksum: str
    seed: int
    num_classes: int
    input_shape: tuple[int, ...]
    precision: ComputePrecision  # of its matrix products: in training, and in every forward pass of it


def checkpoint_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / f"{name}.pt"


def state_path(run_dir: str | Path, name: str) -> Path:
    """Job `name`'s training state after its last finished epoch."""
    return Path(run_dir) / "state" / f"{name}.pt"


def run_job(job: TrainJob, data: JobData, run_dir: str | Path, on_epoch=None) -> JobResult:
    """Train `job` to the end, or reuse its finished checkpoint, or resume from its last epoch's state."""
    run_dir = Path(run_dir)
    final = checkpoint_path(run_dir, job.name)
    if checksum_path(final).is_file():  # written last: a job killed while saving has none and trains on
        reused = _reuse(job, final, run_dir)
        if reused is not None:
            return reused
    device = data.inputs.device
    torch.manual_seed(job.seed)
    model = create_model(job.spec.name, job.num_classes, job.input_shape, **job.spec.kwargs)
    if job.initial_state is not None:
        model.load_state_dict(job.initial_state)
    model.to(device)
    state_file = state_path(run_dir, job.name)
    resume_from = _training_state(job, state_file, run_dir, device)
    done = len(resume_from["history"]) if resume_from else 0
    # A resumed job keeps the precision it started in, wherever it resumes: the rest of its epochs match.
    precision = resume_from.get("precision", "fp32") if resume_from else resolve_precision(job.train.precision, device)
    _log_event(run_dir, job.name, {"event": "resume" if done else "start", "epoch": done, "precision": precision})
    # Epochs past `done` that an interrupted attempt logged are hidden: the resumed ones replace them.
    curves = SummaryWriter(str(tensorboard_path(run_dir, job.name)), purge_step=done + 1)

    def record_epoch(epoch: int, record: EpochRecord) -> None:
        if data.evaluation is not None and _is_curve_point(epoch, job.train.epochs):
            x, y = data.evaluation
            record.test_accuracy = (predict_logits(model, x, precision=precision).argmax(1) == y).float().mean().item()
        _log_event(run_dir, job.name, {"event": "epoch", **to_plain(record)})
        _write_curve(curves, record)
        if on_epoch is not None:
            on_epoch(job.name, epoch, record)

    def save_state(state: dict) -> None:
        atomic_torch_save(state_file, {**state, "inputs": job.inputs, "precision": precision})

    try:
        history = train(model, data.inputs, data.labels, job.train, job.weights, data.targets, job.seed,
                        on_epoch=record_epoch, on_state=save_state, resume_from=resume_from, precision=precision)
    finally:
        curves.close()
    seconds = sum(record.seconds for record in history)  # over all attempts, without curve evaluations
    checksum = save_checkpoint(final, model, to_dict(job.spec), num_classes=job.num_classes,
                               input_shape=job.input_shape, seed=job.seed, config=job.config,
                               extra={"history": [to_plain(record) for record in history], "train_seconds": seconds,
                                      "inputs": job.inputs, "precision": precision})
    state_file.unlink(missing_ok=True)
    return JobResult(job.name, checksum, history, seconds, precision, resumed_from_epoch=done)


def _reuse(job: TrainJob, final: Path, run_dir: Path) -> JobResult | None:
    """The finished checkpoint's result, or None (after removing its checksum, which marks it unfinished) when it
    was trained from other inputs."""
    try:
        _, payload = load_checkpoint(final)  # verifies the checksum: a damaged file is never reused
    except CheckpointError as error:
        _discard(run_dir, job.name, final, "damaged", f"{error}")
        checksum_path(final).unlink()
        return None
    if payload["seed"] != job.seed or payload["model"] != to_dict(job.spec):
        raise CheckpointError(f"{final} was trained for another job (seed {payload['seed']}, {payload['model']}) "
                              f"than {job.name} of this run; move it away or choose another --out")
    if payload.get("inputs") != job.inputs:
        _discard(run_dir, job.name, final, "stale", f"its finished checkpoint {final.name} {OTHER_INPUTS}")
        # Without its checksum the checkpoint no longer counts as finished; the file itself stays until the
        # retrained model replaces it atomically, so an interrupted retraining loses nothing more.
        checksum_path(final).unlink()
        return None
    _log_event(run_dir, job.name, {"event": "reused", "epoch": len(payload["history"]), "checksum": payload["sha256"]})
    history = [EpochRecord(**record) for record in payload["history"]]
    return JobResult(job.name, payload["sha256"], history, payload["train_seconds"], checkpoint_precision(payload),
                     reused=True)


def _training_state(job: TrainJob, state_path: Path, run_dir: Path, device: torch.device) -> dict | None:
    """The state the job's last attempt saved after its last finished epoch, or None: there is none, or it was
    made from other inputs, or it cannot be read (a disk that filled up or failed while it was written)."""
    if not state_path.is_file():
        return None
    try:
        state = torch.load(state_path, map_location=device, weights_only=True)
        history = state["history"]
        if not isinstance(history, list):
            raise TypeError("no epoch history")
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways, and each means: start over
        _discard(run_dir, job.name, state_path, "damaged",
                 f"its training state {state_path.name} cannot be read ({type(error).__name__})")
        return None
    if state.get("inputs") != job.inputs:
        _discard(run_dir, job.name, state_path, "stale", f"its training state {state_path.name} {OTHER_INPUTS}")
        return None
    return state


OTHER_INPUTS = ("was made from other inputs than this run's (data, or the models it learns from, changed; or it "
                "predates input fingerprints)")


def _discard(run_dir: Path, name: str, path: Path, event: str, reason: str) -> None:
    """Record in the job's log as `event` ("stale", "damaged"), and warn (on the terminal when the job runs in the
    driver), that a file of the job cannot be used and the job trains again."""
    _log_event(run_dir, name, {"event": event, "file": str(path.relative_to(run_dir))})
    log.warning("%s: %s: training it again", name, reason)


def load_trained(path: str | Path, name: str, device: str | torch.device = "cpu") -> TrainedModel:
    """The model of checkpoint `path`, verified and frozen, as model `name` of the run."""
    model, payload = load_checkpoint(path, device)
    return TrainedModel(name, freeze(model), ModelSpec(**payload["model"]), Path(path), payload["sha256"],
                        payload["seed"], payload["num_classes"], tuple(payload["input_shape"]),
                        checkpoint_precision(payload))


def checkpoint_precision(payload: dict) -> ComputePrecision:
    """The precision a checkpoint's model trained in (fp32 for checkpoints from before precisions were kept)."""
    return payload.get("precision", "fp32")


def load_job_model(run_dir: str | Path, name: str, device: str | torch.device = "cpu") -> TrainedModel:
    """The finished model of job `name`."""
    return load_trained(checkpoint_path(run_dir, name), name, device)


def _is_curve_point(epoch: int, epochs: int) -> bool:
    return epoch % max(1, epochs // CURVE_POINTS) == 0 or epoch == epochs


def tensorboard_path(run_dir: str | Path, name: str) -> Path:
    """Job `name`'s TensorBoard event files: `tensorboard --logdir` on a run or a study lays every model side by
    side."""
    return Path(run_dir) / "tensorboard" / name


def _write_curve(curves: SummaryWriter, record: EpochRecord) -> None:
    curves.add_scalar("train/loss", record.loss, record.epoch)
    curves.add_scalar("train/seconds_per_epoch", record.seconds, record.epoch)
    if record.test_accuracy is not None:
        curves.add_scalar("test/accuracy", record.test_accuracy, record.epoch)


def job_files(run_dir: str | Path, name: str) -> list[Path]:
    """Every file job `name` keeps in the run folder, in an order that is safe to copy them in: its training state,
    log and TensorBoard events, then its finished checkpoint, then that checkpoint's checksum (which marks it
    finished, so it must never arrive first)."""
    run_dir = Path(run_dir)
    events = sorted(path for path in tensorboard_path(run_dir, name).rglob("*") if path.is_file())
    candidates = [state_path(run_dir, name), log_path(run_dir, name), *events, checkpoint_path(run_dir, name),
                  checksum_path(checkpoint_path(run_dir, name))]
    return [path for path in candidates if path.is_file()]


def log_path(run_dir: str | Path, name: str) -> Path:
    """Job `name`'s log: one JSON line per event (start, resume, epoch, reused, stale)."""
    return Path(run_dir) / "logs" / f"{name}.jsonl"


@dataclass
class JobStatus:
    """What a job's log says: the epochs its current weights have been trained for (a reused checkpoint counts
    in full, a restart from scratch counts from 0 again), and how many attempts started or resumed it since a
    given time (more than one: its worker or node died and Ray ran it again)."""

    epochs: int = 0
    attempts: int = 0

    def apply(self, event: dict, since: float) -> None:
        """Take the next event of the log into account; attempts count those started at or after `since`."""
        kind = event.get("event")
        if kind in ("start", "resume", "epoch", "reused"):
            self.epochs = event.get("epoch", 0)
        if kind in ("start", "resume") and event.get("time", 0.0) >= since:
            self.attempts += 1


class LogFollower:
    """The statuses of many jobs, brought up to date by reading only the bytes each log gained since the last
    look: a look costs one stat per job, however long the logs grow, so a driver can follow thousands of jobs
    once a second. A line still being written is kept until it is whole; a line cut by a crash (closed by the
    next append, `append_json_line`) is skipped, as `read_json_lines` skips it."""

    def __init__(self, run_dir: Path, names: list[str], since: float = 0.0):
        self.since = since
        self.paths = {name: log_path(run_dir, name) for name in names}
        self.offsets = dict.fromkeys(names, 0)
        self.unfinished = dict.fromkeys(names, b"")
        self.current = {name: JobStatus() for name in names}

    def statuses(self) -> dict[str, JobStatus]:
        for name, path in self.paths.items():
            try:
                if path.stat().st_size <= self.offsets[name]:
                    continue
                with open(path, "rb") as log_file:
                    log_file.seek(self.offsets[name])
                    gained = log_file.read()
            except FileNotFoundError:  # the job has not started yet
                continue
            self.offsets[name] += len(gained)
            *lines, self.unfinished[name] = (self.unfinished[name] + gained).split(b"\n")
            for line in lines:
                try:
                    event = json.loads(line.decode(errors="replace"))
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.current[name].apply(event, self.since)
        return self.current


def job_status(run_dir: Path, name: str, since: float = 0.0) -> JobStatus:
    """Job `name`'s status from its whole log; attempts count only those started at or after `since` (a driver's
    start: a log also holds the attempts of earlier runs of the same folder)."""
    return LogFollower(run_dir, [name], since).statuses()[name]


def _log_event(run_dir: Path, name: str, event: dict) -> None:
    append_json_line(log_path(run_dir, name), {"time": time.time(), "pid": os.getpid(), "node": _node_id(), **event})


def _node_id() -> str | None:
    """The Ray node this runs on, when it runs on one (tests use it to remove the node mid-job)."""
    ray = sys.modules.get("ray")  # imported by the fan-out only: the core never needs Ray
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()
