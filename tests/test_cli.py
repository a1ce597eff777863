"""The `distillery run` contract: files written, exit codes, one-line errors."""

import dataclasses
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import job_events, run_metrics, set_args, stage_events
from distill.precision import resolve_precision
from distillery.cli import main

TINY = ["data.name=synthetic", "data.options={classes: 12, groups: 3, dim: 16, train_per_class: 30, test_per_class: 10}",
        "teacher.model.kwargs={hidden: [32]}", "teacher.train.epochs=3", "student.model.kwargs={hidden: [16]}",
        "student.train.epochs=3", "transfer.omit_classes=[2]", "bias.fixed={2: 1.5}",
        "ensemble.size=1", "specialists.count=0", "cluster.executor=local"]


@pytest.mark.slow
def test_tiny_end_to_end_run_writes_the_contract_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *set_args(TINY)]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    metrics = run_metrics(out)
    models = metrics.models
    assert {"teacher", "student", "baseline", "student_bias_fixed", "student_bias_auto"} <= set(models)
    for name, entry in models.items():
        assert entry.errors == round((1 - entry.accuracy) * 120), name
    for name in ("student", "baseline", *metrics.bias.corrected_students()):
        assert models[name].agreement is not None and models[name].kl_to_teacher is not None, name
    assert models["teacher"].agreement is None
    expected = resolve_precision("auto", torch.device("cpu"))  # every model trains on auto, the default
    assert {entry.precision for entry in models.values()} == {expected}
    assert metrics.transfer.absent_classes == [2] and metrics.bias.fixed == {2: 1.5}
    assert set(metrics.run.seeds) >= {"base", "teacher", "student", "baseline", "transfer"}
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["student"]["train"]["epochs"] == 3 and resolved["bias"]["fixed"] == {2: 1.5}
    report = (out / "report.md").read_text()
    assert "| student |" in report and "Automatic bias shift" in report
    assert "Test errors on the classes absent from the transfer set" in report
    assert {p.name for p in out.glob("*.pt")} == {"teacher.pt", "student.pt", "baseline.pt"}
    figures = {"training_curves.png", "reliability.png"}
    assert {p.name for p in (out / "figures").iterdir()} == figures
    assert all(f"(figures/{name})" in report for name in figures)
    assert sum(models["student"].reliability.count) == 120


@pytest.mark.slow
def test_report_rebuilds_the_report_and_figures_of_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *set_args(TINY)]) == 0
    written = (out / "report.md").read_text()
    (out / "report.md").unlink()
    for figure in (out / "figures").iterdir():
        figure.unlink()
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"report: {out / 'report.md'}")
    assert (out / "report.md").read_text() == written
    assert {p.name for p in (out / "figures").iterdir()} == {"training_curves.png", "reliability.png"}
    assert main(["run", "--out", str(out), *set_args(TINY), "--resume"]) == 0  # the rebuilt report counts as current
    assert stage_events(out)[-1] == ("report", "reused")


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "is not the metrics.json of a finished run: the top level must be a mapping, got list"),
    ("{not json", "is not the metrics.json of a finished run: not JSON"),
    ('{"version": 1, "models": {}}', "is not the metrics.json of a finished run: metrics.json key 'bias' is missing"),
    ('{"version": 1, "models": [], "bias": {}, "history": {}, "transfer": {}, "teacher": {}, "run": {}}',
     "metrics.json key 'models' must be a mapping, got []"),
    ('{"version": 99}', "has metrics schema version 99; this Distillery reads up to 1: upgrade Distillery"),
])
def test_report_of_a_malformed_metrics_file_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "metrics.json").write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    _assert_one_line(capsys.readouterr().err, message)
    assert not (tmp_path / "report.md").exists()


@pytest.mark.slow
def test_run_from_a_saved_teacher_reuses_it(tmp_path):
    first = tmp_path / "first"
    assert main(["run", "--out", str(first), *set_args(TINY)]) == 0
    second = tmp_path / "second"
    assert main(["run", "--out", str(second), *set_args(TINY), "--set", f"teacher.checkpoint={first / 'teacher.pt'}",
                 "--set", "baseline.enabled=false"]) == 0
    a, b = run_metrics(first).models, run_metrics(second).models
    assert dataclasses.replace(a["teacher"], train_seconds=None) == b["teacher"]  # the same teacher, evaluated again
    assert a["student"].accuracy == b["student"].accuracy  # same seeds, same soft targets
    assert not (second / "teacher.pt").exists() and "baseline" not in b


@pytest.mark.slow
def test_a_folder_holding_a_run_needs_resume_and_the_same_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *set_args(TINY)]) == 0
    first = run_metrics(out).models
    assert main(["run", "--out", str(out), *set_args(TINY)]) == 2
    assert "already holds a run: pass --resume" in capsys.readouterr().err
    assert main(["run", "--out", str(out), *set_args(TINY), "--set", "student.train.epochs=4", "--resume"]) == 2
    assert "different config (student.train.epochs: 3 there, 4 now)" in capsys.readouterr().err
    # Where a run continues may change: the cluster section is not part of what it computes.
    assert main(["run", "--out", str(out), *set_args(TINY), "--set", "cluster.max_retries=7", "--resume"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["cluster"]["max_retries"] == 7
    for name in ("teacher", "student", "baseline"):
        events = [event["event"] for event in job_events(out, name)]
        assert events[-1] == "reused" and events.count("start") == 1
    again = run_metrics(out).models
    assert {k: v.accuracy for k, v in again.items()} == {k: v.accuracy for k, v in first.items()}
    # A config.yaml written before a key existed resumes: the missing key has today's default.
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["specialists"]["compute_matched"], saved["student"]["train"]["average_last"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["run", "--out", str(out), *set_args(TINY), "--set", "cluster.max_retries=7", "--resume"]) == 0


@pytest.mark.parametrize("args, message", [
    (["--set", "student.loss.temprature=2"], "unknown config key 'student.loss.temprature'"),
    (["--set", "student.loss.temperature=0"], "temperature must be > 0"),
    (["--set", "student.train.epochs=abc"], "student.train.epochs"),
    (["--set", "transfer.keep_classes=[11]"], "class 11"),
    (["--set", "data.name=mnist", "--data-root", "{tmp}/nothing"], "MNIST not found"),
    (["--set", "teacher.checkpoint={tmp}/absent.pt", "--set", "ensemble.size=1"], "checkpoint not found"),
    (["--set", "teacher.checkpoint={tmp}/absent.pt", "--set", "ensemble.size=3", "--set", "specialists.count=0"],
     "cannot be combined with ensemble.size > 1"),
    (["--set", "ensemble.combine=median"], "ensemble.combine must be arithmetic or geometric"),
    (["--set", "ensemble.weights=[1, 2]"], "one weight per member (1)"),
    (["--set", "ensemble.weights=[0]"], "not all zero"),
    (["--set", "ensemble.size=0"], "ensemble.size must be >= 1"),
    (["--set", "cluster.executor=slurm"], "cluster.executor must be ray or local"),
    (["--set", "ensemble.models=[{name: resnet9000}]"], "resnet9000"),
    (["{tmp}/absent.yaml"], "config file not found"),
    (["--set", "bias.fixed={12: 1.0}"], "bias.fixed names class 12"),
    (["--set", "student.model.kwargs={width: 3}"], "unknown argument 'width'"),
    (["--set", "data.options={classes: 5}"], "unknown option 'classes'"),
    (["--set", "data.name=imagenet"], "unknown data set 'imagenet'"),
    (["--set", "student.loss.temperature=-1"], "temperature must be > 0"),
    (["--set", "teacher.train.average_last=41"], "teacher.train.average_last must be in [0, epochs=40], got 41"),
    (["--set", "student.train.clip_grad_norm=0"], "student.train.clip_grad_norm must be > 0 (or null: no clipping)"),
    (["--set", "student.loss={w_soft: 0, w_hard: 0}"], "w_soft + w_hard must be > 0 (both are zero)"),
    (["--set", "student.loss.temperature"], "--set expects KEY=VALUE"),
    (["--set", "specialists.count=11"], "specialists.count=11 is more than the 10 classes of digits"),
    (["--set", "specialists.clustering.max_size=20"], "must be below the 10 classes of digits"),
    (["--set", "specialists.clustering.overlap=5"], "overlap must be in [1, specialists.count=3]"),
    (["--set", "specialists.clustering.temperature=0"], "specialists.clustering.temperature must be > 0"),
    (["--set", "specialists.top_n=0"], "specialists.top_n must be >= 1"),
    (["--set", "specialists.solver=newton"], "specialists.solver must be em or gradient"),
    (["--set", "transfer.omit_classes=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"], "the transfer set is empty"),
    (["--set", "data.name=mnist", "--data-root", "{tmp}/a_file"], "is a file, not a folder"),
    (["--set", "data.name=mnist", "--data-root", "{tmp}/truncated"], "they may be truncated"),
    (["--set", "teacher.checkpoint={tmp}/tampered.pt"], "does not match its checksum"),
    (["--set", "teacher.checkpoint={tmp}/no_sidecar.pt"], "has no checksum file"),
    (["--set", "teacher.checkpoint={tmp}/other.pt"], "is for 12 classes of shape (16,), but digits has 10 classes"),
    (["{tmp}/broken.yaml"], "is not valid YAML"),
    (["{tmp}/a_list.yaml"], "must hold a mapping at the top level"),
    (["{tmp}/duplicate.yaml"], "key 'seed' is given twice in one section (line 3): keep one"),
    (["--set", "teacher.model.kwargs.hidden=[0]"], "teacher.model: hidden must be whole numbers >= 1, got [0]"),
    (["--set", "student.model.kwargs={channels: [8, 0]}", "--set", "student.model.name=cnn",
      "--set", "data.name=mnist", "--data-root", "{shared}"], "student.model: channels must be whole numbers >= 1"),
    (["--set", "student.model.kwargs.dropout_hidden=yes"], "argument 'dropout_hidden' must be float, got True"),
    (["--set", "student.loss.temperature=.inf"], "student.loss.temperature must be a finite number, got inf"),
    (["--set", "bias.fixed={3: .nan}"], "bias.fixed.3 must be a finite number, got nan"),
    (["--set", "teacher.model.kwargs.max_norm=-.inf"], "teacher.model.kwargs.max_norm must be a finite number"),
    (["--set", "teacher.model.kwargs.hidden=[1000000000]"], "teacher.model: mlp {'hidden': [1000000000], "),
    (["--set", "data.name=synthetic", "--set", "data.options={classes: 1000000000000}"],
     "data.options: synthetic data of classes=1,000,000,000,000 x (train_per_class=50 + test_per_class=20) x dim=64"),
    (["--set", "bias.fixed={1: 1e308}"], "bias.fixed.1 must be within +-1000, got 1e+308"),
    (["--set", "data.name=synthetic", "--set", "data.options={classes: abc}"], "option 'classes' must be int"),
    (["--set", "data.name=arrays"], "data.options.path is required for data.name=arrays"),
    (["--set", "data.name=arrays", "--set", "data.options.path={tmp}/missing.npz"], "no file {tmp}/missing.npz"),
    (["--set", "data.name=arrays", "--set", "data.options.path={tmp}/broken.yaml"], "cannot be read as a NumPy"),
    (["--set", "data.name=image_folder", "--set", "data.options.root={tmp}"], "no images under {tmp}"),
    (["--set", "teacher.model={name: 'torchvision:resnet_nope', kwargs: {}}"],
     "torchvision has no classification model 'resnet_nope'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, data_root, args, message):
    _make_bad_files(tmp_path)
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)).replace("{shared}", str(data_root)) for a in args]
    assert main(["run", "--out", str(out), *args]) == 2
    _assert_one_line(capsys.readouterr().err, message.replace("{tmp}", str(tmp_path)))
    assert not out.exists()  # refused before anything was written


# In a process of their own: they start or join Ray, and the NaN one shows a real process ends in exit code 1.
@pytest.mark.parametrize("args, message, exit_code", [
    (["--address", "127.0.0.1:1"], "cannot reach a Ray cluster at --address 127.0.0.1:1", 2),
    # Would wait forever for such a node. Starts a local Ray (seconds): slow tier; tests/test_task_resources.py
    # has the unit tests of the check.
    pytest.param(["--set", "cluster.num_cpus=4096"], "cluster.num_cpus=4096 per model, but the largest Ray node has",
                 2, marks=[pytest.mark.slow, pytest.mark.ray]),
    *[([*set_args(TINY), "--set", "teacher.train.lr=1e30", "--set", f"teacher.train.precision={precision}"],
       "loss became nan", 1) for precision in ("fp32", "bf16")],
])
def test_a_failing_process_prints_one_line(tmp_path, args, message, exit_code):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "distillery", "run", "--out", str(out), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == exit_code, result.stderr
    _assert_one_line(result.stderr, message)
    assert not (out / "metrics.json").exists()


def _assert_one_line(stderr, message):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distillery: error:") and message in lines[0], stderr


def _make_bad_files(tmp_path):
    """A data root that is a file, MNIST files cut short, broken configs, and checkpoints that must be refused."""
    from distill.checkpoint import checksum_path, save_checkpoint
    from distill.models import create_model

    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "duplicate.yaml").write_text("seed: 0\nstudent: {train: {epochs: 3}}\nseed: 1\n")
    raw = tmp_path / "truncated" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03" + bytes(60))  # a valid magic number, then nothing
    (tmp_path / "broken.yaml").write_text("student: {loss: [\n")
    (tmp_path / "a_list.yaml").write_text("- seed\n- 0\n")
    spec = {"name": "mlp", "kwargs": {"hidden": [8]}}
    for name in ("tampered", "no_sidecar", "other"):
        save_checkpoint(tmp_path / f"{name}.pt", create_model("mlp", 12, (16,), hidden=[8]), spec, num_classes=12,
                        input_shape=(16,), seed=0, config={})
    with open(tmp_path / "tampered.pt", "r+b") as tampered:
        tampered.seek(-1, 2)
        last = tampered.read(1)
        tampered.seek(-1, 2)
        tampered.write(bytes([last[0] ^ 1]))
    checksum_path(tmp_path / "no_sidecar.pt").unlink()


def test_report_of_a_folder_without_a_finished_run_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    assert main(["report", str(tmp_path)]) == 2
    expected = f"distillery: error: {tmp_path} holds no finished run: metrics.json is missing"
    assert capsys.readouterr().err.strip() == expected


def test_an_out_folder_that_is_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "out").write_text("")
    assert main(["run", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"distillery: error: --out {tmp_path / 'out'} is a file, not a folder"


@pytest.mark.slow
def test_a_lone_teacher_trains_in_the_driver_without_starting_ray(tmp_path):
    lone = [a for a in TINY if not a.startswith("cluster.")]  # the default executor, ray
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *set_args(lone)]) == 0
    assert run_metrics(out).run.executor == "local"
    assert {e["node"] for e in job_events(out, "teacher")} == {None}  # a job on Ray records its node


def test_an_out_folder_that_cannot_be_created_is_one_line(capsys):
    assert main(["run", "--out", "/proc/distillery-cannot-be-here/run"]) == 2
    _assert_one_line(capsys.readouterr().err, "--out /proc/distillery-cannot-be-here/run: cannot create the folder")


def test_an_interrupted_run_says_how_to_continue_it(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("distillery.pipeline.run", interrupted)
    out = tmp_path / "run folder"
    assert main(["run", "--set", "seed=1", "--out", str(out)]) == 130
    assert capsys.readouterr().err == (f"distillery: interrupted; continue with: distillery run --set seed=1 "
                                       f"--out '{out}' --resume\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run"]) == 130  # the run folder it chose itself goes into the command
    assert "--out runs/" in capsys.readouterr().err
