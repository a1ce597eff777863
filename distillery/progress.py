"""What the driver shows on a terminal: each stage's name as it starts, and one bar per training stage with the
epochs done over all its models, how many finished, which run now (at which epoch) and which were retried.

Everything shown is read from the jobs' logs (`ensembles.jobs.LogFollower`: only what they gained since the last
look, at most once a second), so a model training on another node shows up as well as one in this process, and a
stage of thousands of jobs costs the driver little. Off a terminal nothing is shown; the logs are there either way.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ensembles.jobs import JobResult, JobStatus, LogFollower, TrainJob

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0  # the fan-out calls after every epoch or finished job; the logs are read at most this often


class Progress:
    """The driver's display of one run; `enabled` False (not a terminal) logs the stages only."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def announce(self, stage: str) -> None:
        log.info("stage: %s", stage)
        if self.enabled:
            tqdm.write(f"distillery: {stage}", file=sys.stderr)

    def training(self, run_dir: Path, jobs: list[TrainJob], label: str) -> TrainingBar:
        return TrainingBar(run_dir, jobs, label, self.enabled)


class TrainingBar:
    """The bar of one training stage, refreshed by the fan-out (`ensembles.fanout.Watch`) with the jobs finished
    so far; a no-op when disabled (reading every log costs time only worth spending on a terminal)."""

    def __init__(self, run_dir: Path, jobs: list[TrainJob], label: str, enabled: bool):
        self.logs = LogFollower(run_dir, [job.name for job in jobs], since=time.time())
        self.bar = tqdm(total=sum(job.train.epochs for job in jobs), desc=label, unit="epoch", disable=not enabled)
        self.read_at = -REFRESH_SECONDS

    def refresh(self, finished: dict[str, JobResult]) -> None:
        everything = len(finished) == len(self.logs.paths)
        if self.bar.disable or (time.monotonic() - self.read_at < REFRESH_SECONDS and not everything):
            return
        self.read_at = time.monotonic()
        statuses = self.logs.statuses()
        self.bar.update(sum(status.epochs for status in statuses.values()) - self.bar.n)
        self.bar.set_postfix_str(progress_line(statuses, finished))  # redraws, also when no epoch ended

    def __enter__(self) -> TrainingBar:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def progress_line(statuses: dict[str, JobStatus], finished: dict[str, JobResult]) -> str:
    """The bar's summary: how many finished, which run now (with their epoch), which were retried (statuses
    counted since this driver started)."""
    running = [f"{name}@{status.epochs}" for name, status in statuses.items()
               if status.attempts and name not in finished]
    retried = [name for name, status in statuses.items() if status.attempts > 1]
    parts = [f"{len(finished)}/{len(statuses)} done"]
    if running:
        parts.append("running " + " ".join(running[:4]) + (f" +{len(running) - 4}" if len(running) > 4 else ""))
    if retried:
        parts.append("retried " + " ".join(retried))
    return ", ".join(parts)
