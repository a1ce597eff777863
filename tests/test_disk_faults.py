"""Faults on disk: a full disk, a log line cut by a crash, and damaged checkpoints, training states and cache
entries. Each ends in one clear line or is repaired by `--resume`, which redoes exactly what was damaged."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import job_events, run_metrics, set_args
from distill.storage import cache_home, read_json_lines
from distillery.cli import main
from ensembles.jobs import job_status

RUN = ["data.name=synthetic", "data.options={classes: 12, groups: 3, dim: 16, train_per_class: 30, test_per_class: 10}",
       "teacher.model.kwargs={hidden: [32]}", "teacher.train.epochs=3", "student.model.kwargs={hidden: [16]}",
       "student.train.epochs=3", "ensemble.size=2", "specialists.count=0", "cluster.executor=local"]


def _scores(run_dir):
    return {name: (model.errors, round(model.nll, 6)) for name, model in run_metrics(run_dir).models.items()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(["run", "--out", str(out), *set_args(RUN)]) == 0
    return out


def _copy(straight, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(straight, copy)
    return copy


@pytest.mark.slow
def test_a_log_line_cut_by_a_crash_leaves_progress_resume_and_report_working(straight, tmp_path):
    run_dir = _copy(straight, tmp_path)
    for log in ("logs/student.jsonl", "logs/stages.jsonl"):
        (run_dir / log).write_bytes((run_dir / log).read_bytes()[:-15])  # the last line loses its end
    assert job_status(run_dir, "student").epochs == 2  # the cut epoch-3 line is skipped
    assert main(["report", str(run_dir)]) == 0
    assert main(["run", "--out", str(run_dir), *set_args(RUN), "--resume"]) == 0
    assert job_events(run_dir, "student")[-1]["event"] == "reused"  # appended as a line of its own
    assert read_json_lines(run_dir / "logs/stages.jsonl")[-1]["stage"] == "report"
    assert _scores(run_dir) == _scores(straight)


@pytest.mark.slow
def test_damaged_files_are_redone_and_said_so_and_the_rest_is_reused(straight, tmp_path, caplog):
    run_dir = _copy(straight, tmp_path)
    assert main(["run", "--out", str(run_dir), *set_args(RUN), "--resume"]) == 0  # fills this test's own cache
    member = run_dir / "member_0.pt"
    member.write_bytes(member.read_bytes()[: member.stat().st_size // 2])  # a checkpoint cut short
    (run_dir / "student.pt.sha256").unlink()  # the student stopped mid-training...
    (run_dir / "state").mkdir(exist_ok=True)
    (run_dir / "state" / "student.pt").write_bytes(b"\0" * 64)  # ...and its training state is junk
    entries = list(cache_home().rglob("*.pt"))
    assert entries
    for entry in entries:
        entry.write_bytes(b"junk")
    caplog.clear()
    assert main(["run", "--out", str(run_dir), *set_args(RUN), "--resume"]) == 0
    events = {name: [e["event"] for e in job_events(run_dir, name)] for name in ("member_0", "member_1", "student",
                                                                                 "baseline")}
    assert events["member_0"][-5:-3] == ["damaged", "start"]  # retrained
    assert events["member_1"][-1] == "reused" and events["baseline"][-1] == "reused"
    assert events["student"][-5:-3] == ["damaged", "start"]  # started over, from its first epoch
    assert "does not match its checksum" in caplog.text and "cannot be read" in caplog.text
    assert "soft-target cache entry" in caplog.text and "recomputing it" in caplog.text
    assert _scores(run_dir) == _scores(straight)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test (needs root, as CI runs), unmounted after."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("free_kib", [40, 100, 150])  # the disk fills at different stages of the run
def test_a_full_disk_stops_in_one_line_and_resume_finishes_the_run(straight, small_disk, free_kib):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - free_kib * 1024))
    run_dir = small_disk / "run"
    command = [sys.executable, "-m", "distillery", "run", "--out", str(run_dir), *set_args(RUN)]
    full = subprocess.run(command, capture_output=True, text=True, timeout=120)
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 1 and len(lines) == 1, full.stderr
    assert "no space left on the device" in lines[0] and "--resume" in lines[0]
    assert not (run_dir / "report.md").exists()  # the run's last output: the run does not look finished
    if (run_dir / "metrics.json").exists():  # the evaluation finished before the disk filled: whole, and sealed
        assert run_metrics(run_dir).models and (run_dir / "manifests" / "evaluation.json").exists()
    assert not list(run_dir.rglob("*.tmp*")), "a temporary file was left behind"
    filler.unlink()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert _scores(run_dir) == _scores(straight)
