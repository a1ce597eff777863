"""Typed run configuration: dataclasses are the schema, YAML is only their saved form.

`load_config(path, overrides)` reads YAML, applies `--set a.b=c` overrides and builds the dataclasses,
rejecting unknown keys, wrong types and impossible values with a ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distill.errors import ConfigError
from distill.records import check_value, from_plain, to_plain

# The allowed values of each choice, defined once: validation reads them from the field types, and the modules that
# act on a choice take the same alias (`typing.get_args(Schedule)` lists the values).
Device = Literal["cpu", "cuda", "auto"]
Schedule = Literal["onecycle", "constant"]
EnsembleMethod = Literal["arithmetic", "geometric"]  # how ensemble members' distributions are combined
Executor = Literal["ray", "local"]
RunFolder = Literal["auto", "driver"]  # how Ray workers reach the run folder (ensembles/driver_folder.py)
AffinitySource = Literal["covariance", "confusion"]  # what the specialists' classes are clustered on
KMeansAlgorithm = Literal["kmeans", "online"]
Eq5Solver = Literal["em", "gradient"]
Precision = Literal["auto", "fp32", "bf16"]  # of a model's matrix products (distill/precision.py)

MAX_LOGIT_SHIFT = 1000.0


@dataclass
class ModelSpec:
    """An architecture from the model registry and the keyword arguments it is built with."""

    name: str = "mlp"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Which registered data set to load, and its loader's options (checked against its signature)."""

    name: str = "digits"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """One training run: SGD with Nesterov momentum under a one-cycle (or constant) learning rate."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    schedule: Schedule = "onecycle"
    # Augmentation of each batch, drawn from the training generator (so a resumed run redraws the same): a random
    # shift of up to `augment_shift` pixels with zero fill (torchvision's RandomCrop with that padding) and, with
    # `augment_flip`, a horizontal flip of half the images. A student on augmented inputs learns from its teacher
    # run on the same augmented batch.
    augment_shift: int = 0
    augment_flip: bool = False
    # Weights returned are the mean of the end-of-epoch weights of the last `average_last` epochs (stochastic weight
    # averaging, Izmailov et al. 2018); 0 returns the last weights. The paper is silent here: this is our addition.
    # A training curve's test points are of the weights being trained, not of the average.
    average_last: int = 0
    # The precision of the model's matrix products, in training and in every later forward pass (soft targets,
    # evaluation): bf16 under autocast with fp32 master weights, or fp32; auto is bf16 where the hardware has bf16
    # matrix units (distill/precision.py). The precision used is recorded with the model.
    precision: Precision = "auto"
    # Gradients are scaled down to this total L2 norm before each update where theirs is larger (torch's
    # clip_grad_norm_); None leaves them as they are. A student at high T needs it most: the soft term's gradient
    # on the logits is T (q_T - p_T), up to T times the hard-label term's, so at the hard-label baseline's learning
    # rate its steps are several times longer (docs/method.md, "Gradient size at high T").
    clip_grad_norm: float | None = None

    @property
    def augments(self) -> bool:
        return bool(self.augment_shift or self.augment_flip)

    def validate(self, where: str) -> None:
        _require(self.epochs >= 1, f"{where}.epochs must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 1, f"{where}.batch_size must be >= 1, got {self.batch_size}")
        _require(self.lr > 0, f"{where}.lr must be > 0, got {self.lr}")
        _require(0 <= self.momentum < 1, f"{where}.momentum must be in [0, 1), got {self.momentum}")
        _require(self.weight_decay >= 0, f"{where}.weight_decay must be >= 0, got {self.weight_decay}")
        _require(self.augment_shift >= 0, f"{where}.augment_shift must be >= 0, got {self.augment_shift}")
        _require(self.clip_grad_norm is None or self.clip_grad_norm > 0,
                 f"{where}.clip_grad_norm must be > 0 (or null: no clipping), got {self.clip_grad_norm}")
        _require(0 <= self.average_last <= self.epochs,
                 f"{where}.average_last must be in [0, epochs={self.epochs}], got {self.average_last}")


@dataclass
class TeacherConfig:
    """The cumbersome model; `checkpoint` loads a trained one instead of training it."""

    model: ModelSpec = field(default_factory=lambda: ModelSpec("mlp", {"hidden": [256, 256], "dropout_input": 0.1,
                                                                       "dropout_hidden": 0.3, "max_norm": 3.5}))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, batch_size=32, lr=0.1))
    checkpoint: str | None = None


@dataclass
class EnsembleConfig:
    """The teacher as an ensemble of `size` members, each with its own derived seed (docs/method.md section 3).

    Members use teacher.model and teacher.train, or the specs in `models` taken in turn (member i gets
    models[i % len(models)]). `combine` is how member distributions become one: "arithmetic" (the paper's mean of
    probabilities) or "geometric"; `weights` (one per member, >= 0) default to equal.
    """

    size: int = 1
    models: list[ModelSpec] = field(default_factory=list)
    combine: EnsembleMethod = "arithmetic"
    weights: list[float] | None = None

    def validate(self) -> None:
        _require(self.size >= 1, f"ensemble.size must be >= 1, got {self.size}")
        _require(self.weights is None or len(self.weights) == self.size,
                 f"ensemble.weights needs one weight per member ({self.size}), got {self.weights}")
        _require(self.weights is None or (min(self.weights) >= 0 and sum(self.weights) > 0),
                 f"ensemble.weights must be >= 0 and not all zero, got {self.weights}")


@dataclass
class ClusterConfig:
    """Where the models of a run train. "ray" fans them out over Ray workers (a local Ray by default, or the
    cluster named by --address); "local" trains them one after another in this process, without Ray.

    num_cpus / num_gpus are reserved per model on its worker (torch uses that many threads); num_cpus unset gives
    each model an equal share of the cluster's CPUs (one model alone gets a whole node, ten share it). A model
    whose worker or node dies is retried up to `max_retries` times from its last epoch. Soft targets of large
    transfer sets are computed in shards of `shard_rows` rows, in parallel. `run_folder`: "auto", workers that
    see the run folder write it directly and the others send their files to the driver's node after every epoch;
    "driver", every worker sends them (ensembles/driver_folder.py).
    """

    executor: Executor = "ray"
    num_cpus: float | None = None
    num_gpus: float = 0.0
    max_retries: int = 3
    shard_rows: int = 20000
    run_folder: RunFolder = "auto"

    def validate(self) -> None:
        _require(self.num_cpus is None or self.num_cpus > 0, f"cluster.num_cpus must be > 0, got {self.num_cpus}")
        _require(self.num_gpus >= 0, f"cluster.num_gpus must be >= 0, got {self.num_gpus}")
        _require(self.max_retries >= 0, f"cluster.max_retries must be >= 0, got {self.max_retries}")
        _require(self.shard_rows >= 1, f"cluster.shard_rows must be >= 1, got {self.shard_rows}")


@dataclass
class TransferConfig:
    """The inputs the student learns from: a random fraction of the training set, minus class filters."""

    fraction: float = 1.0
    omit_classes: list[int] = field(default_factory=list)
    keep_classes: list[int] | None = None

    def validate(self) -> None:
        _require(0 < self.fraction <= 1, f"transfer.fraction must be in (0, 1], got {self.fraction}")
        _require(not (self.omit_classes and self.keep_classes is not None),
                 "transfer.omit_classes and transfer.keep_classes cannot both be set")


@dataclass
class LossWeights:
    """The paper's weighted objective: w_soft * T^2 * soft-target term + w_hard * hard-label term."""

    temperature: float = 10.0
    w_soft: float = 1.0
    w_hard: float = 0.2

    def validate(self, where: str) -> None:
        _require(self.temperature > 0, f"{where}.temperature must be > 0, got {self.temperature}")
        _require(self.w_soft >= 0 and self.w_hard >= 0, f"{where}: w_soft and w_hard must be >= 0")
        _require(self.w_soft + self.w_hard > 0, f"{where}: w_soft + w_hard must be > 0 (both are zero)")


@dataclass
class StudentConfig:
    """The small model, trained on the teacher's soft targets over the transfer set."""

    model: ModelSpec = field(default_factory=lambda: ModelSpec("mlp", {"hidden": [64, 64]}))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, batch_size=32, lr=0.05))
    loss: LossWeights = field(default_factory=LossWeights)


@dataclass
class BaselineConfig:
    """The student's architecture and schedule trained on the transfer set's hard labels only."""

    enabled: bool = True


@dataclass
class BiasConfig:
    """Output-bias correction for classes absent from the transfer set (docs/method.md section 2).

    `fixed` maps class -> logit shift (the paper's {3: 3.5}, or {7: -7.6, 8: -7.6}); `auto` picks one
    shift for the absent classes without test labels, by matching the training-set class prior.
    """

    fixed: dict[int, float] = field(default_factory=dict)
    auto: bool = True

    def validate(self) -> None:
        # Logits live within tens of units; a shift of thousands already decides every prediction on its own, and
        # a huge one overflows softmax into NaN at evaluation, after all the training.
        for cls, shift in self.fixed.items():
            _require(abs(shift) <= MAX_LOGIT_SHIFT,
                     f"bias.fixed.{cls} must be within +-{MAX_LOGIT_SHIFT:g}, got {shift}")


@dataclass
class ClusteringConfig:
    """How the specialists' subsets are found (specialists/subsets.py, docs/method.md section 4, step 2).

    source "covariance": the covariance of the generalist's probabilities at `temperature` on the training
    inputs (no labels), accumulated exactly or, with `top_k`, from each prediction's k largest probabilities;
    "confusion": the generalist's symmetrised confusion rates on the training set. `normalize` zeroes the
    diagonal and scales each column to unit length before k-means ("kmeans", or "online" mini-batch k-means).
    Each class joins its `overlap` nearest clusters; subsets are then capped at `max_size` classes nearest their
    centre and filled up to `min_size`.
    """

    source: AffinitySource = "covariance"
    temperature: float = 2.0
    top_k: int | None = None
    normalize: bool = True
    algorithm: KMeansAlgorithm = "kmeans"
    overlap: int = 1
    min_size: int = 2
    max_size: int | None = None

    def validate(self, count: int) -> None:
        _require(self.temperature > 0, f"specialists.clustering.temperature must be > 0, got {self.temperature}")
        _require(self.top_k is None or self.top_k >= 1, f"specialists.clustering.top_k must be >= 1, got {self.top_k}")
        _require(1 <= self.overlap <= max(1, count),
                 f"specialists.clustering.overlap must be in [1, specialists.count={count}], got {self.overlap}")
        _require(self.min_size >= 1, f"specialists.clustering.min_size must be >= 1, got {self.min_size}")
        _require(self.max_size is None or self.max_size >= self.min_size,
                 f"specialists.clustering.max_size ({self.max_size}) must be >= min_size ({self.min_size})")


@dataclass
class SpecialistsConfig:
    """A generalist (teacher.model, teacher.train) with `count` specialists (docs/method.md section 4); 0: none.

    Specialists are the generalist's architecture with an output per class of their subset plus a dustbin, start
    from its weights and train with `train` on half special, half other examples, on hard labels as in the paper
    (`loss` with w_soft = 0) or, with w_soft > 0, also on the generalist's soft targets at `loss.temperature`
    folded into the subset's classes plus the dustbin (the paper's "soft targets as regularizers", which it
    proposed and left untried); `dustbin_correction` then adds the prior-shift correction to the dustbin logit.
    `compute_matched` (on by default) also trains the control every specialist gain should beat: the generalist
    trained on, with its own settings, for as many example-epochs as all its specialists together;
    `generalist_student` (off by default: one more student to train) the control of the student's share: a student
    of the same architecture and schedule distilled from the generalist alone, its soft targets stored as the
    combination's are, so what the student owes to the specialists is its difference from this one. At inference a
    specialist is active when its subset holds one of the generalist's `top_n` classes, and eq. 5 is solved by
    `solver` ("em" or "gradient"). The combined
    distributions are the student's soft targets; `targets_top_k` stores only each row's k largest probabilities
    and the remaining mass (spread evenly over the other classes), for very large label sets.
    """

    count: int = 0
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, batch_size=64, lr=0.02,
                                                                   schedule="constant"))
    loss: LossWeights = field(default_factory=lambda: LossWeights(temperature=1.0, w_soft=0.0, w_hard=1.0))
    dustbin_correction: bool = True
    compute_matched: bool = True
    generalist_student: bool = False
    top_n: int = 1
    solver: Eq5Solver = "em"
    targets_top_k: int | None = None

    def validate(self) -> None:
        _require(self.count >= 0, f"specialists.count must be >= 0, got {self.count}")
        self.clustering.validate(self.count)
        self.train.validate("specialists.train")
        self.loss.validate("specialists.loss")
        _require(self.top_n >= 1, f"specialists.top_n must be >= 1, got {self.top_n}")
        _require(self.targets_top_k is None or self.targets_top_k >= 1,
                 f"specialists.targets_top_k must be >= 1, got {self.targets_top_k}")


@dataclass
class RunConfig:
    """A teacher (one model, an ensemble, or a generalist with specialists), its soft targets on a transfer set,
    a distilled student and a hard-label baseline."""

    seed: int = 0
    device: Device = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    bias: BiasConfig = field(default_factory=BiasConfig)
    specialists: SpecialistsConfig = field(default_factory=SpecialistsConfig)

    def validate(self) -> None:
        _check_finite(self, "")
        _require(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}")
        self.teacher.train.validate("teacher.train")
        self.student.train.validate("student.train")
        self.student.loss.validate("student.loss")
        self.transfer.validate()
        self.bias.validate()
        self.ensemble.validate()
        self.cluster.validate()
        self.specialists.validate()
        _require(not (self.specialists.count and self.ensemble.size > 1),
                 "specialists.count > 0 needs one generalist: set ensemble.size to 1")
        _require(not (self.teacher.checkpoint and self.ensemble.size > 1),
                 "teacher.checkpoint loads one teacher; it cannot be combined with ensemble.size > 1")


def check_arguments(function: Any, given: dict[str, Any], fixed: set[str], what: str, where: str) -> None:
    """Reject keys of `given` that `function` (or class) does not take, besides the `fixed` ones Distillery passes
    itself, and values that do not fit the types it annotates: a model's or a data set's arguments come from the
    config as free-form mappings, so they are checked against the function that takes them."""
    accepted = set(inspect.signature(function).parameters) - fixed
    unknown = sorted(set(given) - accepted, key=str)
    if unknown:
        raise ConfigError(f"unknown {what} '{unknown[0]}' {where} (known: {', '.join(sorted(accepted)) or 'none'})")
    hints = typing.get_type_hints(function.__init__ if isinstance(function, type) else function)
    for name, value in given.items():
        check_value(hints.get(name, Any), value, name, label=f"{what}", error=ConfigError)


def _check_finite(node: Any, key: str) -> None:
    """No value of a config means anything as infinity or NaN, and each would only show as a NaN loss or a
    silently wrong model later: refuse them wherever they are, naming the key."""
    if dataclasses.is_dataclass(node):
        for item in dataclasses.fields(node):
            _check_finite(getattr(node, item.name), f"{key}.{item.name}" if key else item.name)
    elif isinstance(node, dict):
        for name, value in node.items():
            _check_finite(value, f"{key}.{name}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _check_finite(value, f"{key}[{index}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key} must be a finite number, got {node}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build config dataclass `cls` from plain data, checking every key and type; errors name the dotted key."""
    return from_plain(cls, data, label="config key", error=ConfigError, where=where)


def to_dict(config: Any) -> dict[str, Any]:
    return to_plain(config)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (so 3, 0.5, [1, 2], null work)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects KEY=VALUE, got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set has an empty key in {assignment!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"--set {dotted}: cannot parse value {raw!r}") from None
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """The embedded default, updated from the YAML file at `path` and then from `overrides`."""
    data = to_dict(RunConfig())
    if path is not None:
        _merge(data, _read_yaml(Path(path)))
    for assignment in overrides:
        apply_override(data, assignment)
    config = from_dict(RunConfig, data)
    config.validate()
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a YAML file: {path}") from None
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return loaded


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last value silently, and an
    experiment then runs with a setting its author did not see."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key '{key}' is given twice in one section (line {key_node.start_mark.line + 1})"
                                  ": keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    """Deep-merge `update` into `base`.

    A model spec is replaced whole, so a YAML naming another architecture does not inherit the default's kwargs;
    free-form mappings (data options, bias shifts) are values, not sections, and are replaced whole too.
    """
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in ("model", "options", "fixed"):
            _merge(base[key], value)
        else:
            base[key] = value


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
