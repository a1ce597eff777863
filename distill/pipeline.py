"""`distillery run`: teacher -> transfer set -> soft targets -> student and baseline -> evaluation -> report.

Every model's seed is derived from the run's seed and its name, and recorded in metrics.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.config import LossWeights, ModelSpec, RunConfig, TrainConfig, dump_config, to_dict
from distill.data import Dataset, load_dataset, make_transfer_set
from distill.errors import CheckpointError, ConfigError
from distill.evaluate import classification_metrics, prior_matching_shift, shift_logits, shift_tuned_on_labels
from distill.models import create_model, freeze
from distill.provenance import git_sha, machine, versions
from distill.report import write_report
from distill.seed import derive_seed, set_seed
from distill.soft_targets import cached_teacher_logits
from distill.storage import atomic_write_json, atomic_write_text, cache_home
from distill.train import HARD_LABELS, SoftTargets, predict_logits, train

log = logging.getLogger(__name__)

CURVE_POINTS = 50


class Run:
    """The state one `distillery run` builds up: data, models, seeds, histories and timings."""

    def __init__(self, config: RunConfig, out_dir: Path, progress: bool = False):
        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        self.seed = set_seed(config.seed)
        self.device = _resolve_device(config.device)
        self.seeds: dict[str, int] = {}
        self.history: dict[str, list[dict]] = {}
        self.seconds: dict[str, float] = {}
        self.teacher_spec: dict = {}

    def model_seed(self, name: str) -> int:
        self.seeds[name] = derive_seed(self.seed, name)
        return self.seeds[name]

    def fit(self, name: str, spec: ModelSpec, data: Dataset, inputs: torch.Tensor, labels: torch.Tensor,
            train_config: TrainConfig, weights: LossWeights = HARD_LABELS,
            targets: SoftTargets | None = None) -> tuple[nn.Module, str]:
        """Create, train and checkpoint model `name`; returns (model, checkpoint checksum)."""
        seed = self.model_seed(name)
        torch.manual_seed(seed)
        model = create_model(spec.name, data.num_classes, data.input_shape, **spec.kwargs).to(self.device)
        started = time.perf_counter()
        with tqdm(total=train_config.epochs, desc=name, disable=not self.progress, leave=False) as bar:
            def on_epoch(epoch: int, record: dict) -> None:
                # A training curve for the report (about CURVE_POINTS points), never used to choose a model.
                if epoch % max(1, train_config.epochs // CURVE_POINTS) == 0 or epoch == train_config.epochs:
                    predicted = predict_logits(model, data.x_test).argmax(dim=1)
                    record["test_accuracy"] = (predicted == data.y_test).float().mean().item()
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                bar.update()
                accuracy = f"{record['test_accuracy']:.4f}" if "test_accuracy" in record else "-"
                log.info("%s epoch %d/%d loss %.4f test accuracy %s (%.1fs)", name, epoch, train_config.epochs,
                         record["loss"], accuracy, record["seconds"])
            self.history[name] = train(model, inputs, labels, train_config, weights, targets, seed, on_epoch)
        self.seconds[name] = time.perf_counter() - started
        checksum = save_checkpoint(self.out_dir / f"{name}.pt", model, to_dict(spec), num_classes=data.num_classes,
                                   input_shape=data.input_shape, seed=seed, config=to_dict(self.config))
        return model, checksum


def run(config: RunConfig, out_dir: Path, data_root: Path, download: bool = False, progress: bool = False) -> dict:
    """Run the whole pipeline and write config.yaml, checkpoints, metrics.json and report.md into `out_dir`.

    Everything that can be checked before training (data, class ids, model specs, a given teacher checkpoint,
    the transfer set) is checked before the run folder is written to.
    """
    started = time.perf_counter()
    state = Run(config, out_dir, progress)
    data = _to_device(load_dataset(config.data.name, data_root, config.data.options, download), state.device)
    _check_against_data(config, data)
    transfer = make_transfer_set(data.y_train, data.num_classes, config.transfer.fraction,
                                 config.transfer.omit_classes, config.transfer.keep_classes,
                                 seed=state.model_seed("transfer"))
    loaded_teacher = _load_teacher(state, data) if config.teacher.checkpoint else None
    state.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state.out_dir / "config.yaml", dump_config(config))
    teacher, teacher_checksum = loaded_teacher or _train_teacher(state, data)
    inputs, labels = data.x_train[transfer.indices], data.y_train[transfer.indices]
    targets = _soft_targets(config, teacher, teacher_checksum, inputs)
    student_spec, student_train = config.student.model, config.student.train
    student, _ = state.fit("student", student_spec, data, inputs, labels, student_train, config.student.loss, targets)
    models = {"teacher": teacher, "student": student}
    if config.baseline.enabled:
        models["baseline"], _ = state.fit("baseline", student_spec, data, inputs, labels, student_train)
    metrics = _evaluate(state, data, models, transfer.absent_classes)
    metrics["transfer"] = {"size": len(transfer.indices), "absent_classes": transfer.absent_classes}
    metrics["teacher"] = {"checkpoint": config.teacher.checkpoint, "checksum": teacher_checksum,
                          "model": state.teacher_spec}
    metrics["run"] = _run_record(state, time.perf_counter() - started)
    atomic_write_json(state.out_dir / "metrics.json", metrics)
    write_report(state.out_dir, config, metrics)
    return metrics


def _check_against_data(config: RunConfig, data: Dataset) -> None:
    """Fail before hours of training when the config cannot fit the data: class ids and model arguments."""
    for cls in config.bias.fixed:
        if not 0 <= cls < data.num_classes:
            raise ConfigError(f"bias.fixed names class {cls}, but {data.name} has classes 0..{data.num_classes - 1}")
    for spec in (config.teacher.model, config.student.model):
        create_model(spec.name, data.num_classes, data.input_shape, **spec.kwargs)


def _train_teacher(state: Run, data: Dataset) -> tuple[nn.Module, str]:
    config = state.config.teacher
    teacher, checksum = state.fit("teacher", config.model, data, data.x_train, data.y_train, config.train)
    state.teacher_spec = to_dict(config.model)
    return freeze(teacher), checksum


def _load_teacher(state: Run, data: Dataset) -> tuple[nn.Module, str]:
    path = state.config.teacher.checkpoint
    teacher, payload = load_checkpoint(path, state.device)
    if payload["num_classes"] != data.num_classes or tuple(payload["input_shape"]) != data.input_shape:
        raise CheckpointError(f"teacher checkpoint {path} is for {payload['num_classes']} classes of shape "
                              f"{tuple(payload['input_shape'])}, but {data.name} has {data.num_classes} classes of "
                              f"shape {data.input_shape}")
    state.seeds["teacher"] = payload["seed"]
    state.teacher_spec = payload["model"]
    return freeze(teacher), payload["sha256"]


def _soft_targets(config: RunConfig, teacher: nn.Module, checksum: str, inputs: torch.Tensor) -> SoftTargets | None:
    """Cached teacher logits, unless the student's inputs are augmented: then the teacher sees each batch."""
    if not config.student.loss.w_soft:
        return None
    if config.student.train.augment_shift:
        return SoftTargets(teacher=teacher)
    return SoftTargets(logits=cached_teacher_logits(teacher, checksum, inputs, cache_home() / "soft_targets"))


def _evaluate(state: Run, data: Dataset, models: dict[str, nn.Module], absent: list[int]) -> dict:
    logits = {name: predict_logits(model, data.x_test) for name, model in models.items()}
    teacher_logits = logits.pop("teacher")
    results = {"teacher": classification_metrics(teacher_logits, data.y_test)}
    for name, model_logits in logits.items():
        results[name] = classification_metrics(model_logits, data.y_test, teacher_logits)
    bias = _bias_corrections(state, data, models["student"], logits["student"], absent)
    for name, corrected in bias.pop("corrected").items():
        results[name] = classification_metrics(corrected, data.y_test, teacher_logits)
    for name, seconds in state.seconds.items():
        results[name]["train_seconds"] = seconds
    return {"models": results, "bias": bias, "history": state.history}


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
            "versions": versions(), "git_sha": git_sha(), "machine": machine()}


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
