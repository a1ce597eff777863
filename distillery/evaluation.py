"""metrics.json and test_outcomes.npz: every teacher or member, the ensemble or the specialists' combination, and
each student measured against it on the test set, with the bias corrections of classes absent from the transfer
set; the outcomes file keeps each model's answer per test example for paired comparisons (distillery compare)."""

from __future__ import annotations

import time

import numpy as np
import torch

from distill.config import RunConfig
from distill.data import Dataset, TransferSet
from distill.measures import (ModelMetrics, classification_metrics, prior_matching_shift, shift_logits,
                              shift_tuned_on_labels)
from distill.outcomes import TestOutcomes, outcomes_of, write_outcomes
from distill.provenance import machine, versions
from distill.train import predict_logits
from distillery.context import RunContext
from distillery.manifests import StageManifest
from distillery.metrics import (METRICS_VERSION, BiasRecord, BiasShift, EnsembleRecord, MemberRecord, RunMetrics,
                                RunRecord, TeacherRecord, TransferRecord, read_metrics, write_metrics)
from distillery.run_folder import METRICS, OUTCOMES, computed_settings
from distillery.teachers import Teachers
from ensembles.averaging import combine_log_probs
from ensembles.jobs import TrainedModel
from specialists.gains import SpecialistsMetrics, measure_specialists
from specialists.training import COMPUTE_MATCHED, matched_epochs


def evaluate(context: RunContext, data: Dataset, teachers: Teachers, students: dict[str, TrainedModel],
             transfer: TransferSet, started: float) -> RunMetrics:
    """The run's metrics, written to metrics.json; reused unless the models or settings changed since."""
    path = context.out_dir / METRICS
    checksums = {**teachers.checksums, **{name: model.checksum for name, model in students.items()}}
    if teachers.specialists and teachers.specialists.matched:
        checksums[COMPUTE_MATCHED] = teachers.specialists.matched.checksum
    manifest = StageManifest(context.out_dir, "evaluation", {"inputs": context.inputs_key({"models": checksums}),
                                                             "config": computed_settings(context.config)})
    if manifest.reusable():
        return read_metrics(path)
    models, outcomes, bias, specialists = _measure(context, data, teachers, students, transfer.absent_classes)
    metrics = RunMetrics(METRICS_VERSION, models, bias, context.history,
                         TransferRecord(len(transfer.indices), transfer.absent_classes),
                         _teacher_record(context.config, teachers), _run_record(context, started), specialists)
    write_metrics(path, metrics)
    write_outcomes(context.out_dir / OUTCOMES, outcomes)
    manifest.seal([path, context.out_dir / OUTCOMES])
    return metrics


def _measure(context: RunContext, data: Dataset, teachers: Teachers, students: dict[str, TrainedModel],
             absent: list[int]) -> tuple[dict[str, ModelMetrics], TestOutcomes, BiasRecord, SpecialistsMetrics | None]:
    """Every model's metrics and per-example outcomes, the bias record, and the specialists' section (None without
    specialists)."""
    config, labels = context.config, data.y_test
    models: dict[str, ModelMetrics] = {}
    outcomes = TestOutcomes(labels.cpu().numpy().astype(np.int32), {})

    def measure(name: str, logits: torch.Tensor, reference: torch.Tensor | None = None) -> None:
        models[name] = classification_metrics(logits, labels, reference)
        outcomes.models[name] = outcomes_of(logits, labels)

    teacher_logits = {m.name: predict_logits(m.model, data.x_test, precision=m.precision) for m in teachers.members}
    for name, logits in teacher_logits.items():
        measure(name, logits)
    precisions = {m.name: m.precision for m in [*teachers.members, *students.values()]}
    specialists = None
    if teachers.is_ensemble:
        reference = combine_log_probs(torch.stack(list(teacher_logits.values())), 1.0, config.ensemble.combine,
                                      config.ensemble.weights)
        measure("ensemble", reference)
        precisions["ensemble"] = _common({m.precision for m in teachers.members})
    elif teachers.specialists:
        generalist_logits = teacher_logits[teachers.members[0].name]
        reference = teachers.specialists.combiner.log_probs(data.x_test, generalist_logits=generalist_logits)
        measure("specialists", reference)
        seconds = {m.name: context.seconds[m.name] for m in teachers.specialists.models}
        matched = _compute_matched(data, teachers)
        if matched is not None:
            measure(COMPUTE_MATCHED, matched[0])
            precisions[COMPUTE_MATCHED] = teachers.specialists.matched.precision
        specialists = measure_specialists(teachers.specialists.combiner, teachers.specialists.clustering,
                                          generalist_logits, reference, labels, seconds, matched)
        precisions["specialists"] = _common(set(teachers.specialists.combiner.precisions))
    else:
        reference = teacher_logits[teachers.members[0].name]
    student_logits = {name: predict_logits(model.model, data.x_test, precision=model.precision)
                      for name, model in students.items()}
    for name, logits in student_logits.items():
        measure(name, logits, reference)
    bias, corrected = _bias_corrections(config, data, students["student"], student_logits["student"], absent)
    for name, logits in corrected.items():
        measure(name, logits, reference)
        precisions[name] = precisions["student"]
    for name, model in models.items():
        model.train_seconds, model.precision = context.seconds.get(name), precisions[name]
    return models, outcomes, bias, specialists


def _compute_matched(data: Dataset, teachers: Teachers) -> tuple[torch.Tensor, int, int] | None:
    """The compute-matched generalist's test logits, epochs and the specialists' example-epochs, if it trained."""
    specialists = teachers.specialists
    if specialists.matched is None:
        return None
    logits = predict_logits(specialists.matched.model, data.x_test, precision=specialists.matched.precision)
    return logits, matched_epochs(specialists.example_epochs, len(data.y_train)), specialists.example_epochs


def _common(precisions: set[str]) -> str:
    """The precision of a combination of models: theirs when they agree."""
    return precisions.pop() if len(precisions) == 1 else "mixed"


def _bias_corrections(config: RunConfig, data: Dataset, student: TrainedModel, student_logits: torch.Tensor,
                      absent: list[int]) -> tuple[BiasRecord, dict[str, torch.Tensor]]:
    """The student's test logits with the config's fixed shift, the automatic prior-matching shift, and, for
    reference, the shift tuned on the test labels (how the paper chose its shifts)."""
    bias, corrected = BiasRecord(absent), {}
    if absent:
        tuned = shift_tuned_on_labels(student_logits.cpu(), data.y_test.cpu(), absent)
        corrected["student_bias_test_tuned"] = shift_logits(student_logits, dict.fromkeys(absent, tuned))
        bias.test_tuned = BiasShift(tuned, "fewest test errors (uses test labels)")
    if config.bias.fixed:
        corrected["student_bias_fixed"] = shift_logits(student_logits, config.bias.fixed)
        bias.fixed = config.bias.fixed
    if config.bias.auto and absent:
        train_logits = predict_logits(student.model, data.x_train, precision=student.precision)
        prior = torch.isin(data.y_train.cpu(), torch.tensor(absent)).float().mean().item()
        shift = prior_matching_shift(train_logits.cpu(), absent, prior)
        corrected["student_bias_auto"] = shift_logits(student_logits, dict.fromkeys(absent, shift))
        bias.auto = BiasShift(shift, "prior matching on the training inputs (no test labels)", prior)
    return bias, corrected


def _teacher_record(config: RunConfig, teachers: Teachers) -> TeacherRecord:
    record = TeacherRecord(config.teacher.checkpoint,
                           {m.name: MemberRecord(m.spec, m.checksum) for m in teachers.members})
    if teachers.is_ensemble:
        record.combine = EnsembleRecord(config.ensemble.combine, config.ensemble.weights)
    if teachers.specialists:
        record.specialists = {m.name: m.checksum for m in teachers.specialists.models}
    return record


def _run_record(context: RunContext, started: float) -> RunRecord:
    return RunRecord(time.perf_counter() - started, {"base": context.seed, **context.seeds}, str(context.device),
                     context.cluster.executor, versions(), context.git_sha, machine())
