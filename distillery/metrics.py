"""metrics.json: everything a run measured, as one typed record with its schema version.

Written by the pipeline (distillery.evaluation) and read through `read_metrics` by `distillery report`, the CLI's
summary and the benchmark table scripts: the dataclasses below are the schema, and docs/run-folder.md describes
each field. The parts measured by the layers below are theirs: `distill.measures.ModelMetrics` (one model),
`distill.train.EpochRecord` (one epoch of a curve), `specialists.gains.SpecialistsMetrics` (the specialists).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from distill.config import EnsembleMethod, Executor, ModelSpec
from distill.errors import DistilleryError
from distill.measures import ModelMetrics
from distill.records import from_plain, to_plain
from distill.storage import atomic_write_json
from distill.train import EpochRecord
from specialists.gains import SpecialistsMetrics
from specialists.subsets import Subsets

METRICS_VERSION = 1  # 0: files without a version (Distillery 0.1.0 before the records were typed)


@dataclass
class MemberRecord:
    """A teacher model: its architecture and its checkpoint's checksum."""

    model: ModelSpec
    checksum: str


@dataclass
class EnsembleRecord:
    """How an ensemble's members were combined."""

    method: EnsembleMethod
    weights: list[float] | None


@dataclass
class TeacherRecord:
    """What the students learnt from: one teacher ("teacher", or loaded from `checkpoint`), an ensemble's
    members ("member_0"...) with how they were combined, or a generalist with its specialists' checksums."""

    checkpoint: str | None
    members: dict[str, MemberRecord]
    combine: EnsembleRecord | None = None
    specialists: dict[str, str] | None = None

    @property
    def reference(self) -> str:
        """The model students are measured against (agreement, KL): the ensemble, the generalist combined with its
        specialists, or the lone teacher."""
        if self.combine is not None:
            return "ensemble"
        if self.specialists is not None:
            return "specialists"
        (name,) = self.members
        return name


@dataclass
class TransferRecord:
    size: int
    absent_classes: list[int]


@dataclass
class BiasShift:
    """One logit shift on the classes absent from the transfer set, and how it was chosen."""

    shift_on_absent_classes: float
    method: str
    matched_prior: float | None = None


@dataclass
class BiasRecord:
    """The output-bias corrections of the student (docs/method.md section 2): the shift tuned on the test labels
    (a reference, as the paper chose its shifts), the config's fixed shifts, and the automatic prior matching."""

    absent_classes: list[int]
    test_tuned: BiasShift | None = None
    fixed: dict[int, float] | None = None
    auto: BiasShift | None = None

    def corrected_students(self) -> list[str]:
        """The models of metrics.json's `models` that are the student with one of these shifts applied."""
        return [name for shift, name in CORRECTED_STUDENTS.items() if getattr(self, shift) is not None]


CORRECTED_STUDENTS = {"test_tuned": "student_bias_test_tuned", "fixed": "student_bias_fixed",
                      "auto": "student_bias_auto"}


@dataclass
class RunRecord:
    """Where and how the run computed: wall time, every model's seed, device, executor, provenance."""

    seconds: float
    seeds: dict[str, int]
    device: str
    executor: Executor | None  # None only in version-0 files written before the executor was recorded
    versions: dict[str, str]
    git_sha: str | None
    machine: str


@dataclass
class RunMetrics:
    version: int
    models: dict[str, ModelMetrics]
    bias: BiasRecord
    history: dict[str, list[EpochRecord]]
    transfer: TransferRecord
    teacher: TeacherRecord
    run: RunRecord
    specialists: SpecialistsMetrics | None = None

    def students(self) -> list[str]:
        """The distilled student and its bias-corrected variants."""
        return ["student", *self.bias.corrected_students()]

    def curve_groups(self) -> dict[str, str]:
        """The models drawn as one group in the training curves: ensemble members and specialists."""
        groups = dict.fromkeys(self.teacher.members, "members") if self.teacher.combine is not None else {}
        return {**groups, **dict.fromkeys(self.teacher.specialists or {}, "specialists")}


def write_metrics(path: Path, metrics: RunMetrics) -> None:
    atomic_write_json(path, to_plain(metrics))


def read_metrics(path: Path) -> RunMetrics:
    """metrics.json at `path`, of this schema version or an older one; anything else is one clear error."""
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as error:
        raise DistilleryError(f"{path} is not the metrics.json of a finished run: not JSON ({error})") from None
    version = data.get("version", 0) if isinstance(data, dict) else None
    if isinstance(version, int) and version > METRICS_VERSION:
        raise DistilleryError(f"{path} has metrics schema version {version}; this Distillery reads up to "
                              f"{METRICS_VERSION}: upgrade Distillery")
    try:
        return from_plain(RunMetrics, _upgraded(data) if version == 0 else data, label="metrics.json key")
    except DistilleryError as error:
        raise DistilleryError(f"{path} is not the metrics.json of a finished run: {error}") from None


def _upgraded(data: dict) -> dict:
    """A version-0 file in this version's layout: its specialists section held the clustering record's fields at
    its top level, beside two derived ones that the record now computes; the oldest lack the run's executor.
    Every version-0 model was fp32: precisions came with version 1."""
    if isinstance(data.get("run"), dict):
        data["run"].setdefault("executor", None)
    for model in (data.get("models") or {}).values():
        if isinstance(model, dict):
            model.setdefault("precision", "fp32")
    section = data.get("specialists")
    if isinstance(section, dict) and "clustering" not in section:
        section["clustering"] = {field.name: section.pop(field.name, None) for field in dataclasses.fields(Subsets)}
        for derived in ("sizes", "uncovered_classes"):
            section.pop(derived, None)
    return {**data, "version": METRICS_VERSION}
