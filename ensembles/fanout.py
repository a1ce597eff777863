"""Train K model specs (ensemble members, specialists) in parallel, and compute their outputs in shards.

Why Ray tasks and not Ray Tune: Tune is Ray's answer for many independent models when they are a *search*
(schedulers, early stopping, sampled configs). Here the list of models is fixed, and what matters is that a model
whose worker or node dies resumes from its last epoch, and that a rerun of the driver reuses finished models.
Tasks give the first directly: `max_retries` re-runs a task whose worker or node died, while
`retry_exceptions=False` keeps a bad config or a NaN loss from being retried forever. Each attempt of `run_job`
resumes from the state it left in the run folder, and the same files let `--resume` continue after the driver
died. Tune would add a second copy of that bookkeeping (trial folders, experiment state) to keep consistent with
the run folder, and its per-trial overhead on small machines.

Checkpoints and training states live in the driver's run folder. A worker that sees that folder (one machine,
NFS) uses it directly; one that does not trains in a scratch copy that is sent to the driver's node after every
epoch (ensembles/driver_folder.py), so no shared storage is needed.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

import ray
import torch
from ray.exceptions import RayError, RayTaskError

from distill.checkpoint import checksum_path, load_checkpoint
from distill.config import ClusterConfig
from distill.errors import ConfigError, DistilleryError, TrainingError
from distill.streamed import Inputs
from distill.train import predict_logits
from ensembles import driver_folder
from ensembles.jobs import JobData, JobResult, TrainJob, checkpoint_precision, run_job

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0


# Called with the jobs finished so far after every epoch (local) or poll (Ray): a progress display hooks in here.
Watch = Callable[[dict[str, JobResult]], None]


def train_jobs(jobs: list[tuple[TrainJob, JobData]], run_dir: str | Path, cluster: ClusterConfig,
               watch: Watch | None = None) -> dict[str, JobResult]:
    """Train every job (or reuse / resume it from the run folder); returns results by job name, in job order.

    The "local" executor runs them one after another in this process; "ray" runs them as Ray tasks, each with
    the CPUs and GPUs of `task_resources`. Errors that retrying cannot fix stop the run with the job's own message.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    watch = watch or (lambda finished: None)
    if cluster.executor == "local":
        finished = _train_here(jobs, run_dir, watch)
    else:
        finished = _train_on_ray(jobs, run_dir, cluster, watch)
    return {job.name: finished[job.name] for job, _ in jobs}


def _train_on_ray(jobs: list[tuple[TrainJob, JobData]], run_dir: Path, cluster: ClusterConfig,
                  watch: Watch) -> dict[str, JobResult]:
    num_cpus, num_gpus = task_resources(cluster, len(jobs))
    task = ray.remote(_train_on_worker).options(num_cpus=num_cpus, num_gpus=num_gpus,
                                                max_retries=cluster.max_retries, retry_exceptions=False)
    # Where workers may not see the run folder (other nodes), it is also reachable through the driver's node.
    always = cluster.run_folder == "driver"
    folder = driver_folder.start(run_dir, always) if always or _other_nodes() else None
    shared = {}  # one object-store copy per distinct data set, however many jobs train on it
    pending = {}
    try:
        for job, data in jobs:
            if id(data) not in shared:
                shared[id(data)] = ray.put(_moved(data, "cpu"))
            pending[task.remote(job, shared[id(data)], str(run_dir), num_cpus, num_gpus, folder)] = job.name
        return _collect(pending, cluster.max_retries, watch)
    finally:
        if folder is not None:
            ray.kill(folder.actor)


def _other_nodes() -> bool:
    """Whether a live node other than the driver's could run tasks."""
    here = ray.get_runtime_context().get_node_id()
    return any(node["Alive"] and node["NodeID"] != here for node in ray.nodes())


def task_resources(cluster: ClusterConfig, tasks: int, nodes: list[dict] | None = None) -> tuple[float, float]:
    """(CPUs, GPUs) each of `tasks` Ray tasks reserves, checked against `nodes` (each live node's resources;
    by default the nodes connected now).

    Unset num_cpus is an equal share of all CPUs, at least 1 and at most what one node has. A request larger than
    every node would leave its tasks waiting forever, so it is refused (nodes an autoscaler would add later do not
    count: start a cluster's workers before the run).
    """
    if nodes is None:
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    node_cpus = max(node.get("CPU", 0.0) for node in nodes)
    node_gpus = max(node.get("GPU", 0.0) for node in nodes)
    num_cpus = cluster.num_cpus
    if num_cpus is None:
        total = sum(node.get("CPU", 0.0) for node in nodes)
        num_cpus = min(node_cpus, max(1.0, math.floor(total / max(1, tasks))))
    for key, wanted, available in (("num_cpus", num_cpus, node_cpus), ("num_gpus", cluster.num_gpus, node_gpus)):
        if wanted > available:
            raise ConfigError(f"cluster.{key}={wanted:g} per model, but the largest Ray node has {available:g}: "
                              f"no model could ever start")
    return num_cpus, cluster.num_gpus


def _train_on_worker(job: TrainJob, data: JobData, run_dir: str, num_cpus: float, num_gpus: float,
                     folder: driver_folder.FolderAccess | None) -> JobResult:
    """Train `job` in the run folder, or, where this node does not see it, in a scratch copy sent to the driver's
    folder after every epoch (ensembles/driver_folder.py)."""
    torch.set_num_threads(max(1, math.floor(num_cpus)))  # one process per job: no OpenMP oversubscription
    if num_gpus > 0:
        data = _moved(data, "cuda")
    if folder is None or folder.seen_from_here(Path(run_dir)):
        return run_job(job, data, run_dir)
    with driver_folder.scratch_copy(folder.actor, job.name) as copy:
        return run_job(job, data, copy.scratch, on_epoch=lambda *_: copy.send())


def _moved(data: JobData, device: str) -> JobData:
    """The same job data on `device`, copied from pinned memory (a faster host-to-GPU copy); soft targets must be
    cached (a teacher module is not shipped). Streamed images stay files: their batches are delivered there."""
    def move(tensor: Inputs) -> Inputs:
        if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu" and device != "cpu":
            return tensor.pin_memory().to(device, non_blocking=True)  # asynchronous: the stream orders its use
        return tensor.to(device)  # to the host: synchronous, the bytes are read at once

    targets = data.targets.to(device) if data.targets is not None else None
    evaluation = tuple(move(t) for t in data.evaluation) if data.evaluation is not None else None
    return JobData(move(data.inputs), move(data.labels), targets, evaluation)


def _collect(pending: dict, max_retries: int, watch: Watch) -> dict[str, JobResult]:
    """Wait for all tasks; on an unfixable error cancel the rest and raise."""
    finished: dict[str, JobResult] = {}
    while pending:
        # Everything that finished within a poll, in one call: a wait costs the driver time in proportion to the
        # tasks it is given (about 1 ms at 1,000), so one wait per finished task would cost more than tiny jobs.
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_SECONDS)
        for ref in done:
            name = pending.pop(ref)
            try:
                finished[name] = task_result(ref, name, max_retries)
            except DistilleryError:
                for other in pending:
                    ray.cancel(other, force=True)
                raise
            log.info("%s: %s", name, _describe(finished[name]))
        watch(finished)
    return finished


def _train_here(jobs: list[tuple[TrainJob, JobData]], run_dir: Path, watch: Watch) -> dict[str, JobResult]:
    """The local executor: one job after another in this process."""
    finished: dict[str, JobResult] = {}
    for job, data in jobs:
        finished[job.name] = run_job(job, data, run_dir, on_epoch=lambda *_: watch(finished))
        watch(finished)
    return finished


def task_result(ref, name: str, max_retries: int) -> Any:
    """The value of Ray task `ref` (of job or run `name`); its failure as a DistilleryError: the task's own one,
    or what went wrong on its worker."""
    try:
        return ray.get(ref)
    except RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, DistilleryError):
            raise cause from None
        raise TrainingError(f"{name} failed on its Ray worker: {cause!r}") from None
    except RayError as error:
        raise TrainingError(f"{name}: its worker or node was lost {max_retries + 1} times "
                            f"(cluster.max_retries={max_retries}): {type(error).__name__}") from None


def _describe(result: JobResult) -> str:
    if result.reused:
        return "reused the finished checkpoint"
    resumed = f", resumed from epoch {result.resumed_from_epoch}" if result.resumed_from_epoch else ""
    return f"trained in {result.train_seconds:.1f}s{resumed}"


def predict_all(paths: dict[str, Path], inputs: Inputs, cluster: ClusterConfig) -> dict[str, torch.Tensor]:
    """Each finished model's logits (N, C) on `inputs`, in the precision it trained in: on Ray, one task per (model,
    shard of shard_rows rows)."""
    if cluster.executor == "local":
        return {name: _predict(path, inputs) for name, path in paths.items()}
    bounds = [(start, min(start + cluster.shard_rows, len(inputs))) for start in range(0, len(inputs),
                                                                                      cluster.shard_rows)]
    num_cpus, num_gpus = task_resources(cluster, len(paths) * len(bounds))
    task = ray.remote(_predict_on_worker).options(num_cpus=num_cpus, num_gpus=num_gpus,
                                                  max_retries=cluster.max_retries)
    inputs_ref = ray.put(inputs.cpu())
    # Checkpoints travel through the object store, so workers need not see the run folder.
    checkpoints = {name: ray.put({part.name: part.read_bytes() for part in (Path(path), checksum_path(path))})
                   for name, path in paths.items()}
    refs = {name: [task.remote(checkpoints[name], inputs_ref, start, stop, num_cpus, num_gpus)
                   for start, stop in bounds] for name in paths}
    return {name: torch.cat([task_result(ref, name, cluster.max_retries) for ref in shard_refs]).to(inputs.device)
            for name, shard_refs in refs.items()}


def _predict_on_worker(checkpoint: dict[str, bytes], inputs: Inputs, start: int, stop: int, num_cpus: float,
                       num_gpus: float) -> torch.Tensor:
    """Rows start:stop of the logits of the checkpoint given as its files' bytes (checkpoint, then checksum)."""
    torch.set_num_threads(max(1, math.floor(num_cpus)))
    device = "cuda" if num_gpus > 0 else "cpu"
    with tempfile.TemporaryDirectory(prefix="distillery-predict-") as folder:
        for name, content in checkpoint.items():
            (Path(folder) / name).write_bytes(content)
        return _predict(Path(folder) / next(iter(checkpoint)), inputs[start:stop].to(device)).cpu()


def _predict(path: str | Path, inputs: Inputs) -> torch.Tensor:
    """The logits of checkpoint `path`'s model on `inputs`, in the precision it trained in."""
    model, payload = load_checkpoint(path, inputs.device)
    return predict_logits(model, inputs, precision=checkpoint_precision(payload))
