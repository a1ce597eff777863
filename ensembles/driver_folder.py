"""The run folder on the driver's node, reached through Ray by workers that cannot see it: no shared storage needed.

A job on such a worker trains in a scratch folder on its own node. Before it starts, its files in the driver's run
folder (finished checkpoint, training state, log, TensorBoard events: `ensembles.jobs.job_files`) are copied
there; after every epoch, once its state is saved, and at the end, what changed goes back, and what the job
removed is removed. Only `DriverFolder`, an actor placed on the driver's node, writes the driver's folder, each
file atomically and in the job's order (a checkpoint before its checksum), so a worker or node that dies leaves
that folder as a shared one would be left: the job's retry, on any node, copies the last epoch's state back and
resumes from it, and the results are on the driver's node at the end.

Whether a worker sees the folder is tested, not configured: the driver leaves a token file in it, and a worker
that reads the same token there uses the folder directly (one machine, NFS). `cluster.run_folder: driver` ships
through the actor even then.
"""

from __future__ import annotations

import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distill.storage import atomic_write_bytes
from ensembles.jobs import job_files

TOKEN_FILE = ".driver-folder-token"


class DriverFolder:
    """Reads and writes files of one run folder on the node it runs on (made a Ray actor by `start`)."""

    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)

    def read_job(self, name: str) -> dict[str, bytes]:
        """The job's files, by path relative to the run folder."""
        return {str(path.relative_to(self.run_dir)): path.read_bytes() for path in job_files(self.run_dir, name)}

    def write(self, files: dict[str, bytes | None]) -> None:
        """Write each file atomically in the order given; None removes it."""
        for relative, content in files.items():
            path = self.run_dir / relative
            if content is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write_bytes(path, content)


@dataclass(frozen=True)
class FolderAccess:
    """How workers reach the driver's run folder: through `actor`, unless they find `token` in the folder at the
    same path (None: through the actor regardless)."""

    actor: ray.actor.ActorHandle
    token: str | None

    def seen_from_here(self, run_dir: Path) -> bool:
        try:
            return self.token is not None and (Path(run_dir) / TOKEN_FILE).read_bytes().decode() == self.token
        except OSError:
            return False


def start(run_dir: Path, always: bool) -> FolderAccess:
    """A `DriverFolder` actor on this (the driver's) node for `run_dir`, used by workers that do not see the folder
    (by every worker when `always`)."""
    token = uuid.uuid4().hex
    atomic_write_bytes(Path(run_dir) / TOKEN_FILE, token.encode())
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0)(DriverFolder).options(scheduling_strategy=here).remote(str(run_dir))
    return FolderAccess(actor, None if always else token)


class ScratchCopy:
    """A job's files copied from the driver's folder into a scratch folder of this node, and sent back by `send`:
    the files that changed since the last send, and the removal of those the job deleted."""

    def __init__(self, folder: ray.actor.ActorHandle, name: str, scratch: Path):
        self.folder, self.name, self.scratch = folder, name, scratch
        self.sent: dict[str, tuple[int, int]] = {}
        for relative, content in ray.get(folder.read_job.remote(name)).items():
            atomic_write_bytes(scratch / relative, content)
            self.sent[relative] = self._stamp(scratch / relative)

    def send(self) -> None:
        current = {str(path.relative_to(self.scratch)): path for path in job_files(self.scratch, self.name)}
        changed = {relative: path.read_bytes() for relative, path in current.items()
                   if self.sent.get(relative) != self._stamp(path)}
        removed = dict.fromkeys((relative for relative in self.sent if relative not in current), None)
        if changed or removed:
            ray.get(self.folder.write.remote({**changed, **removed}))  # waited for: the epoch is safe once sent
        self.sent = {relative: self._stamp(path) for relative, path in current.items()}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        status = path.stat()
        return status.st_size, status.st_mtime_ns


@contextmanager
def scratch_copy(folder: ray.actor.ActorHandle, name: str) -> Iterator[ScratchCopy]:
    """A `ScratchCopy` of job `name` in a temporary folder, sent once more and removed at the end."""
    with tempfile.TemporaryDirectory(prefix=f"distillery-{name}-") as scratch:
        copy = ScratchCopy(folder, name, Path(scratch))
        yield copy
        copy.send()
