import pytest
import torch

from distill.errors import ConfigError
from distill.models import create_model, freeze, model_names
from distill.seed import derive_seed, set_seed


def test_registry_lists_both_architectures():
    assert {"mlp", "cnn"} <= set(model_names())


@pytest.mark.parametrize("name, kwargs", [("mlp", {"hidden": [16, 8]}), ("cnn", {"channels": [4, 8], "hidden": 16})])
def test_models_map_images_to_logits(name, kwargs):
    model = create_model(name, 7, (1, 28, 28), **kwargs)
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 7)


def test_unknown_model_and_argument_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        create_model("resnet", 10, (1, 28, 28))
    with pytest.raises(ConfigError, match="unknown argument 'width'"):
        create_model("mlp", 10, (1, 28, 28), width=3)


def test_max_norm_caps_every_unit_incoming_weights():
    model = create_model("mlp", 3, (20,), hidden=[10], max_norm=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(100)
    model.apply_constraints()
    for layer in model.net:
        if isinstance(layer, torch.nn.Linear):
            assert layer.weight.norm(dim=1).max().item() <= 0.5 + 1e-6


def test_freeze_stops_gradients_and_dropout():
    model = freeze(create_model("mlp", 3, (20,), hidden=[10], dropout_hidden=0.5))
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.rand(4, 20)
    torch.testing.assert_close(model(x), model(x))


def test_set_seed_validates_and_returns():
    assert set_seed(123) == 123
    a = torch.rand(3)
    set_seed(123)
    torch.testing.assert_close(torch.rand(3), a)
    for bad in (-1, 2**32, 1.5, "3", True):
        with pytest.raises(ConfigError):
            set_seed(bad)


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "member_0") == derive_seed(0, "member_0")
    assert len({derive_seed(0, f"member_{i}") for i in range(50)}) == 50
    assert derive_seed(0, "student") != derive_seed(1, "student")
    assert derive_seed(7, "x") == 3944063196  # fixed across processes and Python versions (sha256-based)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_bit_dropout_keeps_the_rate_and_the_expectation(p):
    from distill.models import BitDropout

    layer = BitDropout(p)
    x = torch.ones(400, 1000)
    y = layer(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.003)
    assert y[y != 0].unique().tolist() == pytest.approx([1 / (1 - p)])
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    layer.eval()
    assert layer(x) is x


def test_bit_dropout_masks_differ_between_calls_and_elements():
    from distill.models import BitDropout

    layer = BitDropout(0.5)
    a, b = layer(torch.ones(64, 64)), layer(torch.ones(64, 64))
    assert not torch.equal(a, b)
    for lane in range(4):  # each 64-bit word feeds four neighbouring elements: every lane keeps the rate
        assert 0.4 < (a[:, lane::4] == 0).float().mean() < 0.6
