"""metrics.json is one typed record: written and read by the same code, its version in the file, old files read."""

import dataclasses
import json
from pathlib import Path

import torch

from distill.config import ModelSpec
from distill.measures import ModelMetrics, Reliability, classification_metrics
from distill.records import to_plain
from distill.train import EpochRecord
from distillery.metrics import (METRICS_VERSION, BiasRecord, BiasShift, EnsembleRecord, MemberRecord, RunMetrics,
                                RunRecord, TeacherRecord, TransferRecord, read_metrics, write_metrics)
from specialists.gains import CoverageRow, SpecialistsMetrics, TopOne
from specialists.subsets import Subsets


def _metrics(specialists=None, combine=None):
    logits, labels = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.5]]), torch.tensor([0, 2])
    models = {"teacher": classification_metrics(logits, labels),
              "student": classification_metrics(logits, labels, teacher_logits=logits)}
    return RunMetrics(
        METRICS_VERSION, models, BiasRecord([2], BiasShift(1.5, "tuned"), {2: 1.5}, BiasShift(2.0, "prior", 0.3)),
        {"teacher": [EpochRecord(1, 0.7, 0.1), EpochRecord(2, 0.5, 0.1, test_accuracy=0.5)]}, TransferRecord(2, [2]),
        TeacherRecord(None, {"teacher": MemberRecord(ModelSpec("mlp", {"hidden": [8]}), "abc")}, combine,
                      {"specialist_0": "def"} if specialists else None),
        RunRecord(3.0, {"base": 0, "teacher": 7}, "cpu", "local", {"torch": "2"}, "sha", "machine"), specialists)


SPECIALISTS = SpecialistsMetrics(Subsets([[0, 1]], [0, 0, 1], "covariance", None, 0.5, 0.1), 1, "em", [0.3],
                                 TopOne(0.5, 0.6, 0.2), TopOne(None, None, None),
                                 [CoverageRow("1", 2, 0.5, 0.6, 0.2)], {"specialist_0": 1.0})


def test_metrics_round_trip_through_the_file(tmp_path):
    for metrics in (_metrics(), _metrics(SPECIALISTS), _metrics(combine=EnsembleRecord("geometric", [1.0, 2.0]))):
        write_metrics(tmp_path / "metrics.json", metrics)
        assert json.loads((tmp_path / "metrics.json").read_text())["version"] == METRICS_VERSION
        assert read_metrics(tmp_path / "metrics.json") == metrics  # class ids come back as ints, not strings


def test_a_version_0_file_is_read_into_this_version(tmp_path):
    """Before versions, the specialists section held the clustering fields flat, with sizes and uncovered classes;
    the oldest files also lacked the run's executor, and every model was fp32."""
    expected = _metrics(SPECIALISTS)
    old = to_plain(expected)
    del old["version"], old["run"]["executor"]
    for model in old["models"].values():
        del model["precision"]
    section = old["specialists"]
    section.update(section.pop("clustering"), sizes=[2], uncovered_classes=1)
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    read = read_metrics(tmp_path / "metrics.json")
    assert read.run.executor is None
    assert {model.precision for model in read.models.values()} == {"fp32"}  # there was no bf16 before version 1
    read.run.executor = "local"
    for model in read.models.values():
        model.precision = None
    assert read == expected
    assert read.specialists.clustering.sizes == [2] and read.specialists.clustering.uncovered_classes == 1


def test_the_reference_model_and_the_students_come_from_the_records():
    assert _metrics().teacher.reference == "teacher"
    assert _metrics(SPECIALISTS).teacher.reference == "specialists"
    ensemble = _metrics(combine=EnsembleRecord("arithmetic", None))
    assert ensemble.teacher.reference == "ensemble" and ensemble.curve_groups() == {"teacher": "members"}
    assert _metrics().students() == ["student", "student_bias_test_tuned", "student_bias_fixed", "student_bias_auto"]


def test_the_run_folder_page_describes_every_field_of_the_schema():
    text = (Path(__file__).parents[1] / "docs" / "run-folder.md").read_text()
    records = [RunMetrics, ModelMetrics, Reliability, EpochRecord, BiasRecord, BiasShift, TransferRecord, TeacherRecord,
               MemberRecord, EnsembleRecord, RunRecord, SpecialistsMetrics, Subsets, TopOne, CoverageRow]
    missing = [f"{cls.__name__}.{field.name}" for cls in records for field in dataclasses.fields(cls)
               if f"`{field.name}`" not in text]
    assert missing == []
