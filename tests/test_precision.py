"""bf16 where the hardware multiplies bf16 matrices, fp32 elsewhere; fp32 master weights and records either way."""

import pytest
import torch

from distill.config import ModelSpec, TrainConfig
from distill.data import load_dataset
from distill.precision import bf16_matrix_units, resolve_precision
from distill.train import predict_logits
from ensembles.jobs import JobData, TrainJob, load_job_model, run_job

CPU = torch.device("cpu")


def test_auto_picks_bf16_only_where_the_device_has_bf16_matrix_units():
    assert resolve_precision("auto", CPU, has_units=lambda device: True) == "bf16"
    assert resolve_precision("auto", CPU, has_units=lambda device: False) == "fp32"
    for setting in ("fp32", "bf16"):  # an explicit setting is taken as given
        assert resolve_precision(setting, CPU, has_units=lambda device: setting == "fp32") == setting


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(False, False, False), (True, False, True),
                                                         (False, True, True)])
def test_a_cpu_has_bf16_matrix_units_with_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert bf16_matrix_units(CPU) is expected


def test_a_gpu_has_them_when_cuda_says_it_supports_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert not bf16_matrix_units(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert bf16_matrix_units(torch.device("cuda"))


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", "unused")
    return JobData(data.x_train, data.y_train, None, (data.x_test, data.y_test))


def _job(precision):
    return TrainJob("member_0", ModelSpec("mlp", {"hidden": [32], "dropout_hidden": 0.3, "max_norm": 2.0}),
                    TrainConfig(epochs=3, batch_size=64, lr=0.1, precision=precision), seed=5, num_classes=10,
                    input_shape=(1, 8, 8), inputs="digits")


def test_a_bf16_job_keeps_fp32_weights_and_records_its_precision(digits, tmp_path):
    result = run_job(_job("bf16"), digits, tmp_path)
    trained = load_job_model(tmp_path, "member_0")
    assert result.precision == trained.precision == "bf16"
    assert all(tensor.dtype == torch.float32 for tensor in trained.model.state_dict().values())  # checkpoint fp32
    logits = predict_logits(trained.model, digits.evaluation[0], precision=trained.precision)
    assert logits.dtype == torch.float32
    accuracy = (logits.argmax(1) == digits.evaluation[1]).float().mean().item()
    assert accuracy > 0.8
    # its bf16 logits are close to, but not the same as, those of its fp32 weights in fp32
    fp32_logits = predict_logits(trained.model, digits.evaluation[0])
    assert 0 < (logits - fp32_logits).abs().max() < 0.5


def test_bf16_and_fp32_training_differ_only_by_rounding(digits, tmp_path):
    results = {precision: run_job(_job(precision), digits, tmp_path / precision) for precision in ("fp32", "bf16")}
    losses = {precision: [record.loss for record in result.history] for precision, result in results.items()}
    assert losses["fp32"] != losses["bf16"]
    assert losses["fp32"] == pytest.approx(losses["bf16"], rel=0.05)
