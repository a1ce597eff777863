"""The driver's own cost of a fan-out of many tiny jobs on Ray, with the progress bar on (as on a terminal).

    python benchmarks/driver_overhead.py [--jobs 1000] [--epochs 3] [--out benchmarks/results]

The driver submits --jobs tiny models (a 16-unit MLP, --epochs epochs on 256 synthetic examples) through
`ensembles.fanout.train_jobs` on a fresh local Ray instance with one CPU per job, and a `TrainingBar` refreshed by
the fan-out exactly as `distillery run` does it (its drawing goes to stderr). Measured in one invocation: the
driver process's CPU seconds during the fan-out (`time.process_time`: its Python code and Ray's threads in it;
the raylet and GCS are other processes), and the jobs' total time, the sum over jobs of the seconds their Ray
tasks ran (from each job's log: first event to the finished checkpoint). Ratio: driver CPU / jobs' total time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from distill.config import ClusterConfig, ModelSpec, TrainConfig
from distill.data import load_dataset
from distill.storage import read_json_lines
from distillery.benchmark import parser, write_result
from distillery.progress import Progress
from ensembles.fanout import train_jobs
from ensembles.jobs import JobData, TrainJob, log_path
from ensembles.ray_connection import ray_session

DATA = {"classes": 4, "groups": 2, "dim": 8, "train_per_class": 64, "test_per_class": 8}
GOAL = 0.05


def make_jobs(count: int, epochs: int) -> list[tuple[TrainJob, JobData]]:
    data = load_dataset("synthetic", Path("unused"), DATA)
    shared = JobData(data.x_train, data.y_train, None, (data.x_test, data.y_test))
    return [(TrainJob(f"job_{index:04d}", ModelSpec("mlp", {"hidden": [16]}),
                      TrainConfig(epochs=epochs, batch_size=32, lr=0.05, precision="fp32"), seed=index,
                      num_classes=data.num_classes, input_shape=data.input_shape), shared) for index in range(count)]


def job_seconds(run_dir: Path, name: str) -> float:
    """From the job's first logged event to its checkpoint's checksum file: the time its task spent on it."""
    first = read_json_lines(log_path(run_dir, name))[0]["time"]
    return (run_dir / f"{name}.pt.sha256").stat().st_mtime - first


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--jobs", type=int, default=1000)
    arguments.add_argument("--epochs", type=int, default=3)
    args = arguments.parse_args()
    jobs = make_jobs(args.jobs, args.epochs)
    run_dir = Path(tempfile.mkdtemp(prefix="driver-overhead-"))
    try:
        with ray_session(None):
            with Progress(enabled=True).training(run_dir, [job for job, _ in jobs], "jobs") as bar:
                cpu, wall = time.process_time(), time.perf_counter()
                results = train_jobs(jobs, run_dir, ClusterConfig(executor="ray", num_cpus=1), watch=bar.refresh)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        jobs_total = sum(job_seconds(run_dir, name) for name in results)
    finally:
        shutil.rmtree(run_dir)
    result = {"jobs": args.jobs, "epochs": args.epochs, "data": DATA, "model": "mlp 16, batch 32, fp32",
              "cpus": os.cpu_count(), "driver_cpu_seconds": round(cpu, 2), "fan_out_wall_seconds": round(wall, 2),
              "jobs_total_seconds": round(jobs_total, 2),
              "driver_cpu_ms_per_job": round(1000 * cpu / args.jobs, 2),
              "driver_over_jobs": round(cpu / jobs_total, 4), "goal": GOAL}
    write_result(args.out, "driver_overhead", result)
    print(f"{args.jobs} jobs: driver CPU {cpu:.1f} s ({1000 * cpu / args.jobs:.1f} ms a job), jobs' total "
          f"{jobs_total:.1f} s, wall {wall:.1f} s: driver / jobs = {cpu / jobs_total:.3f} (goal < {GOAL})")


if __name__ == "__main__":
    main()
