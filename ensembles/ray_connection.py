"""Connecting to Ray: a private local instance on loopback by default, or an existing cluster by address."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import ray

from distill.errors import ConfigError, RayStartError

log = logging.getLogger(__name__)


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Yield with Ray connected; disconnect (and stop a local instance) afterwards.

    address None or "local": start a fresh Ray on this machine with all its CPUs. Its services and dashboard
    bind to 127.0.0.1 only (ensembles/__init__.py sets that up before Ray is imported), and it never joins a
    cluster recorded in Ray's temp folder (plain `ray.init()` would, even a dead one). "auto" or "HOST:PORT":
    join that cluster. Already connected (a test fixture, or a program that embeds Distillery): use that
    connection and leave it open.
    """
    if ray.is_initialized():
        yield
        return
    _check_reachable(address)
    try:
        if address in (None, "local"):
            # Ray >= 2.59 protects a local instance with a token, and warns that it did on every start: the
            # protection is what we want, the warning is noise in each run's output.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            _start_local()
            _watch_driver()
        else:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise _unreachable(address, _first_line(error) + _token_hint(address)) from None
    log.info("Ray: %s CPUs, %s GPUs", ray.cluster_resources().get("CPU", 0), ray.cluster_resources().get("GPU", 0))
    try:
        yield
    finally:
        ray.shutdown()


def _start_local() -> None:
    try:
        ray.init(address="local", dashboard_host="127.0.0.1", logging_level=logging.WARNING, log_to_driver=False)
    except Exception as error:  # noqa: BLE001 - Ray reports a node that timed out during startup as a bare Exception
        ray.shutdown()  # whatever part of the instance did start goes with it
        raise RayStartError(f"could not start a local Ray instance: {_first_line(error)} (on a busy machine, run "
                            f"again when it is less loaded)") from None


def _watch_driver() -> None:
    """Start ensembles.ray_watchdog for this driver, in a session of its own: it takes down what this private Ray
    instance leaves behind once the driver is gone, SIGKILL included."""
    subprocess.Popen([sys.executable, "-m", "ensembles.ray_watchdog", str(os.getpid())], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     cwd=Path(__file__).resolve().parents[1])


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail in seconds on a HOST:PORT nobody listens at: ray.init would keep retrying for minutes."""
    host, _, port = (address or "").rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or "://" in address:
        return  # "local", "auto" and ray:// client addresses: Ray resolves and reports those itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise _unreachable(address, f"nothing answers at {host}:{port} ({error.strerror or error})") from None


def _unreachable(address: str | None, reason: str) -> ConfigError:
    return ConfigError(f"cannot reach a Ray cluster at --address {address}: {reason}")


def _token_hint(address: str | None) -> str:
    """A token-authenticated cluster refuses an explicit address unless the driver opts in; Ray's own
    failure then only says it could not connect."""
    if address in (None, "local", "auto") or os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return ""
    return " (if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN " \
           "or ~/.ray/auth_token)"


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
