"""Architectures: a registry, `create_model(name, num_classes, **kwargs)`, and explicit freezing of teachers."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from distill.config import check_arguments
from distill.dropout import BitDropout
from distill.errors import ConfigError
from distill.plugins import is_plugin, load_plugin

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = builder
        return builder
    return decorator


def model_names() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """Build an architecture (docs/own-data.md#models): a registered name, "torchvision:NAME" (any torchvision
    classification model, adapted to the data, no pretrained weights) or "package.module:Builder" (the user's
    callable taking num_classes, input_shape and its kwargs). Unknown names and arguments are config errors."""
    if name.startswith("torchvision:"):
        return torchvision_model(name.removeprefix("torchvision:"), num_classes, tuple(input_shape), **kwargs)
    if is_plugin(name):
        builder = load_plugin(name, "model.name")
    elif name in _MODELS:
        builder = _MODELS[name]
    else:
        raise ConfigError(f"unknown model '{name}' in model.name (known: {', '.join(model_names())}, "
                          "torchvision:NAME or package.module:Builder)")
    check_arguments(builder, kwargs, {"num_classes", "input_shape"}, "argument", f"in model.kwargs for '{name}'")
    model = builder(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name={name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


SMALL_IMAGE = 64  # below this side, a torchvision model's stem is the CIFAR one: 3 x 3, stride 1, no max-pool

# A model with this attribute set to True trains on channels-last (NHWC) weights and batches (distill.train
# .image_layout). Opt-in: the built-in CNN and torchvision's models are written for it, while a user's model that
# flattens with .view() fails on channels-last tensors.
CHANNELS_LAST = "trains_channels_last"


def torchvision_model(name: str, num_classes: int, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """torchvision's classification model `name` with `num_classes` outputs and random weights (nothing is
    downloaded), adapted to the data: the first Conv2d takes the data's channels, and on images under 64 pixels
    it becomes 3 x 3 with stride 1 and a `maxpool` attribute (ResNet's stem) is removed, as ResNets are run on
    CIFAR; without that, 28 x 28 inputs shrink to 1 x 1 before the last block."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"model.name='torchvision:{name}': torchvision has no classification model {name!r}")
    if len(input_shape) != 3:
        raise ConfigError(f"model 'torchvision:{name}' needs image inputs (C x H x W), got input shape {input_shape}")
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model 'torchvision:{name}' with kwargs {kwargs}: {error}") from None
    stem_name, stem = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if stem is None:
        raise ConfigError(f"model 'torchvision:{name}' has no Conv2d to adapt to images")
    small = max(input_shape[1:]) < SMALL_IMAGE
    if small or stem.in_channels != input_shape[0]:
        kernel, stride, padding = ((3, 3), (1, 1), (1, 1)) if small else (stem.kernel_size, stem.stride, stem.padding)
        replacement = nn.Conv2d(input_shape[0], stem.out_channels, kernel, stride, padding, bias=stem.bias is not None)
        model.set_submodule(stem_name, replacement)
        if small and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
            model.maxpool = nn.Identity()
    setattr(model, CHANNELS_LAST, True)
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Make `model` a teacher: evaluation mode, no gradients."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@register_model("mlp")
class MLP(nn.Module):
    """ReLU MLP with dropout on inputs and hidden units, and an optional max-norm constraint.

    Max-norm (Srivastava et al., 2014) caps the L2 norm of each hidden unit's incoming weights at `max_norm`
    after every optimiser step; `apply_constraints` is that step.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], hidden: list[int] = (800, 800),
                 dropout_input: float = 0.0, dropout_hidden: float = 0.0, max_norm: float | None = None):
        super().__init__()
        for name, rate in (("dropout_input", dropout_input), ("dropout_hidden", dropout_hidden)):
            _check_rate(name, rate)
        if max_norm is not None and not (_is_number(max_norm) and 0 < max_norm < math.inf):
            raise ConfigError(f"max_norm must be a number > 0, got {max_norm!r}")
        widths = [math.prod(input_shape), *_sizes("hidden", hidden)]
        layers: list[nn.Module] = [nn.Flatten()]
        if dropout_input:
            layers.append(BitDropout(dropout_input))
        for fan_in, fan_out in zip(widths, widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU(inplace=True)]
            if dropout_hidden:
                layers.append(BitDropout(dropout_hidden))
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)
        self.max_norm = max_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def row_norm_caps(self) -> dict[str, float]:
        """Parameter name -> the largest L2 norm one of its rows (a unit's incoming weights) may have."""
        if self.max_norm is None:
            return {}
        return {f"net.{i}.weight": self.max_norm for i, layer in enumerate(self.net) if isinstance(layer, nn.Linear)}

    @torch.no_grad()
    def apply_constraints(self) -> None:
        params = dict(self.named_parameters())
        for name, cap in self.row_norm_caps().items():
            params[name].renorm_(p=2, dim=0, maxnorm=cap)


@register_model("cnn")
def small_cnn(num_classes: int, input_shape: tuple[int, ...], channels: list[int] = (32, 64), hidden: int = 128,
              dropout: float = 0.0) -> nn.Module:
    """Two conv-conv-pool blocks and a linear head, for 28 x 28 (or any small) single-channel images."""
    if len(input_shape) != 3:
        raise ConfigError(f"model 'cnn' needs image inputs (C x H x W), got input shape {input_shape}")
    (hidden,) = _sizes("hidden", [hidden])
    _check_rate("dropout", dropout)
    layers: list[nn.Module] = []
    in_channels = input_shape[0]
    for out_channels in _sizes("channels", channels):
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
                   nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        in_channels = out_channels
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(in_channels * 4, hidden), nn.ReLU(inplace=True),
               nn.Dropout(dropout), nn.Linear(hidden, num_classes)]
    model = nn.Sequential(*layers)
    setattr(model, CHANNELS_LAST, True)
    return model


def _sizes(name: str, values) -> list[int]:
    """Layer widths or channel counts: whole numbers >= 1. A zero-width layer builds and trains, to chance level,
    without any error: it has to be refused here."""
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                        for v in values):
        raise ConfigError(f"{name} must be " + ("whole numbers >= 1" if isinstance(values, (list, tuple)) else
                                               "a list of whole numbers >= 1") + f", got {values!r}")
    return list(values)


def _check_rate(name: str, rate) -> None:
    if not (_is_number(rate) and 0 <= rate < 1):
        raise ConfigError(f"{name} must be a number in [0, 1), got {rate!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
