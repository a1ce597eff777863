"""Resumable runs: stage manifests, stale inputs rerun, and a pipeline killed in three different stages that
finishes with `--resume` exactly as an uninterrupted run, rerunning only what was not finished."""

import signal
import subprocess
import sys
import time

import pytest

from conftest import job_events, run_metrics, set_args, stage_events
from distill.checkpoint import save_checkpoint
from distill.models import create_model
from distillery.cli import main
from distillery.manifests import StageManifest

RUN = ["data.name=synthetic",
       "data.options={classes: 24, groups: 4, dim: 32, train_per_class: 150, test_per_class: 10, noise: 2.0}",
       "teacher.model.kwargs={hidden: [128, 128]}", "teacher.train={epochs: 8, batch_size: 32, lr: 0.05}",
       "specialists.count=4", "specialists.train={epochs: 5, batch_size: 32, lr: 0.02}",
       "student.model.kwargs={hidden: [64]}", "student.train={epochs: 8, batch_size: 32, lr: 0.05}",
       "cluster.executor=local"]
SPECIALISTS = [f"specialist_{m}" for m in range(4)]


def _mid_training(run_dir, names):
    """The first of `names` with a finished epoch but no finished checkpoint, or None."""
    return next((n for n in names if any(e["event"] == "epoch" for e in job_events(run_dir, n))
                 and not (run_dir / f"{n}.pt.sha256").exists()), None)


def test_a_sealed_stage_is_reused_until_its_inputs_or_outputs_change(tmp_path):
    output = tmp_path / "specialists" / "subsets.json"
    output.parent.mkdir()
    output.write_text("[[0, 1]]")
    assert not StageManifest(tmp_path, "clustering", {"generalist": "a"}).reusable()  # nothing sealed yet
    StageManifest(tmp_path, "clustering", {"generalist": "a"}).seal([output])
    assert StageManifest(tmp_path, "clustering", {"generalist": "a"}).reusable()
    assert not StageManifest(tmp_path, "clustering", {"generalist": "b"}).reusable()  # the generalist was retrained
    output.write_text("[[0, 2]]")
    assert not StageManifest(tmp_path, "clustering", {"generalist": "a"}).reusable()  # the output was changed
    output.write_text("[[0, 1]]")
    StageManifest(tmp_path, "clustering", {"generalist": "a"}).path.write_text('{"key": ')  # a manifest cut short
    assert not StageManifest(tmp_path, "clustering", {"generalist": "a"}).reusable()
    assert stage_events(tmp_path) == [("clustering", "ran"), ("clustering", "reused"), ("clustering", "stale"),
                                       ("clustering", "stale"), ("clustering", "stale")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(["run", "--out", str(out), *set_args(RUN)]) == 0
    return out


@pytest.mark.slow
def test_a_finished_run_resumed_reuses_every_stage(straight, tmp_path):
    before = (straight / "metrics.json").read_bytes()
    assert main(["run", "--out", str(straight), *set_args(RUN), "--resume"]) == 0
    assert (straight / "metrics.json").read_bytes() == before
    assert stage_events(straight)[-3:] == [("clustering", "reused"), ("evaluation", "reused"), ("report", "reused")]
    for name in ["generalist", *SPECIALISTS, "student", "baseline"]:
        assert job_events(straight, name)[-1]["event"] == "reused", name


@pytest.mark.slow
def test_a_changed_teacher_file_reruns_the_student_never_reuses_it(tmp_path):
    teacher = tmp_path / "teacher.pt"
    tiny = ["data.name=digits", "specialists.count=0", "student.train.epochs=2", "cluster.executor=local",
            f"teacher.checkpoint={teacher}"]
    spec = {"name": "mlp", "kwargs": {"hidden": [16]}}
    save_checkpoint(teacher, create_model("mlp", 10, (1, 8, 8), hidden=[16]), spec, num_classes=10,
                    input_shape=(1, 8, 8), seed=1, config={})
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *set_args(tiny)]) == 0
    save_checkpoint(teacher, create_model("mlp", 10, (1, 8, 8), hidden=[16]), spec, num_classes=10,
                    input_shape=(1, 8, 8), seed=2, config={})  # same path and config, another teacher
    assert main(["run", "--out", str(out), *set_args(tiny), "--resume"]) == 0
    assert [e["event"] for e in job_events(out, "student")][-4:] == ["stale", "start", "epoch", "epoch"]
    assert [e["event"] for e in job_events(out, "baseline")][-1] == "reused"  # learns from labels only
    assert ("evaluation", "stale") in stage_events(out) and ("report", "stale") in stage_events(out)


@pytest.mark.slow
@pytest.mark.parametrize("stage, names", [("generalist", ["generalist"]), ("specialists", SPECIALISTS),
                                          ("student", ["student"])])
def test_a_run_killed_in_a_stage_resumes_to_the_same_results(straight, tmp_path, stage, names):
    out = tmp_path / "run"
    driver = subprocess.Popen([sys.executable, "-m", "distillery", "run", "--out", str(out), *set_args(RUN)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while (victim := _mid_training(out, names)) is None:
        assert driver.poll() is None, f"the run ended before it reached {stage}: {driver.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {stage}"
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished_before = {n for n in ["generalist", *SPECIALISTS, "student", "baseline"]
                       if (out / f"{n}.pt.sha256").exists()}

    assert main(["run", "--out", str(out), *set_args(RUN), "--resume"]) == 0
    for name in finished_before:
        assert job_events(out, name)[-1]["event"] == "reused", name
    if victim not in finished_before:  # it could finish between being seen mid-training and the kill
        assert "resume" in [e["event"] for e in job_events(out, victim)]  # an epoch is logged after its state
    if stage != "generalist":
        assert ("clustering", "reused") in stage_events(out)
    resumed, expected = run_metrics(out), run_metrics(straight)
    for name, model in expected.models.items():
        for key in ("accuracy", "nll", "ece"):
            assert getattr(resumed.models[name], key) == pytest.approx(getattr(model, key), abs=1e-6), (name, key)
    assert resumed.specialists.clustering.subsets == expected.specialists.clustering.subsets
