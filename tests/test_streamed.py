"""The streaming path: image folders over the memory budget are decoded batch by batch from their files, and give
the same inputs, the same training and the same run results as the in-memory path; a streamed run resumes."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import job_events, omniglot_pngs, run_metrics, set_args
from distill.config import TrainConfig
from distill.data import load_dataset
from distill.models import create_model
from distill.streamed import StreamedImages, batches_of, channel_stats
from distill.train import train
from distillery.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory, data_root):
    return omniglot_pngs(data_root, tmp_path_factory.mktemp("pngs") / "omniglot", alphabets=2, characters=3)


def _both(folder, tmp_path, **options):
    options = {"root": str(folder), "size": 16, "channels": 1, "test_fraction": 0.25, **options}
    return (load_dataset("image_folder", tmp_path, options),
            load_dataset("image_folder", tmp_path, {**options, "memory_budget_gb": 0, "workers": 1}))


def test_streamed_images_are_the_in_memory_images_to_the_bit(folder, tmp_path):
    memory, streamed = _both(folder, tmp_path)
    assert isinstance(streamed.x_train, StreamedImages) and isinstance(memory.x_train, torch.Tensor)
    assert streamed.x_train.shape == memory.x_train.shape and len(streamed.x_test) == len(memory.x_test) == 30
    assert torch.equal(streamed.x_train.load(), memory.x_train) and torch.equal(streamed.x_test.load(), memory.x_test)
    rows = torch.randperm(len(memory.x_train))[:11]
    assert torch.equal(streamed.x_train[rows].load(), memory.x_train[rows])
    assert torch.equal(streamed.x_train[5:17].load(), memory.x_train[5:17])
    mask = torch.arange(len(memory.x_train)) % 3 == 0
    assert torch.equal(streamed.x_train[mask].load(), memory.x_train[mask])
    order = torch.randperm(len(memory.x_train)).split(8)
    for got, expected in zip(batches_of(streamed.x_train, order), batches_of(memory.x_train, order), strict=True):
        assert torch.equal(got, expected)
    assert torch.equal(streamed.y_train, memory.y_train) and torch.equal(streamed.groups, memory.groups)
    inline = load_dataset("image_folder", tmp_path, {"root": str(folder), "size": 16, "channels": 1,
                                                     "test_fraction": 0.25, "memory_budget_gb": 0, "workers": 0})
    assert torch.equal(inline.x_train.load(), memory.x_train)  # decoded in this process: the same


def test_channel_statistics_match_torch_and_do_not_depend_on_the_source():
    images = torch.rand(300, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(images.split(64))
    assert torch.allclose(mean, images.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(std, images.std(dim=(0, 2, 3)), atol=1e-6)


def test_training_on_streamed_images_matches_memory_and_resumes_mid_run(folder, tmp_path):
    memory, streamed = _both(folder, tmp_path)
    config = TrainConfig(epochs=3, batch_size=16, lr=0.05, augment_shift=1)

    def trained(inputs, resume_from=None, states=None):
        torch.manual_seed(3)
        model = create_model("cnn", memory.num_classes, memory.input_shape, channels=[4, 8], hidden=16)
        history = train(model, inputs, memory.y_train, config, seed=7, resume_from=resume_from,
                        on_state=states.append if states is not None else None)
        return model, history

    states = []
    expected, expected_history = trained(memory.x_train)
    streamed_model, streamed_history = trained(streamed.x_train, states=states)
    for (name, got), want in zip(streamed_model.state_dict().items(), expected.state_dict().values(), strict=True):
        assert torch.allclose(got, want, atol=1e-6), name
    assert [r.loss for r in streamed_history] == pytest.approx([r.loss for r in expected_history], abs=1e-6)
    resumed, resumed_history = trained(streamed.x_train, resume_from=states[0])  # stopped after epoch 1
    assert len(resumed_history) == 3
    for got, want in zip(resumed.state_dict().values(), streamed_model.state_dict().values(), strict=True):
        assert torch.equal(got, want)


def test_a_negative_memory_budget_is_one_line_and_exit_2(folder, tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path / "run"), "--set", "data.name=image_folder",
                 "--set", f"data.options={{root: {folder}, memory_budget_gb: -1}}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "memory_budget_gb and workers must be >= 0" in err[0]
    assert not (tmp_path / "run").exists()


RUN = ["data.name=image_folder", "teacher.model={name: cnn, kwargs: {channels: [4, 8], hidden: 32}}",
       "teacher.train={epochs: 4, batch_size: 16, lr: 0.05}", "specialists.count=2", "specialists.train.epochs=2",
       "student.model={name: mlp, kwargs: {hidden: [32]}}", "student.train={epochs: 30, batch_size: 16}",
       "cluster.executor=local"]


def _options(folder, streamed: bool) -> str:
    budget = ", memory_budget_gb: 0, workers: 1" if streamed else ""
    return f"data.options={{root: {folder}, size: 16, channels: 1, test_fraction: 0.25{budget}}}"


@pytest.fixture(scope="module")
def streamed_run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("streamed") / "run"
    assert main(["run", "--out", str(out), *set_args([*RUN, _options(folder, True)])]) == 0
    return out


def _assert_same_metrics(got, expected):
    assert set(got.models) == set(expected.models)
    for name, model in expected.models.items():
        for key in ("accuracy", "nll", "ece"):
            assert getattr(got.models[name], key) == pytest.approx(getattr(model, key), abs=1e-6), (name, key)
    assert got.specialists.clustering.subsets == expected.specialists.clustering.subsets


@pytest.mark.slow
def test_a_streamed_run_with_specialists_matches_the_in_memory_run(folder, streamed_run, tmp_path):
    out = tmp_path / "memory"
    assert main(["run", "--out", str(out), *set_args([*RUN, _options(folder, False)])]) == 0
    _assert_same_metrics(run_metrics(streamed_run), run_metrics(out))
    assert {"generalist", "specialists", "student", "baseline"} <= set(run_metrics(out).models)


@pytest.mark.slow
def test_a_streamed_run_killed_mid_training_resumes_to_the_same_results(folder, streamed_run, tmp_path):
    out, overrides = tmp_path / "run", set_args([*RUN, _options(folder, True)])
    driver = subprocess.Popen([sys.executable, "-m", "distillery", "run", "--out", str(out), *overrides],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not any(e["event"] == "epoch" and e["epoch"] >= 3 for e in job_events(out, "student")):
        assert driver.poll() is None, f"the run ended before the student trained: {driver.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting for the student"
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not (out / "student.pt.sha256").exists()

    assert main(["run", "--out", str(out), *overrides, "--resume"]) == 0
    resumed = [e for e in job_events(out, "student") if e["event"] == "resume"]
    assert resumed and resumed[-1]["epoch"] >= 3
    assert job_events(out, "generalist")[-1]["event"] == "reused"
    _assert_same_metrics(run_metrics(out), run_metrics(streamed_run))
