"""report.md: the run's models side by side, with what produced them, and its figures; made from config.yaml and
metrics.json alone, so `distillery report DIR` redraws it."""

from __future__ import annotations

from pathlib import Path

from distill.config import RunConfig
from distill.measures import ModelMetrics
from distill.plots import plot_reliability, plot_training_curves
from distill.storage import atomic_write_text, sha256_file
from distillery.manifests import StageManifest
from distillery.metrics import RunMetrics
from distillery.run_folder import METRICS, REPORT, computed_settings
from specialists.clustering import affinity_path
from specialists.figures import plot_gain_by_coverage
from specialists.gains import SpecialistsMetrics

FIGURES = "figures"

COLUMNS = [("accuracy", "{:.4f}"), ("errors", "{}"), ("nll", "{:.4f}"), ("ece", "{:.4f}"), ("agreement", "{:.4f}"),
           ("kl_to_teacher", "{:.4f}")]


def report_manifest(out_dir: Path, config: RunConfig) -> StageManifest:
    """report.md and its figures are made from metrics.json and the config (also by `distillery report DIR`)."""
    return StageManifest(out_dir, "report", {"metrics": sha256_file(Path(out_dir) / METRICS),
                                             "config": computed_settings(config)})


def write_report(out_dir: Path, config: RunConfig, metrics: RunMetrics) -> list[Path]:
    """Write report.md and the figures it shows into `out_dir`; returns their paths, report.md first."""
    run, bias, transfer = metrics.run, metrics.bias, metrics.transfer
    loss = config.student.loss
    parts = [
        f"# Distillery run: {config.data.name}",
        "",
        f"{_teacher_line(metrics)}, student `{config.student.model.name}` {config.student.model.kwargs}, "
        f"T = {loss.temperature}, w_soft = {loss.w_soft}, w_hard = {loss.w_hard}. Transfer set: {transfer.size} "
        f"examples, classes absent: {transfer.absent_classes or 'none'}.",
        "",
        models_table(metrics.models),
        "",
    ]
    if transfer.absent_classes:
        parts += ["Test errors on the classes absent from the transfer set:", ""]
        parts += [f"- {name}: {sum(metrics.models[name].per_class_errors[c] for c in transfer.absent_classes)}"
                  for name in metrics.students()]
        parts.append("")
    if bias.auto is not None:
        parts += [f"Automatic bias shift on the absent classes: {bias.auto.shift_on_absent_classes:+.3f} "
                  f"({bias.auto.method}).", ""]
    if bias.test_tuned is not None:
        parts += [f"Shift tuned on the test labels, as the paper did (a reference, not a method): "
                  f"{bias.test_tuned.shift_on_absent_classes:+.2f} on the absent classes.", ""]
    if bias.fixed is not None:
        parts += [f"Fixed bias shift from the config: {bias.fixed}.", ""]
    figure_lines, figures = _draw_figures(out_dir, metrics)
    parts += figure_lines
    if metrics.specialists is not None:
        parts += _specialists_section(metrics.specialists, Path(out_dir))
    parts += [f"Wall time {run.seconds:.1f} s on {run.machine}; git {run.git_sha or 'unknown'}; seeds {run.seeds}.",
              "", "Resolved config: `config.yaml`; all numbers: `metrics.json`.", ""]
    path = Path(out_dir) / REPORT
    atomic_write_text(path, "\n".join(parts))
    return [path, *figures]


def models_table(models: dict[str, ModelMetrics]) -> str:
    header = "| model | " + " | ".join(name for name, _ in COLUMNS) + " | train s | precision |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    for name, metrics in models.items():
        values = [getattr(metrics, key) for key, _ in COLUMNS]
        cells = [fmt.format(value) if value is not None else "" for value, (_, fmt) in zip(values, COLUMNS)]
        seconds = f"{metrics.train_seconds:.1f}" if metrics.train_seconds is not None else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds} | {metrics.precision or ''} |")
    return "\n".join(lines)


def _teacher_line(metrics: RunMetrics) -> str:
    teacher = metrics.teacher
    specs = sorted({f"`{m.model.name}` {m.model.kwargs}" for m in teacher.members.values()})
    if teacher.specialists is not None:
        return f"Teacher: a generalist {specs[0]} with {len(teacher.specialists)} specialists combined by eq. 5"
    if teacher.combine is None:
        return f"Teacher {specs[0]}" + (f" from {teacher.checkpoint}" if teacher.checkpoint else "")
    return (f"Teacher: an ensemble of {len(teacher.members)} members ({teacher.combine.method} mean of "
            f"their probabilities) of {', '.join(specs)}")


def _draw_figures(out_dir: Path, metrics: RunMetrics) -> tuple[list[str], list[Path]]:
    """Draw every figure metrics.json holds the data for; returns the report's lines that show them, and their
    files."""
    folder = Path(out_dir) / FIGURES
    compared = [name for name in (metrics.teacher.reference, "student", "baseline") if name in metrics.models]
    files = [plot_training_curves(metrics.history, folder / "training_curves.png", metrics.curve_groups()),
             plot_reliability({name: metrics.models[name] for name in compared}, folder / "reliability.png")]
    lines = ["## Figures", "", f"![training curves]({FIGURES}/training_curves.png)", "",
             f"![reliability diagrams of {', '.join(compared)}]({FIGURES}/reliability.png)", ""]
    if metrics.specialists is not None:
        files.append(plot_gain_by_coverage(metrics.specialists.gain_by_coverage, folder / "gain_by_coverage.png"))
    return lines, files


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f} %"


def _specialists_section(section: SpecialistsMetrics, out_dir: Path) -> list[str]:
    """The specialists' subsets, clustering quality, overall and conditional gains, and Table 4 with figures."""
    clustering, top1, conditional = section.clustering, section.top1, section.conditional_top1
    sizes = clustering.sizes
    ari = "n/a (the data set has no known groups)" if clustering.ari is None else f"{clustering.ari:.3f}"
    lines = [
        "## Specialists", "",
        f"{len(sizes)} subsets from the {clustering.source} of the generalist's predictions: sizes {min(sizes)} to "
        f"{max(sizes)} (mean {sum(sizes) / len(sizes):.1f}), {clustering.uncovered_classes} classes in no subset; "
        f"adjusted Rand index against the known groups: {ari}. Active: specialists holding one of the generalist's "
        f"top {section.top_n} classes; eq. 5 solved by {section.solver}.", "",
        "| top-1 | generalist | generalist + specialists | relative change |", "|---|---|---|---|",
        f"| overall | {top1.generalist:.4f} | {top1.combined:.4f} | {_percent(top1.relative_gain)} |",
        f"| conditional (special classes, predictions restricted to the subset) | "
        f"{conditional.generalist or 0:.4f} | {conditional.combined or 0:.4f} | "
        f"{_percent(conditional.relative_gain)} |",
    ]
    if section.compute_matched is not None:
        matched = section.compute_matched
        lines.append(f"| overall, against the generalist trained {matched.epochs} epochs more (the specialists' "
                     f"{matched.example_epochs:,} example-epochs) | {matched.top1.generalist:.4f} | "
                     f"{matched.top1.combined:.4f} | {_percent(matched.top1.relative_gain)} |")
    lines += [
        "", "Relative top-1 change by the number of specialists covering the true class (the paper's Table 4):", "",
        "| specialists covering | test examples | generalist | combined | relative change |", "|---|---|---|---|---|",
    ]
    lines += [f"| {row.covering} | {row.examples} | {row.generalist_accuracy:.4f} | {row.combined_accuracy:.4f} | "
              f"{_percent(row.relative_change)} |" for row in section.gain_by_coverage]
    affinity = affinity_path(out_dir).relative_to(out_dir)
    lines += ["", f"![affinity matrix reordered by cluster]({affinity})",
              f"![relative gain by coverage]({FIGURES}/gain_by_coverage.png)", ""]
    return lines
