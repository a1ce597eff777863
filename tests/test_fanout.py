"""The Ray fan-out on a simulated two-node cluster: spread, worker and node failures, retries, driver resume."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
import torch

from conftest import job_events, run_metrics, set_args
from distill.checkpoint import checksum_path
from distill.config import ClusterConfig, ModelSpec, TrainConfig
from distill.data import load_dataset
from distill.errors import TrainingError
from ensembles.fanout import predict_all, train_jobs
from ensembles.jobs import JobData, TrainJob, checkpoint_path, run_job, tensorboard_path

pytestmark = pytest.mark.slow

RAY = ClusterConfig(executor="ray", num_cpus=1, max_retries=2, shard_rows=300)
# Big enough that a member takes seconds (so tests can hit it mid-training), small enough for a fast suite.
OPTIONS = {"classes": 20, "groups": 4, "dim": 32, "train_per_class": 400, "test_per_class": 20}


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", "unused", OPTIONS)


def _jobs(data, members=3, epochs=12, lr=0.05):
    shared = JobData(data.x_train, data.y_train, None, (data.x_test, data.y_test))
    return [(TrainJob(f"member_{i}", ModelSpec("mlp", {"hidden": [256, 256]}),
                      TrainConfig(epochs=epochs, batch_size=32, lr=lr), seed=100 + i, num_classes=data.num_classes,
                      input_shape=data.input_shape), shared) for i in range(members)]


def _in_background(function, *args):
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=function(*args)), daemon=True)
    thread.start()
    return thread, outcome


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the run to reach the state under test")


def _member_mid_training(run_dir, names, min_epoch=2, max_epoch=None):
    """(name, last epoch event) of a member that finished `min_epoch` epochs (and at most `max_epoch`) but not all,
    if any."""
    for name in names:
        epochs = [e for e in job_events(run_dir, name) if e["event"] == "epoch"]
        done = epochs[-1]["epoch"] if epochs else 0
        if min_epoch <= done <= (max_epoch or done) and not checkpoint_path(run_dir, name).exists():
            return name, epochs[-1]
    return None


def _reference_weights(job, data, tmp_path):
    """The same job trained without interruption, in this process with one thread like a 1-CPU worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_job(job, data, tmp_path / "reference")
    finally:
        torch.set_num_threads(threads)
    return torch.load(checkpoint_path(tmp_path / "reference", job.name), weights_only=True)["state_dict"]


def _assert_same_weights(run_dir, name, reference):
    trained = torch.load(checkpoint_path(run_dir, name), weights_only=True)["state_dict"]
    for key, tensor in reference.items():
        torch.testing.assert_close(trained[key], tensor, rtol=0, atol=1e-6, msg=f"{name}.{key}")


def _assert_trained_once(run_dir, names):
    for name in names:
        starts = [e["event"] for e in job_events(run_dir, name) if e["event"] in ("start", "resume")]
        assert starts == ["start"], (name, starts)


def test_members_spread_over_nodes_and_match_in_process_training(ray_cluster, data, tmp_path):
    jobs = _jobs(data, members=3, epochs=3)
    results = train_jobs(jobs, tmp_path / "run", RAY)
    assert set(results) == {"member_0", "member_1", "member_2"}
    nodes = {job_events(tmp_path / "run", name)[0]["node"] for name in results}
    assert len(nodes) == 2  # both worker nodes trained members (the head has no CPUs)
    job, job_data = jobs[1]
    _assert_same_weights(tmp_path / "run", "member_1", _reference_weights(job, job_data, tmp_path))
    logits = predict_all({name: checkpoint_path(tmp_path / "run", name) for name in results}, data.x_test, RAY)
    assert logits["member_0"].shape == (len(data.x_test), data.num_classes)  # 400 rows in two 300-row shards
    again = train_jobs(jobs, tmp_path / "run", RAY)  # everything finished: reused, checksums verified
    assert all(result.reused for result in again.values())
    assert {n: r.checksum for n, r in again.items()} == {n: r.checksum for n, r in results.items()}


def test_workers_that_do_not_see_the_run_folder_send_their_files_to_the_driver(ray_cluster, data, tmp_path):
    run_dir = tmp_path / "run"
    jobs = _jobs(data, members=2, epochs=3)
    results = train_jobs(jobs, run_dir, dataclasses.replace(RAY, run_folder="driver"))
    for name in results:
        assert checksum_path(checkpoint_path(run_dir, name)).is_file()
        assert not (run_dir / "state" / f"{name}.pt").exists()  # removed on the worker, so on the driver
        assert [e["epoch"] for e in job_events(run_dir, name) if e["event"] == "epoch"] == [1, 2, 3]
        assert list(tensorboard_path(run_dir, name).glob("events.out.tfevents.*"))
        assert job_events(run_dir, name)[0]["node"] != ray.get_runtime_context().get_node_id()  # a worker node's
    job, job_data = jobs[1]
    _assert_same_weights(run_dir, "member_1", _reference_weights(job, job_data, tmp_path))
    again = train_jobs(jobs, run_dir, dataclasses.replace(RAY, run_folder="driver"))  # reused from the driver's copy
    assert all(result.reused for result in again.values())


@pytest.mark.parametrize("run_folder", ["auto", "driver"])
def test_a_killed_worker_resumes_its_member_from_the_last_epoch(ray_cluster, data, tmp_path, run_folder):
    run_dir = tmp_path / "run"
    jobs = _jobs(data)
    thread, outcome = _in_background(train_jobs, jobs, run_dir, dataclasses.replace(RAY, run_folder=run_folder))
    victim, last_epoch = _wait_for(lambda: _member_mid_training(run_dir, [job.name for job, _ in jobs]))
    os.kill(last_epoch["pid"], signal.SIGKILL)
    thread.join(timeout=300)
    results = outcome["result"]
    assert results[victim].resumed_from_epoch >= last_epoch["epoch"]
    resumed = [e for e in job_events(run_dir, victim) if e["event"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["pid"] != last_epoch["pid"]
    others = [job.name for job, _ in jobs if job.name != victim]
    _assert_trained_once(run_dir, others)
    job, job_data = next((j, d) for j, d in jobs if j.name == victim)
    _assert_same_weights(run_dir, victim, _reference_weights(job, job_data, tmp_path))


@pytest.mark.parametrize("run_folder", ["auto", "driver"])
def test_a_removed_node_loses_no_finished_member(ray_cluster, data, tmp_path, run_folder):
    run_dir = tmp_path / "run"
    jobs = _jobs(data)
    thread, outcome = _in_background(train_jobs, jobs, run_dir, dataclasses.replace(RAY, run_folder=run_folder))
    victim, last_epoch = _wait_for(lambda: _member_mid_training(run_dir, [job.name for job, _ in jobs]))
    node = next(n for n in ray_cluster.worker_nodes if n.node_id == last_epoch["node"])
    ray_cluster.remove_node(node, allow_graceful=False)
    ray_cluster.add_node(num_cpus=1)  # keep two worker nodes for the tests that follow
    thread.join(timeout=300)
    results = outcome["result"]
    assert results[victim].resumed_from_epoch >= last_epoch["epoch"]
    nodes = [e["node"] for e in job_events(run_dir, victim) if e["event"] in ("start", "resume")]
    assert nodes[0] == last_epoch["node"] and nodes[-1] != last_epoch["node"]
    finished_before = [name for name in results if name != victim and results[name].resumed_from_epoch == 0]
    _assert_trained_once(run_dir, finished_before)
    job, job_data = next((j, d) for j, d in jobs if j.name == victim)
    _assert_same_weights(run_dir, victim, _reference_weights(job, job_data, tmp_path))


def test_a_nan_loss_stops_the_fan_out_instead_of_being_retried(ray_cluster, data, tmp_path):
    with pytest.raises(TrainingError, match="loss became nan"):
        train_jobs(_jobs(data, members=2, epochs=2, lr=1e30), tmp_path / "run", RAY)
    starts = [e for e in job_events(tmp_path / "run", "member_0") if e["event"] in ("start", "resume")]
    assert len(starts) == 1  # application errors are not retried


ENSEMBLE = ["data.name=synthetic", "data.options=" + json.dumps(OPTIONS), "ensemble.size=3", "specialists.count=0",
            "teacher.model.kwargs={hidden: [256, 256]}", "teacher.train={epochs: 20, batch_size: 32, lr: 0.05}",
            "student.model.kwargs={hidden: [32]}", "student.train.epochs=3"]


def _cli(*args):
    return [sys.executable, "-m", "distillery", "run", *set_args(ENSEMBLE), *args]


def test_a_killed_driver_resumes_with_the_same_results(ray_cluster, tmp_path):
    from distillery.cli import main

    run_dir = tmp_path / "run"
    driver = subprocess.Popen(_cli("--out", str(run_dir), "--address", ray_cluster.address),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    names = [f"member_{i}" for i in range(3)]

    def one_finished_one_mid_training():
        # At most 5 of 20 epochs: the member must not finish in the seconds Ray takes to end a dead driver's tasks.
        finished = [n for n in names if checkpoint_path(run_dir, n).exists()]
        return finished and _member_mid_training(run_dir, names, min_epoch=1, max_epoch=5) and finished
    finished = _wait_for(one_finished_one_mid_training, timeout=240)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    workers = {e["pid"] for n in names for e in job_events(run_dir, n)}
    _wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=60)  # Ray ends a dead driver's tasks

    assert main(["run", *_cli("--out", str(run_dir), "--address", ray_cluster.address, "--resume")[4:]]) == 0
    for name in finished:
        assert [e["event"] for e in job_events(run_dir, name)][-1] == "reused"
    assert any(e["event"] == "resume" for n in names for e in job_events(run_dir, n))
    assert main(["run", *_cli("--out", str(tmp_path / "straight"), "--address", ray_cluster.address)[4:]]) == 0
    resumed, straight = run_metrics(run_dir).models, run_metrics(tmp_path / "straight").models
    for name in [*names, "ensemble", "student", "baseline"]:
        for key in ("accuracy", "nll", "ece"):
            assert getattr(resumed[name], key) == pytest.approx(getattr(straight[name], key), abs=1e-6), (name, key)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
