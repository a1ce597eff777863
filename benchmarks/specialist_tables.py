"""Collect the specialist runs into benchmarks/results/specialists.{json,md} (docs/method.md section 4).

    distillery run configs/synthetic_specialists.yaml --out runs/synthetic_specialists
    distillery run configs/fashion_specialists.yaml   --out runs/fashion_specialists   --data-root ../shared/datasets
    distillery run configs/omniglot_specialists.yaml  --out runs/omniglot_specialists  --data-root ../shared/datasets
    python benchmarks/specialist_tables.py [--runs runs] [--out benchmarks/results]

Relative gain is (combined - generalist) / generalist top-1, the paper's "+4.4 %" (JFT, 25.0 % -> 26.1 %). The
student's share of the gain is (student - generalist) / (combined - generalist): how much of what the
specialists added one distilled model keeps. A run not in --runs keeps its committed entry.
"""

from __future__ import annotations


from distill.provenance import short_sha
from distill.records import to_plain
from distillery.benchmark import TableEntry, shown_precision, table_script
from distillery.metrics import RunMetrics

RUNS = {"synthetic": "synthetic_specialists", "fashion_mnist": "fashion_specialists",
        "omniglot": "omniglot_specialists"}
COLUMNS = ("accuracy", "errors", "nll", "ece", "agreement", "kl_to_teacher")


def summarise(metrics: RunMetrics) -> dict:
    models, section = metrics.models, metrics.specialists
    clustering = section.clustering
    generalist, combined = models["generalist"].accuracy, models["specialists"].accuracy
    gain = combined - generalist
    share = lambda name: (models[name].accuracy - generalist) / gain if gain > 0 else None  # noqa: E731
    return {
        "specialists": len(clustering.subsets), "subset_sizes": clustering.sizes, "ari": clustering.ari,
        "uncovered_classes": clustering.uncovered_classes, "top1": to_plain(section.top1),
        "conditional_top1": to_plain(section.conditional_top1),
        "gain_by_coverage": [to_plain(row) for row in section.gain_by_coverage],
        "student_share_of_gain": share("student"), "baseline_share_of_gain": share("baseline"),
        "subsets": clustering.subsets if len(clustering.subsets) <= 5 else None,
        "models": {name: {key: getattr(m, key) for key in COLUMNS if getattr(m, key) is not None}
                   for name, m in models.items()},
        "wall_seconds": metrics.run.seconds, "clustering_seconds": clustering.seconds,
        "specialist_train_seconds": sum(section.train_seconds.values()),
        "git_sha": metrics.run.git_sha, "machine": metrics.run.machine,
        "precision": {name: m.precision for name, m in models.items()},
    }


def _percent(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:+.{digits}f} %"


def markdown(results: dict) -> str:
    lines = ["| data set | specialists | ARI | generalist | + specialists | relative gain | conditional top-1 "
             "| student | student's share of the gain | hard-label baseline | wall time | precision |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m, conditional = r["models"], r["conditional_top1"]
        ari = "n/a" if r["ari"] is None else f"{r['ari']:.3f}"
        share = "no gain" if r["student_share_of_gain"] is None else f"{100 * r['student_share_of_gain']:.0f} %"
        lines.append(f"| {name} | {r['specialists']} | {ari} | {100 * m['generalist']['accuracy']:.2f} % "
                     f"| {100 * m['specialists']['accuracy']:.2f} % | {_percent(r['top1']['relative_gain'])} "
                     f"| {100 * conditional['generalist']:.2f} -> {100 * conditional['combined']:.2f} % "
                     f"| {100 * m['student']['accuracy']:.2f} % | {share} | {100 * m['baseline']['accuracy']:.2f} % "
                     f"| {r['wall_seconds'] / 60:.1f} min | {shown_precision(r.get('precision'))} |")
    for name, r in results.items():
        commit = short_sha(r["git_sha"])
        lines += ["", f"{name} (`distillery run configs/{RUNS[name]}.yaml`, git {commit}): relative top-1 "
                  "change by the number of specialists covering the true class", "",
                  "| covering | examples | generalist | combined | relative change |", "|---|---|---|---|---|"]
        lines += [f"| {row['covering']} | {row['examples']} | {100 * row['generalist_accuracy']:.2f} % "
                  f"| {100 * row['combined_accuracy']:.2f} % | {_percent(row['relative_change'])} |"
                  for row in r["gain_by_coverage"]]
        if r["subsets"]:
            lines += ["", f"Subsets found: {r['subsets']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    table_script(__doc__.split("\n\n")[0], "specialists", lambda runs: [TableEntry(key, runs / run, summarise)
                                                                 for key, run in RUNS.items()], markdown)


if __name__ == "__main__":
    main()
