"""The benchmarks' one habit: results with their provenance in the --out folder, tables that keep what they cannot
remake, and metrics read through the same types as everywhere else."""

import json

import torch

from distill.config import ModelSpec
from distill.measures import classification_metrics
from distillery.benchmark import TableEntry, write_result, write_table
from distillery.metrics import (METRICS_VERSION, BiasRecord, MemberRecord, RunMetrics, RunRecord, TeacherRecord,
                                TransferRecord, write_metrics)
from distillery.run_folder import METRICS


def _run(folder, logits):
    """A finished run's metrics.json whose student has the given test logits on labels [0, 1]."""
    student = classification_metrics(torch.tensor(logits), torch.tensor([0, 1]))
    folder.mkdir(parents=True)
    write_metrics(folder / METRICS, RunMetrics(
        METRICS_VERSION, {"student": student}, BiasRecord([]), {}, TransferRecord(2, []),
        TeacherRecord(None, {"teacher": MemberRecord(ModelSpec(), "checksum")}),
        RunRecord(1.0, {"base": 0}, "cpu", "local", {}, None, "a machine")))


def test_a_result_carries_its_command_and_provenance(tmp_path):
    path = write_result(tmp_path / "results", "probe", {"ratio": 0.5}, markdown=lambda r: f"ratio {r['ratio']}\n")
    record = json.loads(path.read_text())
    assert record["ratio"] == 0.5 and record["command"].startswith("python ")
    assert {"git_sha", "versions", "machine", "written"} <= set(record)
    assert (tmp_path / "results" / "probe.md").read_text() == "ratio 0.5\n"


def test_a_table_summarises_the_runs_at_hand_and_keeps_the_committed_rest(tmp_path):
    out, runs = tmp_path / "results", tmp_path / "runs"
    write_result(out, "table", {"entries": {"rerun": "old value", "elsewhere": "kept", "dropped": "gone"}})
    _run(runs / "rerun", [[2.0, 0.0], [2.0, 0.0]])  # one of two right
    entries = [TableEntry(key, runs / key, lambda metrics: metrics.models["student"].accuracy)
               for key in ("rerun", "elsewhere", "never_run")]
    table = write_table(out, "table", entries, markdown=lambda rows: f"{len(rows)} rows\n")
    assert table == {"rerun": 0.5, "elsewhere": "kept"}  # an entry no longer in the table is not carried on
    assert json.loads((out / "table.json").read_text())["entries"] == table
    assert (out / "table.md").read_text() == "2 rows\n"
