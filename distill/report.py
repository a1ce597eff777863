"""report.md: the run's models side by side, with what produced them."""

from __future__ import annotations

from pathlib import Path

from distill.config import RunConfig
from distill.figures import plot_gain_by_coverage, plot_reliability, plot_training_curves
from distill.storage import atomic_write_text

FIGURES = "figures"

COLUMNS = [("accuracy", "{:.4f}"), ("errors", "{}"), ("nll", "{:.4f}"), ("ece", "{:.4f}"), ("agreement", "{:.4f}"),
           ("kl_to_teacher", "{:.4f}")]


def models_table(models: dict[str, dict]) -> str:
    header = "| model | " + " | ".join(name for name, _ in COLUMNS) + " | train s |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, metrics in models.items():
        cells = [fmt.format(metrics[key]) if key in metrics else "" for key, fmt in COLUMNS]
        seconds = f"{metrics['train_seconds']:.1f}" if "train_seconds" in metrics else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines)


def _teacher_line(metrics: dict) -> str:
    teacher = metrics["teacher"]
    specs = sorted({f"`{m['model']['name']}` {m['model']['kwargs']}" for m in teacher["members"].values()})
    if "specialists" in metrics:
        return f"Teacher: a generalist {specs[0]} with {len(teacher['specialists'])} specialists combined by eq. 5"
    if "combine" not in teacher:
        return f"Teacher {specs[0]}" + (f" from {teacher['checkpoint']}" if teacher["checkpoint"] else "")
    return (f"Teacher: an ensemble of {len(teacher['members'])} members ({teacher['combine']['method']} mean of "
            f"their probabilities) of {', '.join(specs)}")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f} %"


def specialists_section(section: dict) -> list[str]:
    """The specialists' subsets, clustering quality, overall and conditional gains, and Table 4 with figures."""
    sizes = section["sizes"]
    ari = "n/a (the data set has no known groups)" if section["ari"] is None else f"{section['ari']:.3f}"
    top1, conditional = section["top1"], section["conditional_top1"]
    lines = [
        "## Specialists", "",
        f"{len(sizes)} subsets from the {section['source']} of the generalist's predictions: sizes {min(sizes)} to "
        f"{max(sizes)} (mean {sum(sizes) / len(sizes):.1f}), {section['uncovered_classes']} classes in no subset; "
        f"adjusted Rand index against the known groups: {ari}. Active: specialists holding one of the generalist's "
        f"top {section['top_n']} classes; eq. 5 solved by {section['solver']}.", "",
        "| top-1 | generalist | generalist + specialists | relative change |", "|---|---|---|---|",
        f"| overall | {top1['generalist']:.4f} | {top1['combined']:.4f} | {_percent(top1['relative_gain'])} |",
        f"| conditional (special classes, predictions restricted to the subset) | "
        f"{conditional['generalist'] or 0:.4f} | {conditional['combined'] or 0:.4f} | "
        f"{_percent(conditional['relative_gain'])} |", "",
        "Relative top-1 change by the number of specialists covering the true class (the paper's Table 4):", "",
        "| specialists covering | test examples | generalist | combined | relative change |", "|---|---|---|---|---|",
    ]
    lines += [f"| {row['covering']} | {row['examples']} | {row['generalist_accuracy']:.4f} | "
              f"{row['combined_accuracy']:.4f} | {_percent(row['relative_change'])} |"
              for row in section["gain_by_coverage"]]
    lines += ["", "![affinity matrix reordered by cluster](specialists/affinity.png)",
              f"![relative gain by coverage]({FIGURES}/gain_by_coverage.png)", ""]
    return lines


def _teacher_model(models: dict[str, dict]) -> str:
    """The model the student learns from: the ensemble, the specialists' combination, or the lone teacher."""
    return next(name for name in ("ensemble", "specialists", "teacher", "generalist") if name in models)


def draw_figures(out_dir: Path, metrics: dict) -> tuple[list[str], list[Path]]:
    """Draw every figure metrics.json holds the data for; returns the report's lines that show them, and their
    files."""
    folder = Path(out_dir) / FIGURES
    models = metrics["models"]
    compared = [name for name in (_teacher_model(models), "student", "baseline")
                if "reliability" in models.get(name, {})]
    files = [plot_training_curves(metrics["history"], folder / "training_curves.png")]
    lines = ["## Figures", "", f"![training curves]({FIGURES}/training_curves.png)", ""]
    if compared:  # runs written before metrics.json kept the reliability bins have none to draw
        files.append(plot_reliability({name: models[name] for name in compared}, folder / "reliability.png"))
        lines += [f"![reliability diagrams of {', '.join(compared)}]({FIGURES}/reliability.png)", ""]
    if "specialists" in metrics:
        files.append(plot_gain_by_coverage(metrics["specialists"]["gain_by_coverage"],
                                           folder / "gain_by_coverage.png"))
    return lines, files


def write_report(out_dir: Path, config: RunConfig, metrics: dict) -> list[Path]:
    """Write report.md and the figures it shows into `out_dir`; returns their paths, report.md first."""
    run = metrics["run"]
    bias = metrics.get("bias", {})
    teacher = _teacher_line(metrics)
    parts = [
        f"# Distillery run: {config.data.name}",
        "",
        f"{teacher}, student `{config.student.model.name}` "
        f"{config.student.model.kwargs}, T = {config.student.loss.temperature}, w_soft = {config.student.loss.w_soft}, "
        f"w_hard = {config.student.loss.w_hard}. Transfer set: {metrics['transfer']['size']} examples, classes "
        f"absent: {metrics['transfer']['absent_classes'] or 'none'}.",
        "",
        models_table(metrics["models"]),
        "",
    ]
    absent = metrics["transfer"]["absent_classes"]
    if absent:
        parts += ["Test errors on the classes absent from the transfer set:", ""]
        parts += [f"- {name}: {sum(model['per_class_errors'][c] for c in absent)}"
                  for name, model in metrics["models"].items() if name.startswith("student")]
        parts.append("")
    if "auto" in bias:
        parts += [f"Automatic bias shift on the absent classes: {bias['auto']['shift_on_absent_classes']:+.3f} "
                  f"({bias['auto']['method']}).", ""]
    if "test_tuned" in bias:
        parts += [f"Shift tuned on the test labels, as the paper did (a reference, not a method): "
                  f"{bias['test_tuned']['shift_on_absent_classes']:+.2f} on the absent classes.", ""]
    if "fixed" in bias:
        parts += [f"Fixed bias shift from the config: {config.bias.fixed}.", ""]  # metrics.json has string keys
    figure_lines, figures = draw_figures(out_dir, metrics)
    parts += figure_lines
    if "specialists" in metrics:
        parts += specialists_section(metrics["specialists"])
    parts += [f"Wall time {run['seconds']:.1f} s on {run['machine']}; git {run['git_sha'] or 'unknown'}; "
              f"seeds {run['seeds']}.", "", "Resolved config: `config.yaml`; all numbers: `metrics.json`.", ""]
    path = Path(out_dir) / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return [path, *figures]
