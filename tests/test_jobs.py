"""run_job without Ray: what it leaves in the run folder lets any restart reuse or resume the job."""

import time

import pytest
import torch

from conftest import job_events
from distill.checkpoint import checksum_path
from distill.config import ModelSpec, TrainConfig
from distill.data import load_dataset
from distill.errors import CheckpointError
from distill.models import create_model
from distill.precision import resolve_precision
from distill.train import train
from ensembles.jobs import JobData, TrainJob, checkpoint_path, run_job, tensorboard_path


@pytest.fixture(scope="module")
def data():
    digits = load_dataset("digits", "unused")
    return JobData(digits.x_train, digits.y_train, None, (digits.x_test, digits.y_test))


def _job(seed=5, epochs=4, inputs="data-v1"):
    return TrainJob("member_0", ModelSpec("mlp", {"hidden": [32], "dropout_hidden": 0.3}),
                    TrainConfig(epochs=epochs, batch_size=64, lr=0.1), seed=seed, num_classes=10, input_shape=(1, 8, 8),
                    inputs=inputs)


def _events(run_dir):
    return [event["event"] for event in job_events(run_dir, "member_0")]


def _weights(run_dir):
    return torch.load(checkpoint_path(run_dir, "member_0"), weights_only=True)["state_dict"]


def test_a_job_stopped_after_an_epoch_resumes_there_and_ends_as_if_never_stopped(data, tmp_path):
    straight = run_job(_job(), data, tmp_path / "straight")
    # What a worker killed during epoch 3 leaves behind: the training state written after epoch 2.
    states = []
    torch.manual_seed(5)
    model = create_model("mlp", 10, (1, 8, 8), hidden=[32], dropout_hidden=0.3)
    precision = resolve_precision(_job().train.precision, torch.device("cpu"))  # what run_job picks here
    train(model, data.inputs, data.labels, _job().train, seed=5, on_state=states.append, precision=precision)
    interrupted = tmp_path / "interrupted"
    (interrupted / "state").mkdir(parents=True)
    torch.save({**states[1], "inputs": _job().inputs, "precision": precision}, interrupted / "state" / "member_0.pt")
    resumed = run_job(_job(), data, interrupted)
    assert resumed.resumed_from_epoch == 2 and _events(interrupted) == ["resume", "epoch", "epoch"]
    assert [r.loss for r in resumed.history] == [r.loss for r in straight.history]
    for name, tensor in _weights(tmp_path / "straight").items():
        assert torch.equal(tensor, _weights(interrupted)[name]), name
    assert not (interrupted / "state" / "member_0.pt").exists()  # finished: its training state is gone


def test_a_finished_job_is_reused_after_its_checksum_is_verified(data, tmp_path):
    first = run_job(_job(), data, tmp_path)
    again = run_job(_job(), data, tmp_path)
    assert again.reused and again.checksum == first.checksum and again.history == first.history
    assert _events(tmp_path)[-1] == "reused"



@pytest.mark.parametrize("damage", ["appended", "truncated"])
def test_a_damaged_checkpoint_is_trained_again_and_said_so(data, tmp_path, caplog, damage):
    first = run_job(_job(), data, tmp_path)
    path = checkpoint_path(tmp_path, "member_0")
    if damage == "appended":
        with open(path, "ab") as checkpoint:
            checkpoint.write(b"tampered")
    else:
        path.write_bytes(path.read_bytes()[:100])
    again = run_job(_job(), data, tmp_path)
    assert not again.reused and [r.loss for r in again.history] == [r.loss for r in first.history]
    assert _events(tmp_path)[-6:-4] == ["damaged", "start"]
    assert "does not match its checksum: it was changed after it was written: training it again" in caplog.text
    assert run_job(_job(), data, tmp_path).reused  # the retrained checkpoint is sound


@pytest.mark.parametrize("junk", [b"", b"not a torch file", b"PK\x03\x04 cut short"])
def test_a_damaged_training_state_is_discarded_and_the_job_starts_over(data, tmp_path, caplog, junk):
    straight = run_job(_job(), data, tmp_path / "straight")
    state = tmp_path / "damaged" / "state" / "member_0.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(junk)
    result = run_job(_job(), data, tmp_path / "damaged")
    assert result.resumed_from_epoch == 0 and [r.loss for r in result.history] == [r.loss for r in straight.history]
    assert _events(tmp_path / "damaged")[:2] == ["damaged", "start"]
    assert "its training state member_0.pt cannot be read" in caplog.text


def test_a_checkpoint_of_another_job_is_refused_not_reused(data, tmp_path):
    run_job(_job(seed=5), data, tmp_path)
    with pytest.raises(CheckpointError, match="trained for another job"):
        run_job(_job(seed=6), data, tmp_path)


def test_a_job_killed_while_saving_trains_on_instead_of_failing(data, tmp_path):
    run_job(_job(), data, tmp_path)
    first = _weights(tmp_path)
    checksum_path(checkpoint_path(tmp_path, "member_0")).unlink()  # killed between the file and its checksum
    again = run_job(_job(), data, tmp_path)
    assert not again.reused and _events(tmp_path)[-5] == "start"
    for name, tensor in first.items():
        assert torch.equal(tensor, _weights(tmp_path)[name]), name


def test_a_finished_job_of_other_inputs_is_retrained_not_reused(data, tmp_path):
    run_job(_job(inputs="data-v1"), data, tmp_path)
    again = run_job(_job(inputs="data-v2"), data, tmp_path)  # e.g. its teacher was retrained since
    assert not again.reused and _events(tmp_path)[-6:-4] == ["stale", "start"]
    assert torch.load(checkpoint_path(tmp_path, "member_0"), weights_only=True)["inputs"] == "data-v2"
    assert run_job(_job(inputs="data-v2"), data, tmp_path).reused


def test_a_training_state_of_other_inputs_is_not_resumed(data, tmp_path):
    states = []
    torch.manual_seed(5)
    model = create_model("mlp", 10, (1, 8, 8), hidden=[32], dropout_hidden=0.3)
    train(model, data.inputs, data.labels, _job().train, seed=5, on_state=states.append)
    (tmp_path / "state").mkdir()
    torch.save({**states[1], "inputs": "data-v0"}, tmp_path / "state" / "member_0.pt")
    result = run_job(_job(inputs="data-v1"), data, tmp_path)
    assert result.resumed_from_epoch == 0 and _events(tmp_path)[:2] == ["stale", "start"]


def test_curves_go_to_tensorboard_and_a_retrained_job_replaces_what_an_attempt_logged(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    earlier = SummaryWriter(str(tensorboard_path(tmp_path, "member_0")))  # an attempt that died before its state
    for epoch in (1, 2, 3):
        earlier.add_scalar("train/loss", 99.0, epoch)
    earlier.close()
    time.sleep(1.1)  # event files are read in the order of the second they were opened
    result = run_job(_job(), data, tmp_path)
    curves = EventAccumulator(str(tensorboard_path(tmp_path, "member_0")))
    curves.Reload()
    loss = [(event.step, event.value) for event in curves.Scalars("train/loss")]
    assert loss == [(r.epoch, pytest.approx(r.loss)) for r in result.history]
    assert [event.step for event in curves.Scalars("test/accuracy")] == [r.epoch for r in result.history
                                                                        if r.test_accuracy is not None]
