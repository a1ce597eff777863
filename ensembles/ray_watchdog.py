"""Takes a private local Ray instance down with its driver: `python -m ensembles.ray_watchdog DRIVER_PID`.

Started by `ray_connection.ray_session` in a session of its own, so that a signal to the driver's terminal or
process group does not reach it. Once a second it notes the driver's descendants that are Ray's (their command
line names Ray: the GCS, the raylet, the agents, the dashboard and its helpers, the workers); when the driver is
gone (an ordinary exit, an exception or SIGKILL alike) it waits a moment for Ray's own shutdown, then kills those
that are left, and their children. Without it, Ray's dashboard agent and runtime-env agent outlive a killed
driver (about 200 MB, indefinitely). Nothing here imports Ray or torch: it starts in milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

GRACE_SECONDS = 3.0  # Ray's own shutdown on an ordinary exit finishes well within this


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _is_ray(pid: int) -> bool:
    try:
        return b"ray" in Path(f"/proc/{pid}/cmdline").read_bytes().lower()
    except OSError:
        return False


def _processes() -> dict[int, tuple[int, str, int]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            found[int(entry.name)] = stat
    return found


def _descendants(root: int, processes: dict[int, tuple[int, str, int]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def watch(driver: int, poll: float = 1.0) -> None:
    """Note the driver's Ray descendants (pid and start time) until the driver is gone; then kill those left."""
    own, noted = os.getpid(), {}
    while (stat := _stat(driver)) is not None and stat[1] != "Z":
        processes = _processes()
        noted = {pid: processes[pid][2] for pid in _descendants(driver, processes) if pid != own and _is_ray(pid)}
        time.sleep(poll)
    # What a noted process started since the last look (a worker, under load) is still its child now; after the
    # grace its parent may have exited and left it to init, out of reach of the descendant walk below.
    processes = _processes()
    for pid in [pid for pid in noted if pid in processes and processes[pid][2] == noted[pid]]:
        noted |= {child: processes[child][2] for child in _descendants(pid, processes) if child != own}
    time.sleep(GRACE_SECONDS)
    processes = _processes()
    # the same processes (a pid reused since has another start time), and whatever they started meanwhile
    left = {pid for pid, started in noted.items() if pid in processes and processes[pid][2] == started}
    for pid in left | set().union(*(_descendants(pid, processes) for pid in left)):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
