"""`distillery run` with specialists: the files, the metrics sections, resuming, the Ray fan-out, bad settings."""

import pytest
import torch

from conftest import job_events, run_metrics, set_args
from distill.checkpoint import load_checkpoint
from distill.config import load_config
from distillery import DEMO_CONFIG
from distillery.cli import main
from distillery.pipeline import run
from specialists.clustering import read_subsets, subsets_path
from distill.data import load_synthetic
from specialists.specialist import specialist_data, specialist_labels
from specialists.training import COMPUTE_MATCHED, GENERALIST_STUDENT, matched_epochs

pytestmark = pytest.mark.slow

SPECIALISTS = ["data.name=synthetic",
               "data.options={classes: 24, groups: 4, dim: 16, train_per_class: 30, test_per_class: 10, noise: 2.0}",
               "teacher.model.kwargs={hidden: [32]}", "teacher.train.epochs=4", "student.model.kwargs={hidden: [16]}",
               "student.train.epochs=3", "ensemble.size=1", "specialists.count=4", "specialists.train.epochs=3"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("specialists") / "run"
    assert main(["run", "--out", str(out), *set_args([*SPECIALISTS, "cluster.executor=local"])]) == 0
    return out


def test_a_specialist_run_writes_its_models_subsets_and_study(finished):
    metrics = run_metrics(finished)
    assert {"generalist", "specialists", "student", "baseline"} <= set(metrics.models)
    assert metrics.models["student"].agreement is not None and metrics.models["student"].kl_to_teacher is not None
    section = metrics.specialists
    assert section.clustering == read_subsets(subsets_path(finished)) and len(section.clustering.subsets) == 4
    assert section.clustering.ari == pytest.approx(1.0)  # four far-apart groups of six classes
    assert sum(row.examples for row in section.gain_by_coverage) == 240
    assert section.top1.combined == metrics.models["specialists"].accuracy
    assert set(section.train_seconds) == {f"specialist_{m}" for m in range(4)}
    assert metrics.curve_groups() == {f"specialist_{m}": "specialists" for m in range(4)}
    for figure in ("specialists/affinity.png", "figures/gain_by_coverage.png", "figures/reliability.png"):
        assert (finished / figure).stat().st_size > 1000
    report = (finished / "report.md").read_text()
    assert "## Specialists" in report and "(figures/gain_by_coverage.png)" in report
    assert "reliability diagrams of specialists, student, baseline" in report


def test_specialists_are_the_generalists_architecture_over_subset_plus_dustbin(finished):
    subsets = read_subsets(subsets_path(finished)).subsets
    generalist, _ = load_checkpoint(finished / "generalist.pt")
    for m, subset in enumerate(subsets):
        specialist, payload = load_checkpoint(finished / f"specialist_{m}.pt")
        assert payload["num_classes"] == len(subset) + 1 and payload["model"] == {"name": "mlp",
                                                                                  "kwargs": {"hidden": [32]}}
        # trained from the generalist's weights: the hidden layer moved, but only a little
        drift = (specialist.net[1].weight - generalist.net[1].weight).norm() / generalist.net[1].weight.norm()
        assert 0 < drift < 0.5


def test_resume_reuses_subsets_and_specialists(finished, tmp_path):
    before = {path.name: path.read_bytes() for path in [finished / "specialists" / "subsets.json",
                                                        *finished.glob("specialist_*.pt")]}
    config = load_config(DEMO_CONFIG, [*SPECIALISTS, "cluster.executor=local"])  # the config `finished` ran
    metrics = run(config, finished, data_root=tmp_path, resume=True)
    assert {path.name: path.read_bytes() for path in [finished / "specialists" / "subsets.json",
                                                      *finished.glob("specialist_*.pt")]} == before
    assert job_events(finished, "specialist_0")[-1]["event"] == "reused"
    assert metrics.models["specialists"].errors == run_metrics(finished).models["specialists"].errors


def test_specialists_train_in_parallel_on_the_ray_cluster(ray_cluster, finished, tmp_path):
    out = tmp_path / "ray"
    config = load_config(DEMO_CONFIG, [*SPECIALISTS, "cluster.num_cpus=1"])
    metrics = run(config, out, data_root=tmp_path)
    nodes = {event["node"] for m in range(4) for event in job_events(out, f"specialist_{m}")}
    assert len(nodes - {None}) == 2  # the four specialists ran on both worker nodes
    local = run_metrics(finished)
    for name in ("generalist", "specialists"):  # the same seeds give the same models wherever they train
        assert metrics.models[name].errors == local.models[name].errors


def test_soft_target_specialists_top_k_targets_and_both_controls(tmp_path):
    out = tmp_path / "run"
    extra = ["cluster.executor=local", "specialists.compute_matched=true", "specialists.targets_top_k=3",
             "specialists.loss={temperature: 2.0, w_soft: 0.5, w_hard: 0.5}", "specialists.generalist_student=true"]
    assert main(["run", "--out", str(out), *set_args([*SPECIALISTS, *extra])]) == 0
    metrics = run_metrics(out)
    control = metrics.specialists.compute_matched
    specialist_examples = sum(len(specialist_data(load_synthetic(None, classes=24, groups=4, dim=16,
                                                                 train_per_class=30, test_per_class=10,
                                                                 noise=2.0).y_train, subset,
                                                  metrics.run.seeds[f"specialist_{m}"]).indices)
                              for m, subset in enumerate(metrics.specialists.clustering.subsets))
    assert control.example_epochs == 3 * specialist_examples
    assert control.epochs == matched_epochs(control.example_epochs, 24 * 30)
    assert control.top1.generalist == metrics.models[COMPUTE_MATCHED].accuracy
    assert control.top1.combined == metrics.models["specialists"].accuracy
    assert len(metrics.history[COMPUTE_MATCHED]) == control.epochs
    _, payload = load_checkpoint(out / "specialist_0.pt")
    assert payload["config"]["specialists"]["loss"]["w_soft"] == 0.5
    assert "against the generalist trained" in (out / "report.md").read_text()
    # the student control: the student's seed and schedule, the generalist's own top-3 soft targets
    assert metrics.run.seeds[GENERALIST_STUDENT] == metrics.run.seeds["student"]
    assert len(metrics.history[GENERALIST_STUDENT]) == len(metrics.history["student"]) == 3
    assert metrics.models[GENERALIST_STUDENT].agreement is not None
    control_student, _ = load_checkpoint(out / f"{GENERALIST_STUDENT}.pt")
    student, _ = load_checkpoint(out / "student.pt")
    assert not torch.equal(control_student.net[1].weight, student.net[1].weight)  # the targets differ, nothing else


def test_specialist_labels_map_subset_positions_and_dustbin():
    assert specialist_labels(torch.tensor([5, 1, 3, 0]), [1, 3]).tolist() == [2, 0, 1, 2]


@pytest.mark.parametrize("override, message", [
    ("specialists.count=30", "more than the 24 classes"),
    ("specialists.clustering.min_size=24", "must be below the 24 classes"),
    ("specialists.clustering.max_size=25", "must be below the 24 classes"),
    ("student.train.augment_shift=1", "augment_shift"),
    ("ensemble.size=3", "needs one generalist"),
    ("specialists.solver=newton", "specialists.solver must be em or gradient"),
    ("specialists.clustering.overlap=5", "overlap must be in [1, specialists.count=4]"),
])
def test_bad_specialist_settings_fail_in_one_line(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *set_args([*SPECIALISTS, "cluster.executor=local", override])]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not out.exists()  # refused before the run folder was written
