"""report.md: the run's models side by side, with what produced them."""

from __future__ import annotations

from pathlib import Path

from distill.config import RunConfig
from distill.storage import atomic_write_text

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


def _teacher_line(teacher: dict) -> str:
    specs = sorted({f"`{m['model']['name']}` {m['model']['kwargs']}" for m in teacher["members"].values()})
    if "combine" not in teacher:
        return f"Teacher {specs[0]}" + (f" from {teacher['checkpoint']}" if teacher["checkpoint"] else "")
    return (f"Teacher: an ensemble of {len(teacher['members'])} members ({teacher['combine']['method']} mean of "
            f"their probabilities) of {', '.join(specs)}")


def write_report(out_dir: Path, config: RunConfig, metrics: dict) -> Path:
    run = metrics["run"]
    bias = metrics.get("bias", {})
    teacher = _teacher_line(metrics["teacher"])
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
        parts += [f"Fixed bias shift from the config: {bias['fixed']}.", ""]
    parts += [f"Wall time {run['seconds']:.1f} s on {run['machine']}; git {run['git_sha'] or 'unknown'}; "
              f"seeds {run['seeds']}.", "", "Resolved config: `config.yaml`; all numbers: `metrics.json`.", ""]
    path = Path(out_dir) / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path
