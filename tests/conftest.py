"""Fixtures and helpers every test file shares (import the helpers with `from conftest import ...`).

Tiers, by marker (docs/testing.md): unmarked tests are the unit tier (`make test-unit`, under a minute); `slow`
ones train for real or start Ray (seconds to a minute each); `ray` ones, a subset of `slow`, need Ray (every test
that uses the `ray_cluster` fixture is marked here). `make test` runs them all.
"""

import os
import zipfile
from pathlib import Path

import pytest
import torch

from distill.storage import read_json_lines
from distillery.manifests import LOG
from distillery.metrics import RunMetrics, read_metrics
from distillery.run_folder import METRICS
from ensembles.jobs import log_path

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def set_args(assignments: list[str]) -> list[str]:
    """`--set A --set B ...` for the command line."""
    return [arg for assignment in assignments for arg in ("--set", assignment)]


def job_events(run_dir: Path, name: str) -> list[dict]:
    """Job `name`'s log, oldest event first."""
    return read_json_lines(log_path(run_dir, name))


def stage_events(run_dir: Path) -> list[tuple[str, str]]:
    """(stage, event) of every manifest event of the run, in order."""
    return [(e["stage"], e["event"]) for e in read_json_lines(Path(run_dir) / LOG)]


def run_metrics(run_dir: Path) -> RunMetrics:
    return read_metrics(Path(run_dir) / METRICS)


def omniglot_pngs(data_root, target, alphabets=2, characters=2, levels=2):
    """Real Omniglot PNGs from the shared zip as an image folder: `target/ALPHABET/CHARACTER/*.png` (two levels) or
    `target/ALPHABET_CHARACTER/*.png` (one)."""
    with zipfile.ZipFile(data_root / "omniglot-background.zip") as bundle:
        names = [name for name in bundle.namelist() if name.endswith(".png")]
        chosen_alphabets = sorted({name.split("/")[2] for name in names})[:alphabets]
        for alphabet in chosen_alphabets:
            chosen = sorted({name.split("/")[3] for name in names if name.split("/")[2] == alphabet})[:characters]
            for character in chosen:
                folder = target / alphabet / character if levels == 2 else target / f"{alphabet}_{character}"
                folder.mkdir(parents=True)
                for name in names:
                    if name.split("/")[2:4] == [alphabet, character]:
                        (folder / name.split("/")[-1]).write_bytes(bundle.read(name))
    return target


def pytest_collection_modifyitems(items):
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own per-user cache, so cached soft targets or unzipped data never leak between tests."""
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared, read-only data sets: $DISTILLERY_DATA (as CI sets it), else ../shared/datasets."""
    root = Path(os.environ.get("DISTILLERY_DATA", SHARED_DATASETS))
    if not (root / "MNIST" / "raw").is_dir():
        pytest.fail(f"the shared data sets are missing at {root}: set DISTILLERY_DATA")
    return root


@pytest.fixture(scope="session")
def ray_cluster():
    """One simulated multi-node Ray cluster for every Ray test: a head that runs no tasks and two 1-CPU worker
    nodes, all on loopback. Node failures are detected within about a second instead of Ray's default 15 s."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before any Ray process starts: bind to 127.0.0.1
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "_system_config": {"health_check_period_ms": 200, "health_check_failure_threshold": 3,
                                          "health_check_initial_delay_ms": 0}})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
