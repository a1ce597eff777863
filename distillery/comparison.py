"""Runs compared with their uncertainty: per setting, every model's metrics as mean ± sd over seeds, and the paired
differences that decide whether a setting helps, each with two 95 % intervals (distill.intervals):

- `over_seeds`: Student's t over the per-seed differences (another training run);
- `over_test_examples`: a paired bootstrap over the test examples, the difference averaged over seeds (another test
  set of the same size).

Runs are grouped into settings by the config keys on which they differ, the seed and the `cluster` section aside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from distill.errors import DistilleryError
from distill.intervals import (BOOTSTRAP_SAMPLES, LEVEL, Interval, Spread, interval, paired_bootstrap,
                               seed_interval, spread)
from distill.outcomes import TestOutcomes, read_outcomes
from distillery.metrics import CORRECTED_STUDENTS, RunMetrics, read_metrics
from distillery.run_folder import CONFIG, METRICS, OUTCOMES, flat_settings
from specialists.gains import COVERAGE_BUCKETS
from specialists.training import COMPUTE_MATCHED, GENERALIST_STUDENT

DifferenceMetric = Literal["accuracy", "nll"]
MEMBER_MEAN = "member mean"


@dataclass
class ModelSummary:
    """One model over the seeds of a setting (agreement: students only)."""

    accuracy: Spread
    errors: Spread
    nll: Spread
    ece: Spread
    agreement: Spread | None


@dataclass
class Difference:
    """`model` minus `versus` in `metric` (accuracy as a fraction, NLL in nats), paired within each run."""

    model: str
    versus: str
    metric: DifferenceMetric
    mean: float
    seeds: int
    over_seeds: Interval | None  # None with one seed
    over_test_examples: Interval | None  # None when a run lacks test_outcomes.npz or the runs' test sets differ


@dataclass
class GainKept:
    """The share of a combination's accuracy gain that the student keeps, per run: (student - base) /
    (combination - base), for an ensemble over its member mean, or specialists over their generalist; with the
    student control, also the share it owes to the specialists: (student - generalist_student) / (combination -
    base), what distilling the generalist alone would not have given it."""

    combination: str
    base: str
    share: Spread
    owed: Spread | None = None


@dataclass
class CoverageSpread:
    """One row of the paper's Table 4 over the seeds that have it: test examples per seed, the generalist's
    accuracy and the relative top-1 change of generalist + specialists over it."""

    covering: str
    examples: Spread
    generalist_accuracy: Spread
    relative_change: Spread


@dataclass
class CoverageTrend:
    """Table 4 over seeds, and whether the gain grows with the number of specialists covering a class: per seed,
    the least-squares slope of the relative change against coverage (rows 1 to "10+", the last counted as 10,
    each row weighted by its test examples), summarised over seeds with Student's t."""

    rows: list[CoverageSpread]
    slope: Spread | None  # relative change per specialist; None where no seed has two covered rows
    slope_over_seeds: Interval | None
    # The mean slope over seeds with the test examples resampled (the same resample in every seed), where every run
    # kept its per-example answers on the same test set.
    slope_over_test_examples: Interval | None = None


@dataclass
class SettingComparison:
    settings: dict[str, Any]  # the keys on which the compared runs differ, and this setting's values
    runs: list[str]
    seeds: list[int]
    models: dict[str, ModelSummary]
    differences: list[Difference]
    gain_kept: GainKept | None = None
    coverage: CoverageTrend | None = None  # runs with specialists


@dataclass
class Comparison:
    settings: list[SettingComparison]
    # Each later setting against the first, per model, paired by seed (models equal in every setting left out).
    between_settings: list[Difference] = field(default_factory=list)


@dataclass
class ComparedRun:
    folder: Path
    settings: dict[str, Any]
    seed: int
    metrics: RunMetrics
    outcomes: TestOutcomes | None


def compare_runs(folders: list[Path], study_dir: Path) -> Comparison:
    """Group the finished runs in `folders` by setting and compare them; runs are named by their folder relative to
    `study_dir`, where the comparison is saved."""
    runs = _read_runs(folders)
    groups: dict[str, list[ComparedRun]] = {}
    for run in runs:
        groups.setdefault(repr(sorted(run.settings.items())), []).append(run)
    settings = list(groups.values())
    return Comparison([_compare_setting(group, study_dir) for group in settings],
                      [difference for later in settings[1:] for difference in _between(settings[0], later)])


def setting_label(settings: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items()) or "all runs"


def _read_runs(folders: list[Path]) -> list[ComparedRun]:
    configs, runs = [], []
    for folder in folders:
        if not (folder / METRICS).is_file() or not (folder / CONFIG).is_file():
            raise DistilleryError(f"{folder} holds no finished run: {METRICS} or {CONFIG} is missing")
        configs.append(flat_settings(yaml.safe_load((folder / CONFIG).read_text())))
    varying = [key for key in configs[0] if key != "seed" and any(c.get(key) != configs[0][key] for c in configs)]
    varying += sorted({key for c in configs for key in c if key not in configs[0]})
    for folder, config in zip(folders, configs):
        outcomes = read_outcomes(folder / OUTCOMES) if (folder / OUTCOMES).is_file() else None
        runs.append(ComparedRun(folder, {key: config.get(key) for key in varying}, config["seed"],
                                read_metrics(folder / METRICS), outcomes))
    return runs


def _compare_setting(runs: list[ComparedRun], study_dir: Path) -> SettingComparison:
    names = [name for name in runs[0].metrics.models if all(name in run.metrics.models for run in runs)]
    models = {name: _summary([run.metrics.models[name] for run in runs]) for name in names}
    pairs = _pairs(runs[0].metrics, names)
    differences = [_difference(runs, model, versus, metric)
                   for model, versus in pairs for metric in ("accuracy", "nll")]
    return SettingComparison(runs[0].settings, [os.path.relpath(run.folder, study_dir) for run in runs],
                             [run.seed for run in runs], models, differences, _gain_kept(runs, pairs),
                             _coverage_trend(runs))


def _summary(metrics: list) -> ModelSummary:
    agreement = [m.agreement for m in metrics]
    return ModelSummary(spread([m.accuracy for m in metrics]), spread([m.errors for m in metrics]),
                        spread([m.nll for m in metrics]), spread([m.ece for m in metrics]),
                        spread(agreement) if None not in agreement else None)


def _pairs(metrics: RunMetrics, names: list[str]) -> list[tuple[str, str]]:
    """The differences that say whether the teachers and the student earn their cost: the ensemble against its
    average member, the specialists against their generalist, the student against its hard-label twin and
    against the teacher it learnt from; and each bias correction against the uncorrected student."""
    teacher = metrics.teacher
    pairs = []
    if teacher.combine is not None:
        pairs += [("ensemble", MEMBER_MEAN), ("student", MEMBER_MEAN)]
    if teacher.specialists is not None:
        generalist = next(iter(teacher.members))
        pairs += [("specialists", generalist), ("specialists", COMPUTE_MATCHED), ("student", generalist),
                  ("student", GENERALIST_STUDENT)]
    if "baseline" in names:
        pairs.append(("student", "baseline"))
    pairs.append(("student", teacher.reference))
    corrected = metrics.bias.corrected_students()
    pairs += [(name, "student") for name in corrected]  # does a bias correction help the student?
    automatic, tuned = CORRECTED_STUDENTS["auto"], CORRECTED_STUDENTS["test_tuned"]
    if automatic in corrected and tuned in corrected:
        pairs.append((automatic, tuned))  # how close a shift chosen without test labels gets to the best one
    return [(model, versus) for model, versus in pairs if model in names and versus in [*names, MEMBER_MEAN]]


def _between(reference: list[ComparedRun], later: list[ComparedRun]) -> list[Difference]:
    """Each model of `later` minus the same model of `reference`, paired by seed: the runs of a seed share their
    seeds and test set, so the seed's own luck cancels."""
    by_seed = {run.seed: run for run in reference}
    pairs = [(run, by_seed[run.seed]) for run in later if run.seed in by_seed]
    if not pairs:
        return []
    names = [name for name in pairs[0][0].metrics.models
             if all(name in a.metrics.models and name in b.metrics.models for a, b in pairs)]
    differences = []
    label, reference_label = setting_label(later[0].settings), setting_label(reference[0].settings)
    for name in names:
        if all(_value(a.metrics, name, metric) == _value(b.metrics, name, metric)
               for a, b in pairs for metric in ("accuracy", "nll")):
            continue  # the same model in both settings (a teacher loaded from one checkpoint)
        differences += [_paired(pairs, name, name, metric, f"{name} at {label}",
                                f"{name} at {reference_label}") for metric in ("accuracy", "nll")]
    return differences


def _gain_kept(runs: list[ComparedRun], pairs: list[tuple[str, str]]) -> GainKept | None:
    """Defined when the first pair is a combination over its base (ensemble, specialists) and the student was
    compared with the same base; a run whose combination gained nothing has no share and is left out (n says)."""
    (combination, base), *_ = pairs
    if combination == "student" or ("student", base) not in pairs:
        return None
    controlled = ("student", GENERALIST_STUDENT) in pairs
    shares, owed = [], []
    for run in runs:
        base_accuracy = _value(run.metrics, base, "accuracy")
        gain = _value(run.metrics, combination, "accuracy") - base_accuracy
        if gain != 0:
            student = _value(run.metrics, "student", "accuracy")
            shares.append((student - base_accuracy) / gain)
            if controlled:
                owed.append((student - _value(run.metrics, GENERALIST_STUDENT, "accuracy")) / gain)
    return GainKept(combination, base, spread(shares), spread(owed) if owed else None) if shares else None


def _coverage_trend(runs: list[ComparedRun]) -> CoverageTrend | None:
    runs = [run for run in runs if run.metrics.specialists is not None]
    if not runs:
        return None
    by_bucket: dict[str, list] = {}
    for run in runs:
        for row in run.metrics.specialists.gain_by_coverage:
            if row.relative_change is not None:
                by_bucket.setdefault(row.covering, []).append(row)
    rows = [CoverageSpread(bucket, spread([r.examples for r in found]), spread([r.generalist_accuracy for r in found]),
                           spread([r.relative_change for r in found]))
            for bucket, found in sorted(by_bucket.items(), key=lambda item: _coverage_count(item[0]))]
    slopes = [slope for slope in (_table_slope(run.metrics.specialists.gain_by_coverage) for run in runs)
              if slope is not None]
    return CoverageTrend(rows, spread(slopes) if slopes else None, seed_interval(slopes),
                         _slope_over_test_examples(runs) if slopes else None)


def _table_slope(table: list) -> float | None:
    """The slope of one run's Table 4 (metrics.json's rows)."""
    rows = [row for row in table if row.relative_change is not None]
    return _weighted_slope(np.array([_coverage_count(row.covering) for row in rows]),
                          np.array([row.relative_change for row in rows]), np.array([row.examples for row in rows]))


def _weighted_slope(covering: np.ndarray, relative_change: np.ndarray, examples: np.ndarray) -> float | None:
    """Weighted least-squares slope of the relative change against coverage over the covered rows (covering >= 1),
    each row weighted by its test examples; None with fewer than two such rows."""
    covered = covering >= 1
    x, y, w = covering[covered].astype(np.float64), relative_change[covered], examples[covered].astype(np.float64)
    if len(x) < 2:
        return None
    centre = np.average(x, weights=w)
    return float(np.sum(w * (x - centre) * (y - np.average(y, weights=w))) / np.sum(w * (x - centre) ** 2))


def _slope_over_test_examples(runs: list[ComparedRun], samples: int = BOOTSTRAP_SAMPLES) -> Interval | None:
    labels = runs[0].outcomes.labels if runs[0].outcomes is not None else None
    if not all(run.outcomes is not None and np.array_equal(run.outcomes.labels, labels) for run in runs):
        return None
    examples = []  # per run: each test example's coverage bucket, and whether generalist and combination are right
    for run in runs:
        coverage = run.metrics.specialists.clustering.coverage().numpy()
        generalist = next(iter(run.metrics.teacher.members))
        answers = run.outcomes.models
        examples.append((np.minimum(coverage[labels], COVERAGE_BUCKETS), answers[generalist].correct(labels),
                         answers["specialists"].correct(labels)))
    rng = np.random.default_rng(0)
    means = []
    for _ in range(samples):
        index = rng.integers(0, len(labels), len(labels))
        slopes = [_examples_slope(bucket[index], before[index], after[index]) for bucket, before, after in examples]
        if None not in slopes:
            means.append(np.mean(slopes))
    if len(means) < samples / 2:
        return None
    low, high = np.quantile(means, [0.5 - LEVEL / 2, 0.5 + LEVEL / 2])
    return interval(low, high)


def _examples_slope(bucket: np.ndarray, before: np.ndarray, after: np.ndarray) -> float | None:
    """The Table 4 slope from per-example answers, as gains.gain_by_coverage builds its rows."""
    counts = np.bincount(bucket, minlength=COVERAGE_BUCKETS + 1)
    right_before = np.bincount(bucket, weights=before, minlength=COVERAGE_BUCKETS + 1)
    right_after = np.bincount(bucket, weights=after, minlength=COVERAGE_BUCKETS + 1)
    rows = right_before > 0  # a row the generalist never gets right has no relative change
    return _weighted_slope(np.flatnonzero(rows), (right_after[rows] - right_before[rows]) / right_before[rows],
                          counts[rows])


def _coverage_count(covering: str) -> int:
    return int(covering.rstrip("+"))


def _difference(runs: list[ComparedRun], model: str, versus: str, metric: DifferenceMetric) -> Difference:
    return _paired([(run, run) for run in runs], model, versus, metric, model, versus)


def _paired(pairs: list[tuple[ComparedRun, ComparedRun]], model: str, versus: str, metric: DifferenceMetric,
            shown_model: str, shown_versus: str) -> Difference:
    """`model` in the first run of each pair minus `versus` in the second (the same run, or the same seed in
    another setting), with the interval over the pairs and, when every run kept its per-example answers on the same
    test set, the paired bootstrap over its examples."""
    per_pair = [_value(a.metrics, model, metric) - _value(b.metrics, versus, metric) for a, b in pairs]
    test_interval = None
    labels = pairs[0][0].outcomes.labels if pairs[0][0].outcomes is not None else None
    if all(run.outcomes is not None and np.array_equal(run.outcomes.labels, labels) for pair in pairs for run in pair):
        test_interval = paired_bootstrap(np.mean([_scores(a.outcomes, _models(a.metrics, model), metric) -
                                                  _scores(b.outcomes, _models(b.metrics, versus), metric)
                                                  for a, b in pairs], axis=0))
    return Difference(shown_model, shown_versus, metric, float(np.mean(per_pair)), len(pairs),
                      seed_interval(per_pair), test_interval)


def _models(metrics: RunMetrics, name: str) -> list[str]:
    """The models whose mean stands for `name`: the ensemble's members for MEMBER_MEAN, else the model itself."""
    return list(metrics.teacher.members) if name == MEMBER_MEAN else [name]


def _value(metrics: RunMetrics, name: str, metric: DifferenceMetric) -> float:
    return float(np.mean([getattr(metrics.models[model], metric) for model in _models(metrics, name)]))


def _scores(outcomes: TestOutcomes, models: list[str], metric: DifferenceMetric) -> np.ndarray:
    """Per test example, averaged over `models`: 1/0 for right/wrong (accuracy) or the negative log-likelihood of
    the true class (nll)."""
    scores = [outcomes.models[name].correct(outcomes.labels) if metric == "accuracy"
              else -outcomes.models[name].log_prob_true.astype(np.float64) for name in models]
    return np.mean(scores, axis=0)
