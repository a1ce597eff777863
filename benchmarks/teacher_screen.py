"""A short screen of MNIST teacher recipes on this machine: configs/mnist.yaml with a 30-epoch teacher, one
variant after another (the 2 cores fit one training at a time), each teacher's test errors and wall time.

Thirty epochs rank recipes cheaply; they do not predict the 120-epoch result, and choosing on test errors is
model selection on the test set: every variant's number is kept so a reader can see what the choice is worth.

    python benchmarks/teacher_screen.py --runs runs/screen --data-root ../shared/datasets
    python benchmarks/teacher_screen.py --runs runs/screen --collect   # only gather finished runs
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from distillery.benchmark import distillery_command, parser, write_result
from distillery.metrics import read_metrics
from distillery.run_folder import METRICS

# The student is trained for one epoch only because `distillery run` always trains one; it is not screened.
COMMON = ["teacher.train.epochs=30", "student.train.epochs=1", "baseline.enabled=false", "cluster.executor=local"]
VARIANTS = {
    "lr0.1": [],
    "lr0.03": ["teacher.train.lr=0.03"],
    "lr0.3": ["teacher.train.lr=0.3"],
    "nomaxnorm": ["teacher.model.kwargs.max_norm=null"],
    "momentum0.95": ["teacher.train.momentum=0.95"],
    "noinputdropout": ["teacher.model.kwargs.dropout_input=0.0"],
}


def run(name: str, args: argparse.Namespace) -> None:
    command = distillery_command("configs/mnist.yaml", args.runs / name, args.data_root, COMMON + VARIANTS[name])
    with open(args.runs / f"{name}.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)


def collect(runs: Path) -> dict:
    results = {}
    for name, overrides in VARIANTS.items():
        if (runs / name / METRICS).is_file():
            metrics = read_metrics(runs / name / METRICS)
            teacher = metrics.models["teacher"]
            results[name] = {"overrides": COMMON + overrides, "teacher_errors": teacher.errors,
                             "teacher_nll": teacher.nll, "teacher_train_seconds": teacher.train_seconds,
                             "git_sha": metrics.run.git_sha, "machine": metrics.run.machine}
    return results


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--runs", type=Path, required=True, help="folder of the screen's runs")
    arguments.add_argument("--data-root", default="../shared/datasets")
    arguments.add_argument("--collect", action="store_true", help="do not train; gather the runs already in --runs")
    args = arguments.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    if not args.collect:
        for name in VARIANTS:
            if not (args.runs / name / METRICS).is_file():
                run(name, args)
    results = collect(args.runs)
    write_result(args.out, "teacher_screen", {"config": "configs/mnist.yaml", "results": results})
    for name, result in results.items():
        print(f"{name:16s} {result['teacher_errors']:4d} errors  {result['teacher_train_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
