import math

import pytest
import torch

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.config import LossWeights, TrainConfig
from distill.data import load_dataset
from distill.errors import CheckpointError, TrainingError
from distill.logit_cache import cached_logits
from distill.models import create_model, freeze
from distill.precision import bf16_matrix_units
from distill.train import SoftTargets, image_layout, predict_logits, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "unused")


def _fit(data, seed=0, epochs=3, weights=None, targets=None, on_state=None, **train_kwargs):
    torch.manual_seed(seed)
    model = create_model("mlp", 10, data.input_shape, hidden=[32])
    config = TrainConfig(epochs=epochs, batch_size=64, lr=0.1, **train_kwargs)
    history = train(model, data.x_train, data.y_train, config, weights or LossWeights(1.0, 0.0, 1.0), targets, seed,
                    on_state=on_state)
    return model, history


def test_hard_label_training_learns_and_is_seeded(digits):
    model, history = _fit(digits, epochs=10)
    assert history[-1].loss < history[0].loss
    accuracy = (predict_logits(model, digits.x_test).argmax(1) == digits.y_test).float().mean().item()
    assert accuracy > 0.85
    again, _ = _fit(digits, epochs=10)
    torch.testing.assert_close(predict_logits(again, digits.x_test), predict_logits(model, digits.x_test))


BF16_UNITS = bf16_matrix_units(torch.device("cpu"))
bf16_only = pytest.mark.skipif(not BF16_UNITS, reason="this CPU has no bf16 matrix units (AMX, AVX-512 BF16)")


def _small_model(name: str, input_shape):
    torch.manual_seed(1)
    if name == "cnn":
        return create_model("cnn", 10, input_shape, channels=[4], hidden=16, dropout=0.5)
    return create_model("mlp", 10, input_shape, hidden=[32], dropout_hidden=0.5)


@pytest.mark.parametrize("average_last, precision, name", [(0, "fp32", "mlp"), (3, "fp32", "mlp"), (0, "fp32", "cnn"),
                                                           pytest.param(0, "bf16", "mlp", marks=bf16_only),
                                                           pytest.param(3, "bf16", "mlp", marks=bf16_only),
                                                           pytest.param(0, "bf16", "cnn", marks=bf16_only)])
def test_training_resumed_from_a_saved_state_matches_an_uninterrupted_run(digits, average_last, precision, name):
    """Dropout draws from the global RNG, so the state must carry it too for the match to be exact; with weight
    averaging the resume starts after the average has taken its first epoch. bf16 training resumes as exactly, and
    so does a CNN, which trains channels-last."""
    config = TrainConfig(epochs=4, batch_size=64, lr=0.1, augment_shift=1, average_last=average_last)
    states = []

    def fresh():
        return _small_model(name, digits.input_shape)

    straight = fresh()
    history = train(straight, digits.x_train, digits.y_train, config, seed=3, on_state=states.append,
                    precision=precision)
    torch.manual_seed(99)  # whatever the process did in between must not matter
    resumed = fresh()
    resumed_history = train(resumed, digits.x_train, digits.y_train, config, seed=3, resume_from=states[2],
                            precision=precision)
    assert [r.loss for r in resumed_history] == [r.loss for r in history]
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_a_cnn_trains_channels_last_and_resumes_a_state_saved_in_the_usual_layout(digits):
    """Training states saved before CNNs trained channels-last hold weights and momentum in the usual layout; the
    resumed run must continue exactly as from the same state in the new layout (the fused update reads memory in
    order, so an unmatched momentum would silently pair the wrong elements)."""
    config = TrainConfig(epochs=3, batch_size=64, lr=0.1, momentum=0.9)
    states = []
    straight = _small_model("cnn", digits.input_shape)
    train(straight, digits.x_train, digits.y_train, config, seed=3, on_state=states.append)
    conv = [module for module in straight.modules() if isinstance(module, torch.nn.Conv2d)][-1]  # 4 in-channels
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    saved = states[0]
    assert any(not buffer["momentum_buffer"].is_contiguous() for buffer in saved["optimizer"]["state"].values())
    usual = {**saved, "model": {key: value.contiguous() for key, value in saved["model"].items()},
             "optimizer": {**saved["optimizer"], "state": {index: {key: value.contiguous() if torch.is_tensor(value)
                                                                     else value for key, value in entry.items()}
                                                            for index, entry in saved["optimizer"]["state"].items()}}}
    resumed = _small_model("cnn", digits.input_shape)
    train(resumed, digits.x_train, digits.y_train, config, seed=3, resume_from=usual)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


class ViewFlattening(torch.nn.Module):
    """A user's CNN as tutorials write it: `.view` fails on channels-last activations."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).view(len(x), -1))


def test_channels_last_only_for_models_marked_for_it(digits):
    images, flat = digits.x_train, digits.x_train.flatten(1)
    assert image_layout(_small_model("cnn", digits.input_shape), images) == torch.channels_last
    assert image_layout(create_model("torchvision:resnet18", 10, digits.input_shape), images) == torch.channels_last
    assert image_layout(_small_model("cnn", digits.input_shape), flat) == torch.contiguous_format
    assert image_layout(_small_model("mlp", digits.input_shape), images) == torch.contiguous_format
    user_model = ViewFlattening()
    assert image_layout(user_model, images) == torch.contiguous_format
    history = train(user_model, images, digits.y_train, TrainConfig(epochs=1, batch_size=64, lr=0.1))
    assert math.isfinite(history[0].loss)


def test_weight_averaging_returns_the_mean_of_the_last_epochs_weights(digits):
    states = []
    averaged, _ = _fit(digits, epochs=5, average_last=3, on_state=states.append)
    for name, tensor in averaged.state_dict().items():
        expected = torch.stack([state["model"][name] for state in states[-3:]]).mean(0)
        torch.testing.assert_close(tensor, expected, msg=name)


def test_averaging_only_the_last_epoch_returns_the_last_weights(digits):
    last, _ = _fit(digits, epochs=3)
    averaged, _ = _fit(digits, epochs=3, average_last=1)
    for name, tensor in last.state_dict().items():
        assert torch.equal(tensor, averaged.state_dict()[name]), name


def test_student_learns_to_match_cached_soft_targets(digits):
    teacher, _ = _fit(digits, epochs=10)
    freeze(teacher)
    targets = SoftTargets(logits=predict_logits(teacher, digits.x_train))
    student, history = _fit(digits, seed=1, epochs=10, weights=LossWeights(4.0, 1.0, 0.0), targets=targets)
    agreement = (predict_logits(student, digits.x_test).argmax(1) == predict_logits(teacher, digits.x_test).argmax(1))
    assert agreement.float().mean() > 0.9
    assert history[-1].loss < history[0].loss


@pytest.mark.parametrize("augmentation", [{"augment_shift": 1}, {"augment_flip": True}])
def test_augmented_student_gets_teacher_outputs_on_each_augmented_batch(digits, augmentation):
    calls = []

    class RecordingTeacher(torch.nn.Module):
        def forward(self, x):
            calls.append(x.clone())
            return torch.zeros(len(x), 10)

    _fit(digits, epochs=1, weights=LossWeights(2.0, 1.0, 0.0), targets=SoftTargets(teacher=RecordingTeacher()),
         **augmentation)
    seen = torch.cat(calls)
    assert len(seen) == len(digits.x_train)
    # The teacher saw augmented images, not the stored ones: only the unmoved (or unflipped) ones coincide.
    stored = {tuple(x.flatten().tolist()) for x in digits.x_train}
    assert sum(tuple(x.flatten().tolist()) in stored for x in seen) < 0.6 * len(seen)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("clip_grad_norm", [None, 1.0])
def test_nan_loss_stops_training_with_a_clear_error(digits, precision, clip_grad_norm):
    bad = digits.x_train.clone()
    bad[0, 0, 0, 0] = float("nan")
    model = create_model("mlp", 10, digits.input_shape, hidden=[8])
    with pytest.raises(TrainingError, match="loss became nan in epoch 1"):
        train(model, bad, digits.y_train, TrainConfig(epochs=2, batch_size=64, lr=0.1, clip_grad_norm=clip_grad_norm),
              precision=precision)


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=bf16_only)])
def test_a_clipped_step_moves_the_weights_by_the_clipped_norm(digits, precision):
    """One full-batch step from zero momentum with Nesterov moves the weights by lr (1 + mu) times the gradient,
    so by exactly lr (1 + mu) clip where the gradient's norm is above the clip, and by more without one."""
    def first_step(clip_grad_norm):
        torch.manual_seed(1)
        model = create_model("mlp", 10, digits.input_shape, hidden=[32])
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        config = TrainConfig(epochs=1, batch_size=len(digits.x_train), lr=0.1, momentum=0.9, schedule="constant",
                             clip_grad_norm=clip_grad_norm)
        train(model, digits.x_train, digits.y_train, config, precision=precision)
        return (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()

    assert first_step(1e-3) == pytest.approx(0.1 * 1.9 * 1e-3, rel=1e-3)
    assert first_step(None) > 10 * 0.1 * 1.9 * 1e-3


def test_cache_returns_teacher_outputs_and_is_keyed_by_teacher(digits, tmp_path):
    teacher = freeze(create_model("mlp", 10, digits.input_shape, hidden=[16]))
    computed = []

    def cached(checksums, inputs):
        def compute(names):
            computed.append(sorted(names))
            return {name: predict_logits(teacher, inputs) for name in names}
        return cached_logits(checksums, inputs, tmp_path, compute)

    inputs = digits.x_train[:100]
    first = cached({"a": "sha-a"}, inputs)["a"]
    torch.testing.assert_close(first, predict_logits(teacher, inputs))
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(1.0)
    both = cached({"a": "sha-a", "b": "sha-b"}, inputs)
    assert computed == [["a"], ["b"]]  # same checksum and inputs: served from the cache, only b computed
    torch.testing.assert_close(both["a"], first)
    torch.testing.assert_close(both["b"], predict_logits(teacher, inputs))
    assert cached({"b": "sha-b"}, digits.x_train[:50])["b"].shape == (50, 10)  # other inputs: another entry
    assert computed[-1] == ["b"] and len(list(tmp_path.glob("*.pt"))) == 3
    for path in tmp_path.glob("*.pt"):  # every entry damaged on disk, its checksum left as it was
        entry = torch.load(path, weights_only=True)
        entry["logits"][0, 0] += 1.0
        torch.save(entry, path)
    torch.testing.assert_close(cached({"a": "sha-a"}, inputs)["a"], predict_logits(teacher, inputs))
    assert computed[-1] == ["a"]  # recomputed, not read


def test_checkpoint_round_trip_and_tamper_detection(digits, tmp_path):
    model = create_model("mlp", 10, digits.input_shape, hidden=[16])
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, {"name": "mlp", "kwargs": {"hidden": [16]}}, num_classes=10,
                    input_shape=digits.input_shape, seed=5, config={"seed": 5})
    loaded, payload = load_checkpoint(path)
    torch.testing.assert_close(predict_logits(loaded, digits.x_test), predict_logits(model, digits.x_test))
    assert payload["seed"] == 5 and payload["config"] == {"seed": 5} and "torch" in payload["versions"]
    assert payload["sha256"] == (tmp_path / "m.pt.sha256").read_text().strip()
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_checkpoint(path)


def test_checkpoint_for_another_architecture_is_refused(digits, tmp_path):
    model = create_model("mlp", 10, digits.input_shape, hidden=[16])
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, {"name": "mlp", "kwargs": {"hidden": [17]}}, num_classes=10,
                    input_shape=digits.input_shape, seed=0, config={})
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(path)
