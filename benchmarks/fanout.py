"""N small members trained through the Ray fan-out against the same N one after another in one process.

Both sides run the same jobs (same seeds, same data) in one invocation on this machine; the ratio is
ray wall / sequential wall, with the fixed cost of starting (and stopping) a local Ray measured apart.
The sequential side uses torch's default threads (all cores), the Ray side one thread per 1-CPU worker.

    python benchmarks/fanout.py --members 4 [--out benchmarks/results]
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from distill.config import ClusterConfig, ModelSpec, TrainConfig
from distill.data import load_dataset
from distillery.benchmark import parser, write_result
from ensembles.fanout import train_jobs
from ensembles.jobs import JobData, TrainJob
from ensembles.ray_connection import ray_session

DATA = {"classes": 20, "groups": 4, "dim": 64, "train_per_class": 1000, "test_per_class": 50}


def make_jobs(members: int, epochs: int) -> list[tuple[TrainJob, JobData]]:
    data = load_dataset("synthetic", "unused", DATA)
    shared = JobData(data.x_train, data.y_train)
    return [(TrainJob(f"member_{i}", ModelSpec("mlp", {"hidden": [512, 512]}),
                      TrainConfig(epochs=epochs, batch_size=64, lr=0.05), seed=i, num_classes=data.num_classes,
                      input_shape=data.input_shape), shared) for i in range(members)]


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--members", type=int, default=4)
    arguments.add_argument("--epochs", type=int, default=5)
    args = arguments.parse_args()
    jobs = make_jobs(args.members, args.epochs)
    scratch = Path(tempfile.mkdtemp(prefix="fanout-"))
    try:
        sequential = timed(train_jobs, jobs, scratch / "sequential", ClusterConfig(executor="local"))
        started = time.perf_counter()
        with ray_session(None):
            ray_start = time.perf_counter() - started
            fanned = timed(train_jobs, jobs, scratch / "ray", ClusterConfig(executor="ray", num_cpus=1))
            stopping = time.perf_counter()
        ray_stop = time.perf_counter() - stopping
    finally:
        shutil.rmtree(scratch)
    result = {
        "members": args.members, "epochs": args.epochs, "data": DATA, "model": "mlp 512-512, batch 64",
        "sequential_seconds": round(sequential, 2), "ray_seconds": round(fanned, 2),
        "ray_over_sequential": round(fanned / sequential, 3),
        "ray_with_start_and_stop_over_sequential": round((fanned + ray_start + ray_stop) / sequential, 3),
        "ray_start_seconds": round(ray_start, 2), "ray_stop_seconds": round(ray_stop, 2),
        "torch_threads_sequential": torch.get_num_threads(),
    }
    write_result(args.out, "fanout", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
