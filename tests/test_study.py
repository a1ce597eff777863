"""Studies: `distillery sweep` and `distillery compare`, and the intervals they report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import job_events, run_metrics, set_args
from distill.errors import ConfigError
from distill.intervals import paired_bootstrap, seed_interval, spread
from distillery.cli import main
from distillery.comparison import ComparedRun, _coverage_trend, _examples_slope, _gain_kept, _table_slope
from distillery.study_report import _coverage_section, _setting_section
from distillery.study import STUDY, StudyDefinition, parse_grid, parse_seeds, read_study, study_points
from distill import outcomes
from specialists.gains import CoverageRow

TINY = ["data.name=synthetic", "data.options={classes: 12, groups: 3, dim: 16, train_per_class: 30, test_per_class: 10}",
        "teacher.model.kwargs={hidden: [32]}", "teacher.train.epochs=3", "student.model.kwargs={hidden: [16]}",
        "student.train.epochs=3", "ensemble.size=2", "specialists.count=0"]


def test_seeds_are_a_count_or_a_list():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,5,7") == [0, 5, 7] == parse_seeds("[0, 5, 7]")
    for bad in ("0", "-1", "x", "1,1", "[]", "1.5"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_a_grid_is_keys_with_non_empty_lists():
    assert parse_grid(["student.loss.temperature=[2, 4]", "a.b=[x]"]) == {"student.loss.temperature": [2, 4],
                                                                         "a.b": ["x"]}
    for bad in (["t=[]"], ["t=4"], ["=[1]"], ["t=[1]", "t=[2]"], ["seed=[1, 2]"]):
        with pytest.raises(ConfigError):
            parse_grid(bad)


def test_every_grid_point_times_every_seed_is_one_run_folder_named_by_its_settings():
    definition = StudyDefinition(None, ["teacher.train.epochs=2"], {"student.loss.temperature": [2, 4.5],
                                                                   "student.model.kwargs": [{"hidden": [8, 8]}]},
                                 [0, 7])
    points = study_points(definition)
    assert [p.run.folder for p in points] == [
        f"student.loss.temperature={t}/student.model.kwargs={{hidden:[8,8]}}/seed={s}" for t in (2, 4.5) for s in (0, 7)]
    assert [(p.config.student.loss.temperature, p.config.seed) for p in points] == [(2, 0), (2, 7), (4.5, 0),
                                                                                    (4.5, 7)]
    assert all(p.config.teacher.train.epochs == 2 and p.config.student.model.kwargs == {"hidden": [8, 8]}
               for p in points)


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "--seeds 0 names no seed"),
    (["--seeds", "2", "--grid", "student.loss.temprature=[2, 4]"], "unknown config key 'student.loss.temprature'"),
    (["--seeds", "2", "--grid", "student.loss.temperature=[]"], "the list of values is empty"),
    (["--seeds", "2", "--grid", "student.loss.temperature=[2, -1]"], "temperature"),
    (["--resume"], "holds none"),
])
def test_a_bad_study_ends_in_one_line_before_anything_is_written(tmp_path, capsys, args, message):
    out = tmp_path / "study"
    assert main(["sweep", "--out", str(out), *args]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not out.exists()


def test_the_t_interval_over_seeds_matches_the_textbook():
    interval = seed_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2 df) = 4.3027
    assert interval.low == pytest.approx(2 - 4.3027 / 3 ** 0.5, abs=1e-4)
    assert interval.high == pytest.approx(2 + 4.3027 / 3 ** 0.5, abs=1e-4)
    assert seed_interval([5.0]) is None and spread([5.0]).sd is None


def test_the_paired_bootstrap_finds_the_normal_interval_of_a_known_difference():
    # Model A right and B wrong on 300 of 4000 examples, the reverse on 100: the difference of accuracies is 0.05
    # with standard error sqrt((0.1 - 0.05^2) / 4000); the 95 % interval is about 0.05 +- 1.96 of that.
    differences = np.zeros(4000)
    differences[:300], differences[300:400] = 1.0, -1.0
    interval = paired_bootstrap(differences, samples=4000)
    half = 1.96 * np.sqrt((0.1 - 0.05 ** 2) / 4000)
    assert interval.low == pytest.approx(0.05 - half, abs=0.001)
    assert interval.high == pytest.approx(0.05 + half, abs=0.001)
    assert interval.excludes_zero
    same = paired_bootstrap(np.zeros(500))
    assert (same.low, same.high, same.excludes_zero) == (0.0, 0.0, False)


def _coverage_run(seed: int, changes: dict[str, float]) -> ComparedRun:
    """A compared run whose only metrics are the specialists' Table 4: {covering: relative change}, 100 test
    examples in each row but "1", which has 300."""
    table = [CoverageRow(covering, 300 if covering == "1" else 100, 0.5, 0.5 * (1 + change), change)
             for covering, change in changes.items()]
    metrics = SimpleNamespace(specialists=SimpleNamespace(gain_by_coverage=table))
    return ComparedRun(Path(f"seed={seed}"), {}, seed, metrics, None)


def test_the_coverage_slope_is_the_weighted_least_squares_line_over_covered_rows():
    # Rows 1, 2, "10+" (counted as 10); row 0 is left out, as the paper's shape is about covered classes.
    run = _coverage_run(0, {"0": 0.5, "1": 0.01, "2": 0.03, "10+": 0.05})
    x, y, w = np.array([1.0, 2.0, 10.0]), np.array([0.01, 0.03, 0.05]), np.array([300.0, 100.0, 100.0])
    expected = np.polyfit(x, y, 1, w=np.sqrt(w))[0]  # polyfit weights multiply the residuals, not their squares
    assert _table_slope(run.metrics.specialists.gain_by_coverage) == pytest.approx(expected, rel=1e-9)
    assert _table_slope(_coverage_run(0, {"0": 0.1, "1": 0.2}).metrics.specialists.gain_by_coverage) is None


def test_table_4_over_seeds_has_each_row_with_its_seeds_and_the_slope_interval():
    runs = [_coverage_run(0, {"1": 0.01, "2": 0.02, "10+": 0.10}), _coverage_run(1, {"1": 0.00, "2": 0.04}),
            _coverage_run(2, {"0": 0.03, "1": 0.02, "3": 0.05})]
    trend = _coverage_trend(runs)
    assert [(row.covering, row.relative_change.n) for row in trend.rows] == [("0", 1), ("1", 3), ("2", 2), ("3", 1),
                                                                             ("10+", 1)]
    assert trend.rows[1].relative_change.mean == pytest.approx(0.01)
    slopes = [_table_slope(run.metrics.specialists.gain_by_coverage) for run in runs]
    assert slopes[1] == pytest.approx(0.04) and slopes[2] == pytest.approx(0.015)  # two rows: the line through them
    assert trend.slope.mean == pytest.approx(np.mean(slopes)) and trend.slope.n == 3
    assert (trend.slope_over_seeds.low, trend.slope_over_seeds.high) == pytest.approx(
        (seed_interval(slopes).low, seed_interval(slopes).high))
    section = "\n".join(_coverage_section(trend))
    assert "| 10+ | 1 | 100 | 50.00 | 10.0 |" in section and "% per specialist (n = 3)" in section
    assert _coverage_trend([ComparedRun(Path("x"), {}, 0, SimpleNamespace(specialists=None), None)]) is None


def test_the_student_control_says_which_share_of_the_gain_the_student_owes_to_the_specialists():
    # (generalist, specialists, student, student of the generalist alone) per seed, in accuracy
    seeds = [(0.50, 0.54, 0.55, 0.53), (0.40, 0.42, 0.43, 0.43)]
    runs = [ComparedRun(Path(f"seed={seed}"), {}, seed, SimpleNamespace(models={
        name: SimpleNamespace(accuracy=value)
        for name, value in zip(("generalist", "specialists", "student", "generalist_student"), values)}), None)
        for seed, values in enumerate(seeds)]
    pairs = [("specialists", "generalist"), ("student", "generalist"), ("student", "generalist_student")]
    kept = _gain_kept(runs, pairs)
    assert kept.share.mean == pytest.approx(np.mean([0.05 / 0.04, 0.03 / 0.02]))
    assert kept.owed.mean == pytest.approx(np.mean([0.02 / 0.04, 0.0]))
    assert _gain_kept(runs, pairs[:2]).owed is None
    setting = SimpleNamespace(settings={}, seeds=[0, 1], models={}, differences=[], gain_kept=kept, coverage=None)
    assert "the share the student owes to the specialists" in "\n".join(_setting_section(setting))


def _answered_run(coverage: list[int], right_before: list[float], right_after: list[float],
                  per_class: int = 2000) -> ComparedRun:
    """A run with per-example answers: in class c (covered coverage[c] times) the generalist is right on the first
    right_before[c] share of its test examples, generalist + specialists on the first right_after[c] share."""
    labels = np.repeat(np.arange(len(coverage)), per_class)
    position = np.tile(np.arange(per_class) / per_class, len(coverage))
    answers = {name: outcomes.ModelOutcomes(np.where(position < np.asarray(share)[labels], labels, -1),
                                            np.zeros(len(labels)))
               for name, share in (("generalist", right_before), ("specialists", right_after))}
    rows = [CoverageRow(str(coverage[c]), per_class, right_before[c], right_after[c],
                        (right_after[c] - right_before[c]) / right_before[c]) for c in np.argsort(coverage)]
    subsets = SimpleNamespace(coverage=lambda: torch.tensor(coverage))
    metrics = SimpleNamespace(specialists=SimpleNamespace(gain_by_coverage=rows, clustering=subsets),
                              teacher=SimpleNamespace(members={"generalist": "checksum"}))
    return ComparedRun(Path("seed=0"), {}, 0, metrics, outcomes.TestOutcomes(labels, answers))


def test_the_coverage_slope_over_test_examples_brackets_a_known_trend_and_finds_none_where_there_is_none():
    # Coverage 0, 1, 2, 3; the generalist right on half of each class; the combination gains 0, 10 and 20 %
    # relative at coverage 1, 2, 3 (and nothing on the uncovered class): a slope of exactly 0.10 per specialist.
    rising = _answered_run([0, 1, 2, 3], [0.5] * 4, [0.5, 0.5, 0.55, 0.6])
    trend = _coverage_trend([rising])
    assert trend.slope.mean == pytest.approx(0.10)
    labels, answers = rising.outcomes.labels, rising.outcomes.models
    assert _examples_slope(np.array([0, 1, 2, 3])[labels], answers["generalist"].correct(labels),
                           answers["specialists"].correct(labels)) == pytest.approx(0.10)
    assert trend.slope_over_test_examples.low < 0.10 < trend.slope_over_test_examples.high
    assert trend.slope_over_test_examples.excludes_zero and trend.slope_over_test_examples.high < 0.13
    flat = _coverage_trend([_answered_run([0, 1, 2, 3], [0.5] * 4, [0.5] * 4)])
    assert flat.slope.mean == 0 and not flat.slope_over_test_examples.excludes_zero
    assert _coverage_trend([_coverage_run(0, {"1": 0.0, "2": 0.1})]).slope_over_test_examples is None  # no outcomes


def _tiny_sweep(out, *extra):
    return ["sweep", "--seeds", "2", "--grid", "student.loss.temperature=[2, 4]", *set_args(TINY), "--out", str(out),
            *extra]


@pytest.mark.slow
def test_a_tiny_sweep_makes_four_runs_and_compares_them_with_intervals(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(_tiny_sweep(out)) == 0
    assert f"study: {out / 'study.md'}" in capsys.readouterr().out
    study = read_study(out)
    folders = [f"student.loss.temperature={t}/seed={s}" for t in (2, 4) for s in (0, 1)]
    assert [(run.folder, run.status) for run in study.runs] == [(f, "finished") for f in folders]
    for folder in folders:
        assert run_metrics(out / folder).run.executor == "local"  # each run trained in its own task
        assert list((out / folder / "tensorboard").iterdir())
    settings = study.comparison.settings
    assert [s.settings for s in settings] == [{"student.loss.temperature": 2}, {"student.loss.temperature": 4}]
    first = settings[0]
    accuracies = [run_metrics(out / folder).models["student"].accuracy for folder in folders[:2]]
    assert first.models["student"].accuracy.mean == pytest.approx(np.mean(accuracies))
    assert first.models["student"].accuracy.sd == pytest.approx(np.std(accuracies, ddof=1))
    pairs = [(d.model, d.versus, d.metric) for d in first.differences]
    assert pairs == [(m, v, metric) for m, v in [("ensemble", "member mean"), ("student", "member mean"),
                                                 ("student", "baseline"), ("student", "ensemble")]
                     for metric in ("accuracy", "nll")]
    student, ensemble, members = ([run_metrics(out / folder).models[name].accuracy for folder in folders[:2]]
                                  for name in ("student", "ensemble", "member_0"))
    members_1 = [run_metrics(out / folder).models["member_1"].accuracy for folder in folders[:2]]
    shares = [(s - (m0 + m1) / 2) / (e - (m0 + m1) / 2) for s, e, m0, m1 in zip(student, ensemble, members, members_1)]
    assert first.gain_kept.share.mean == pytest.approx(np.mean(shares))
    for difference in first.differences:
        assert difference.over_seeds is not None and difference.over_test_examples is not None
        assert difference.over_test_examples.low <= difference.mean <= difference.over_test_examples.high
    between = {(d.model, d.metric): d for d in study.comparison.between_settings}
    later = [run_metrics(out / folder).models["student"].accuracy for folder in folders[2:]]
    moved = between[("student at student.loss.temperature=4.0", "accuracy")]
    assert moved.versus == "student at student.loss.temperature=2.0" and moved.seeds == 2
    assert moved.mean == pytest.approx(np.mean(np.subtract(later, accuracies)))
    assert not any(name.startswith("member_") or name.startswith("ensemble") for name, _ in between)  # unchanged
    report = (out / "study.md").read_text()
    assert "## student.loss.temperature=4" in report and "student − baseline" in report and " ± " in report
    assert (out / "figures" / "study_accuracy.png").is_file()
    # The same runs compared by hand, from their folders, give the same numbers.
    assert main(["compare", *(str(out / f) for f in folders), "--out", str(tmp_path / "by_hand")]) == 0
    by_hand = read_study(tmp_path / "by_hand")
    assert by_hand.definition is None and by_hand.comparison.settings[1].models == settings[1].models


@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_others_finish(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["sweep", "--seeds", "1", "--grid", "teacher.train.lr=[0.1, 1e30]", *set_args(TINY),
                 "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    study = read_study(out)
    assert [run.status for run in study.runs] == ["finished", "failed"]
    assert "loss" in study.runs[1].error and f"failed: {study.runs[1].folder}" in printed
    assert "Runs not in the comparison" in (out / "study.md").read_text()


@pytest.mark.slow
def test_resume_after_the_driver_is_killed_keeps_finished_runs_and_finishes_the_others(tmp_path):
    out = tmp_path / "study"
    command = [sys.executable, "-m", "distillery", *_tiny_sweep(out, "--set", "student.train.epochs=30")]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            if (out / STUDY).is_file() and any(r.status == "finished" for r in read_study(out).runs):
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the study ended before it could be killed: make its runs longer"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    killed = read_study(out)
    finished = [run.folder for run in killed.runs if run.status == "finished"]
    assert finished and len(finished) < 4
    before = {folder: (out / folder / "metrics.json").stat().st_mtime_ns for folder in finished}
    resumed = subprocess.run([sys.executable, "-m", "distillery", "sweep", "--resume", "--out", str(out)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    study = read_study(out)
    assert [run.status for run in study.runs] == ["finished"] * 4
    for folder in finished:  # not run again: its files and its models' logs are as the killed driver left them
        assert (out / folder / "metrics.json").stat().st_mtime_ns == before[folder]
        assert [e["event"] for e in job_events(out / folder, "student")].count("start") == 1
    assert json.loads((out / STUDY).read_text())["comparison"] is not None


def test_compare_refuses_what_it_cannot_compare_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert "neither a study" in capsys.readouterr().err
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.json").write_text("{}")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "pass --out" in capsys.readouterr().err
