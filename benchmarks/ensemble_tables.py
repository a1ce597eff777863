"""Collect the ensemble runs into benchmarks/results/ensembles.{json,md} (docs/method.md section 3).

    distillery run configs/mnist_ensemble.yaml   --out runs/mnist_ensemble   --data-root ../shared/datasets
    distillery run configs/fashion_ensemble.yaml --out runs/fashion_ensemble --data-root ../shared/datasets
    python benchmarks/ensemble_tables.py [--runs runs] [--out benchmarks/results]

The gain kept by a model is (its accuracy - the members' mean accuracy) / (ensemble accuracy - the members' mean
accuracy): the paper's "86 % of the improvement" (speech, 10 members). The hard-label model of the same
architecture is shown the same way, as the reference a student has to beat. A run not in --runs keeps its
committed entry.
"""

from __future__ import annotations

from statistics import mean

from distill.provenance import short_sha
from distillery.benchmark import TableEntry, shown_precision, table_script
from distillery.metrics import RunMetrics

RUNS = {"mnist": "mnist_ensemble", "fashion_mnist": "fashion_ensemble"}
COLUMNS = ("accuracy", "errors", "nll", "ece", "agreement", "kl_to_teacher")


def summarise(metrics: RunMetrics) -> dict:
    models = metrics.models
    members = {name: models[name] for name in metrics.teacher.members}
    single = mean(m.accuracy for m in members.values())
    gain = models["ensemble"].accuracy - single
    kept = lambda name: (models[name].accuracy - single) / gain if gain > 0 else None  # noqa: E731
    return {
        "members": len(members), "member_mean_accuracy": single,
        "member_accuracy_range": [min(m.accuracy for m in members.values()), max(m.accuracy for m in members.values())],
        "ensemble_gain": gain, "student_gain_kept": kept("student"), "baseline_gain_kept": kept("baseline"),
        "models": {name: {key: getattr(m, key) for key in COLUMNS if getattr(m, key) is not None}
                   for name, m in models.items()},
        "wall_seconds": metrics.run.seconds,
        "member_train_seconds": sum(m.train_seconds for m in members.values()),
        "student_train_seconds": models["student"].train_seconds,
        "git_sha": metrics.run.git_sha, "machine": metrics.run.machine,
        "precision": {name: m.precision for name, m in models.items()},
    }


def markdown(results: dict) -> str:
    lines = ["| data set | members (mean accuracy) | ensemble | student (distilled) | same model, hard labels "
             "| gain kept: student | gain kept: hard labels | wall time | precision |",
             "|---|---|---|---|---|---|---|---|---|"]
    share = lambda kept: f"{100 * kept:.0f} %" if kept is not None else "no gain"  # noqa: E731
    for name, r in results.items():
        m = r["models"]
        lines.append(f"| {name} | {100 * r['member_mean_accuracy']:.2f} % | {100 * m['ensemble']['accuracy']:.2f} % "
                     f"| {100 * m['student']['accuracy']:.2f} % | {100 * m['baseline']['accuracy']:.2f} % "
                     f"| {share(r['student_gain_kept'])} | {share(r['baseline_gain_kept'])} "
                     f"| {r['wall_seconds'] / 60:.1f} min | {shown_precision(r.get('precision'))} |")
    for name, r in results.items():
        lines += ["", f"{name} (`distillery run configs/{RUNS[name]}.yaml`, git {short_sha(r['git_sha'])}):", "",
                  "| model | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        for model, values in r["models"].items():
            cells = [f"{values[key]:.4f}" if isinstance(values.get(key), float) else str(values.get(key, ""))
                     for key in COLUMNS]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    table_script(__doc__.split("\n\n")[0], "ensembles", lambda runs: [TableEntry(key, runs / run, summarise)
                                                                 for key, run in RUNS.items()], markdown)


if __name__ == "__main__":
    main()
