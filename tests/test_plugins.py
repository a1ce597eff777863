"""Your own data and models: plug-in loaders and builders by "package.module:attribute", torchvision models."""

import re

import numpy as np
import pytest
import torch

from conftest import run_metrics, set_args
from distill.data import load_dataset
from distill.errors import ConfigError, DataError
from distill.models import create_model
from distillery.cli import main
from specialists.specialist import output_layer


def test_a_plug_in_loader_gets_its_options_and_is_checked(tmp_path):
    data = load_dataset("own_plugins:blobs", tmp_path, {"classes": 4})
    assert data.num_classes == 4 and data.input_shape == (8,) and len(data.y_train) == 40
    with pytest.raises(ConfigError, match="unknown option 'colour' in data.options for 'own_plugins:blobs'"):
        load_dataset("own_plugins:blobs", tmp_path, {"colour": "red"})
    with pytest.raises(DataError, match=r"own_plugins:wrong_labels: label 7 of y_train is outside 0\.\.2"):
        load_dataset("own_plugins:wrong_labels", tmp_path)
    with pytest.raises(DataError, match="returned dict, not a distill.data.Dataset"):
        load_dataset("own_plugins:not_a_dataset", tmp_path)


@pytest.mark.parametrize("name, message", [
    ("no_such_package.loaders:load", "module no_such_package.loaders cannot be imported (ModuleNotFoundError"),
    ("own_plugins:nothing_here", "module own_plugins has no nothing_here"),
    (":load", "a plug-in is named 'package.module:attribute'"),
])
def test_plug_in_names_that_do_not_resolve(tmp_path, name, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_dataset(name, tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        create_model(name, 3, (8,))


def test_a_plug_in_model_and_its_output_layer():
    model = create_model("own_plugins:TinyNet", 3, (8,), width=4)
    assert model(torch.zeros(2, 8)).shape == (2, 3) and output_layer(model)[0] == "head"
    with pytest.raises(ConfigError, match="unknown argument 'depth'"):
        create_model("own_plugins:TinyNet", 3, (8,), depth=2)


def test_torchvision_models_are_adapted_to_small_single_channel_images():
    model = create_model("torchvision:resnet18", 47, (1, 28, 28))
    assert model.conv1.in_channels == 1 and model.conv1.stride == (1, 1) and isinstance(model.maxpool,
                                                                                          torch.nn.Identity)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 47) and output_layer(model)[0] == "fc"
    large = create_model("torchvision:resnet18", 10, (3, 96, 96))  # large images keep torchvision's stem
    assert large.conv1.stride == (2, 2) and isinstance(large.maxpool, torch.nn.MaxPool2d)
    assert create_model("torchvision:mobilenet_v3_small", 5, (1, 32, 32))(torch.zeros(2, 1, 32, 32)).shape == (2, 5)
    with pytest.raises(ConfigError, match="torchvision has no classification model 'resnet_nope'"):
        create_model("torchvision:resnet_nope", 10, (1, 28, 28))
    with pytest.raises(ConfigError, match=r"needs image inputs \(C x H x W\), got input shape \(8,\)"):
        create_model("torchvision:resnet18", 10, (8,))


@pytest.mark.parametrize("overrides, message", [
    (["data.name=own_plugins:blobs", "teacher.model={name: own_plugins:wrong_width, kwargs: {}}"],
     "teacher.model: the model does not run on inputs of shape (8,)"),
    (["data.name=own_plugins:blobs", "student.model={name: torchvision:resnet18, kwargs: {}}"],
     "student.model: model 'torchvision:resnet18' needs image inputs"),
    (["data.name=no_such_package:load"], "module no_such_package cannot be imported"),
    (["data.name=own_plugins:blobs", "teacher.model={name: own_plugins:TinyNet, kwargs: {width: 0.5}}"],
     "argument 'width' must be int"),
])
def test_bad_plug_ins_are_one_line_and_exit_2(tmp_path, capsys, overrides, message):
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), *set_args(overrides)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not out.exists()


@pytest.mark.slow
def test_a_run_on_plug_in_data_and_models_with_specialists(tmp_path):
    overrides = ["data.name=own_plugins:blobs", "data.options={classes: 6, per_class: 40}", "cluster.executor=local",
                 "teacher.model={name: own_plugins:TinyNet, kwargs: {width: 8}}", "teacher.train.epochs=2",
                 "student.model={name: own_plugins:TinyNet, kwargs: {width: 4}}", "student.train.epochs=2",
                 "specialists.count=2", "specialists.train.epochs=1"]
    assert main(["run", "--out", str(tmp_path / "run"), *set_args(overrides)]) == 0
    metrics = run_metrics(tmp_path / "run")
    assert {"generalist", "specialists", "generalist_matched", "student", "baseline"} <= set(metrics.models)
    assert metrics.specialists.clustering.ari is not None  # the loader's groups reached the clustering


@pytest.mark.slow
def test_torchvision_resnet18_on_28x28_single_channel_images_for_one_epoch(tmp_path):
    generator = np.random.default_rng(0)
    np.savez(tmp_path / "letters.npz", x_train=generator.integers(0, 256, (48, 28, 28), dtype=np.uint8),
             y_train=np.arange(48) % 3, x_test=generator.integers(0, 256, (12, 28, 28), dtype=np.uint8),
             y_test=np.arange(12) % 3)
    overrides = ["data.name=arrays", f"data.options.path={tmp_path / 'letters.npz'}", "cluster.executor=local",
                 "teacher.model={name: torchvision:resnet18, kwargs: {}}", "teacher.train={epochs: 1, batch_size: 16}",
                 "student.train.epochs=1", "specialists.count=0"]
    assert main(["run", "--out", str(tmp_path / "run"), *set_args(overrides)]) == 0
    metrics = run_metrics(tmp_path / "run")
    assert metrics.models["teacher"].errors + round(metrics.models["teacher"].accuracy * 12) == 12
    assert len(metrics.history["teacher"]) == 1
