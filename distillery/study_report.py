"""study.md and its figures: a comparison (distillery.comparison) as tables and metric-against-setting plots."""

from __future__ import annotations

from pathlib import Path

from distill.intervals import Interval, Spread
from distill.plots import pyplot, save_figure
from distill.storage import atomic_write_text
from distillery.comparison import Comparison, CoverageTrend, Difference, SettingComparison, setting_label
from distillery.study import Study
from specialists.training import GENERALIST_STUDENT

STUDY_REPORT = "study.md"
FIGURES = "figures"
PLOTTED = [("accuracy", "test accuracy"), ("nll", "test NLL (nats)"), ("ece", "ECE")]


def write_study_report(study_dir: Path, study: Study) -> Path:
    comparison = study.comparison
    figures = plot_comparison(comparison, Path(study_dir) / FIGURES)
    parts = [f"# Study: {len(study.runs)} runs", ""]
    if study.definition is not None:
        definition = study.definition
        grid = ", ".join(f"`{key}={values}`" for key, values in definition.grid.items()) or "none"
        parts += [f"Config `{definition.config or 'the demo'}`, in every run "
                  f"`{' '.join(definition.overrides) or 'as it is'}`; grid {grid}; seeds {definition.seeds}.", ""]
    failed = [run for run in study.runs if run.status != "finished"]
    if failed:
        parts += ["Runs not in the comparison:", ""] + [f"- `{run.folder}`: {run.status}" +
                                                        (f": {run.error}" if run.error else "") for run in failed]
        parts.append("")
    parts += ["Each model's numbers are mean ± sample standard deviation over the seeds of a setting (n runs). "
              "Each difference is a model minus the one it is compared with, paired within each run, with two 95 % "
              "intervals: **over seeds** (Student's t over the per-seed differences: would another training run "
              "agree?) and **over test examples** (a paired bootstrap of the test set, the difference averaged over "
              "seeds: would another test set of the same size agree?). An interval that excludes 0 is marked.", ""]
    for setting in comparison.settings:
        parts += _setting_section(setting)
    if comparison.between_settings:
        parts += [f"## Between settings: each against {setting_label(comparison.settings[0].settings)}", "",
                  "The same model in two settings, paired by seed (a model that is the same in every setting is left "
                  "out).", "", "| difference | metric | mean | 95 % over seeds | 95 % over test examples |",
                  "|---|---|---|---|---|", *map(_difference_row, comparison.between_settings), ""]
    parts += [f"![{label}]({FIGURES}/{path.name})" for path, label in figures]
    path = Path(study_dir) / STUDY_REPORT
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def _setting_section(setting: SettingComparison) -> list[str]:
    lines = [f"## {setting_label(setting.settings)}", "", f"Seeds {setting.seeds}.", "",
             "| model | n | accuracy (%) | errors | NLL | ECE | agreement (%) |", "|---|---|---|---|---|---|---|"]
    for name, model in setting.models.items():
        lines.append(f"| {name} | {model.accuracy.n} | {_spread(model.accuracy, 100, 2)} | "
                     f"{_spread(model.errors, 1, 1)} | {_spread(model.nll, 1, 4)} | {_spread(model.ece, 1, 4)} | "
                     f"{_spread(model.agreement, 100, 2) if model.agreement else ''} |")
    lines += ["", "| difference | metric | mean | 95 % over seeds | 95 % over test examples |", "|---|---|---|---|---|"]
    lines += [_difference_row(difference) for difference in setting.differences]
    if setting.gain_kept is not None:
        kept = setting.gain_kept
        lines += ["", f"Share of the accuracy gain of {kept.combination} over {kept.base} that the student keeps, "
                      f"(student − {kept.base}) / ({kept.combination} − {kept.base}) per run: "
                      f"{_spread(kept.share, 100, 0)} % (n = {kept.share.n}; a ratio of two noisy differences: read "
                      "it with the intervals above)."]
        if kept.owed is not None:
            lines += ["", f"Of that gain, the share the student owes to the {kept.combination}, (student − "
                          f"{GENERALIST_STUDENT}) / ({kept.combination} − {kept.base}) per run, against a student of "
                          f"the same seed distilled from the {kept.base} alone: {_spread(kept.owed, 100, 0)} % (n = "
                          f"{kept.owed.n})."]
    if setting.coverage is not None:
        lines += ["", *_coverage_section(setting.coverage)]
    return lines + [""]


def _coverage_section(trend: CoverageTrend) -> list[str]:
    lines = ["Relative top-1 change of generalist + specialists by the number of specialists covering the true class "
             "(the paper's Table 4), mean ± sd over the seeds that have the row:", "",
             "| specialists covering | seeds | test examples per seed | generalist accuracy (%) | relative change (%) "
             "|", "|---|---|---|---|---|"]
    lines += [f"| {row.covering} | {row.relative_change.n} | {_spread(row.examples, 1, 0)} | "
              f"{_spread(row.generalist_accuracy, 100, 2)} | {_spread(row.relative_change, 100, 1)} |"
              for row in trend.rows]
    if trend.slope is not None:
        lines += ["", "Does the gain grow with coverage? Per seed, the slope of the relative change against the number "
                      "of covering specialists (rows 1 to 10+, weighted by their test examples): "
                      f"{_spread(trend.slope, 100, 2)} % per specialist (n = {trend.slope.n}), 95 % over seeds "
                      f"{_interval(trend.slope_over_seeds, 100)}, over test examples "
                      f"{_interval(trend.slope_over_test_examples, 100)}."]
    return lines


def _difference_row(difference: Difference) -> str:
    scale, unit = (100, "accuracy (points)") if difference.metric == "accuracy" else (1, "NLL (nats)")
    return (f"| {difference.model} − {difference.versus} | {unit} | {difference.mean * scale:+.3f} | "
            f"{_interval(difference.over_seeds, scale)} | {_interval(difference.over_test_examples, scale)} |")


def _spread(value: Spread, scale: float, digits: int) -> str:
    mean = f"{value.mean * scale:.{digits}f}"
    return mean if value.sd is None else f"{mean} ± {value.sd * scale:.{digits}f}"


def _interval(interval: Interval | None, scale: float) -> str:
    if interval is None:
        return "n/a"
    text = f"[{interval.low * scale:+.3f}, {interval.high * scale:+.3f}]"
    return f"**{text} excludes 0**" if interval.excludes_zero else text


def plot_comparison(comparison: Comparison, folder: Path) -> list[tuple[Path, str]]:
    """One figure per metric: each model's mean ± sd against the setting (numeric axis when one numeric key
    varies, else one tick per setting)."""
    plt = pyplot()
    settings = comparison.settings
    keys = list(settings[0].settings)
    values = [s.settings[keys[0]] for s in settings] if len(keys) == 1 else []
    numeric = bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = values if numeric else list(range(len(settings)))
    models = [name for name in settings[0].models if all(name in s.models for s in settings)]
    written = []
    for metric, label in PLOTTED:
        figure, axes = plt.subplots(figsize=(6, 4))
        for name in models:
            spreads = [getattr(s.models[name], metric) for s in settings]
            axes.errorbar(x, [s.mean for s in spreads], yerr=[s.sd or 0.0 for s in spreads], marker="o",
                          capsize=3, label=name)
        axes.set_xlabel(keys[0] if numeric else "setting")
        if not numeric:
            axes.set_xticks(x, [setting_label(s.settings) for s in settings], rotation=20, ha="right", fontsize=7)
        axes.set_ylabel(f"{label}, mean ± sd over seeds")
        axes.legend(fontsize=7)
        written.append((save_figure(figure, folder / f"study_{metric}.png"), f"{label} against the setting"))
    return written
