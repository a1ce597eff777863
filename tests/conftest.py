import os
from pathlib import Path

import pytest
import torch

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


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
