"""Connecting to Ray: a refused connection says what the user can do about it. (An address nobody answers at is
a bad-input row of tests/test_cli.py: it needs a process not connected to the shared test cluster.)"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from distill.errors import RayStartError
from ensembles.ray_connection import _token_hint, ray_session
from ensembles.ray_watchdog import _descendants, _is_ray, _processes, _stat


@pytest.mark.parametrize("address, auth_mode, hinted", [
    ("10.0.0.1:6379", None, True),       # Ray only says it failed to connect
    ("10.0.0.1:6379", "token", False),   # the user opted in already: the hint would mislead
    ("auto", None, False),               # Ray picks the token up by itself for auto
    (None, None, False),
])
def test_a_refused_explicit_address_hints_at_token_authentication(monkeypatch, address, auth_mode, hinted):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    if auth_mode:
        monkeypatch.setenv("RAY_AUTH_MODE", auth_mode)
    assert ("RAY_AUTH_MODE=token" in _token_hint(address)) is hinted


def test_a_local_instance_that_does_not_start_is_one_line_and_exit_code_1(monkeypatch, capsys):
    """On an overloaded machine Ray gives up on its own node with a bare Exception (ray._private.node)."""
    def timed_out(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because some of the raylet "
                        "failed to startup or the GCS has become overloaded.\n(a traceback's worth of detail)")

    shut_down = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # the shared test cluster stays connected
    monkeypatch.setattr(ray, "init", timed_out)
    monkeypatch.setattr(ray, "shutdown", lambda: shut_down.append(True))
    with pytest.raises(RayStartError) as raised, ray_session():
        pass
    assert str(raised.value) == ("could not start a local Ray instance: The current node timed out during startup. "
                                 "This could happen because some of the raylet failed to startup or the GCS has "
                                 "become overloaded. (on a busy machine, run again when it is less loaded)")
    assert raised.value.exit_code == 1 and shut_down == [True]


def _listening(pgid: int) -> list[str]:
    """Local addresses of the TCP sockets listening in processes of process group `pgid` (from `ss -ltnp`)."""
    addresses = []
    for line in subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout.splitlines():
        fields = line.split()
        pids = [int(part.split("=")[1]) for part in line.replace(")", ",").split(",") if part.startswith("pid=")]
        for pid in pids:
            try:
                if os.getpgid(pid) == pgid:
                    addresses.append(fields[3])
            except ProcessLookupError:
                pass
    return addresses


@pytest.mark.slow
def test_a_local_run_listens_on_loopback_only(tmp_path):
    """A real `distillery run` that fans out on a private Ray instance, in a process of its own whose environment
    does not set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER (the test fixtures do; a user's shell does not)."""
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    run = subprocess.Popen([sys.executable, "-m", "distillery", "run", "--out", str(tmp_path / "run"), "--set",
                            "teacher.train.epochs=40", "--set", "specialists.train.epochs=200"], env=environment,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen: set[str] = set()
    try:
        deadline = time.time() + 90
        while time.time() < deadline and run.poll() is None and not any(
                (Path(tmp_path) / "run" / "logs" / f"specialist_{m}.jsonl").is_file() for m in range(3)):
            time.sleep(0.5)
        for _ in range(6):  # while the specialists train on Ray workers
            seen.update(_listening(run.pid))
            time.sleep(0.5)
    finally:
        run.kill()
        subprocess.run(["pkill", "-9", "-g", str(run.pid)], check=False)
        run.wait()
    assert len(seen) >= 3, f"too few listening sockets seen to judge: {seen}"
    exposed = [address for address in seen if not address.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
               in ("127.0.0.1", "::1")]
    assert not exposed, f"listening beyond loopback: {exposed}"


def _ray_descendants(root: int) -> dict[int, int]:
    """pid -> start time of every process under `root` whose command line names Ray."""
    processes = _processes()
    return {pid: processes[pid][2] for pid in _descendants(root, processes) if _is_ray(pid)}


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[2] == started and stat[1] != "Z"


@pytest.mark.slow
def test_nothing_of_a_local_ray_instance_outlives_a_killed_driver(tmp_path):
    """A real `distillery run` fanning out on its private Ray instance, its driver killed with SIGKILL (only the
    driver: no signal reaches the rest of its process group): within 30 s no Ray process it started is left."""
    run = subprocess.Popen([sys.executable, "-m", "distillery", "run", "--out", str(tmp_path / "run"), "--set",
                            "teacher.train.epochs=40", "--set", "specialists.train.epochs=200"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and run.poll() is None and not any(
                (tmp_path / "run" / "logs" / f"specialist_{m}.jsonl").is_file() for m in range(3)):
            time.sleep(0.5)
        ray_processes = _ray_descendants(run.pid)
        assert len(ray_processes) >= 4, f"too few Ray processes seen to judge: {ray_processes}"
        run.kill()  # SIGKILL to the driver alone
        run.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(pid, started) for pid, started in ray_processes.items()):
            time.sleep(1)
        left = [pid for pid, started in ray_processes.items() if _alive(pid, started)]
        assert not left, f"Ray processes outlived the driver by 30 s: {left}"
    finally:
        subprocess.run(["pkill", "-9", "-g", str(run.pid)], check=False)
