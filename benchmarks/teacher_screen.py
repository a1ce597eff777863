"""A short screen of MNIST teacher recipes on this machine: configs/mnist.yaml with a 30-epoch teacher, one
variant after another (the 2 cores fit one training at a time), each teacher's test errors and wall time.

Thirty epochs rank recipes cheaply; they do not predict the 120-epoch result, and choosing on test errors is
model selection on the test set: every variant's number is kept so a reader can see what the choice is worth.

    .venv/bin/python benchmarks/teacher_screen.py --out runs/screen --data-root ../shared/datasets
    .venv/bin/python benchmarks/teacher_screen.py --out runs/screen --collect   # only gather finished runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from mnist_sweep import cli_command  # this folder is on sys.path when the script runs

RESULTS = Path(__file__).parent / "results" / "teacher_screen.json"
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
    command = cli_command("configs/mnist.yaml", args.out / name, args.data_root, COMMON + VARIANTS[name])
    with open(args.out / f"{name}.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)


def collect(out: Path) -> dict:
    results = {}
    for name, overrides in VARIANTS.items():
        metrics = out / name / "metrics.json"
        if metrics.is_file():
            run_record = json.loads(metrics.read_text())
            teacher = run_record["models"]["teacher"]
            results[name] = {"overrides": COMMON + overrides, "teacher_errors": teacher["errors"],
                             "teacher_nll": teacher["nll"], "teacher_train_seconds": teacher["train_seconds"],
                             "git_sha": run_record["run"]["git_sha"], "machine": run_record["run"]["machine"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-root", default="../shared/datasets")
    parser.add_argument("--collect", action="store_true", help="do not train; gather the runs already in --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.collect:
        for name in VARIANTS:
            if not (args.out / name / "metrics.json").is_file():
                run(name, args)
    results = collect(args.out)
    RESULTS.write_text(json.dumps({"config": "configs/mnist.yaml", "results": results}, indent=1) + "\n")
    for name, result in results.items():
        print(f"{name:16s} {result['teacher_errors']:4d} errors  {result['teacher_train_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
