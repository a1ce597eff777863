"""The GPU path: a run on CUDA where there is one (skipped, visibly, where there is not), and the prepared GPU
check script, run with --cpu so that it is known to work before a GPU machine is at hand."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import run_metrics, set_args
from distillery.cli import main

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device here: benchmarks/gpu_check.sh checks the GPU path on a GPU machine")
def test_a_run_on_the_gpu_records_its_device(tmp_path):
    overrides = ["device=cuda", "cluster.executor=local", "teacher.train.epochs=2", "student.train.epochs=2"]
    assert main(["run", "--out", str(tmp_path / "run"), *set_args(overrides)]) == 0
    assert run_metrics(tmp_path / "run").run.device.startswith("cuda")


def test_the_gpu_check_script_runs_on_the_cpu(tmp_path):
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["gpu"] is None and record["note"].startswith("--cpu")
    for name in ("cnn_ensemble", "specialists"):
        assert record["results"][name]["cpu"]["device"] == "cpu"
        assert all(seconds > 0 for seconds in record["results"][name]["cpu"]["mean_epoch_seconds"].values())
