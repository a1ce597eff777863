"""A user's own data set and model, as plug-ins name them: "own_plugins:blobs", "own_plugins:TinyNet"."""

import torch
from torch import nn

from distill.data import Dataset


def blobs(classes: int = 3, per_class: int = 20, seed: int = 0) -> Dataset:
    """Gaussian blobs in 8 dimensions around one centre per class."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 8, generator=generator) * 3
    labels = torch.arange(classes).repeat_interleave(per_class)
    inputs = centres[labels] + torch.randn(len(labels), 8, generator=generator)
    return Dataset("blobs", inputs[::2], labels[::2], inputs[1::2], labels[1::2], classes,
                   groups=torch.arange(classes) % 2)


def wrong_labels() -> Dataset:
    data = blobs()
    return Dataset("wrong", data.x_train, data.y_train + 5, data.x_test, data.y_test, 3)


def not_a_dataset() -> dict:
    return {"x_train": []}


class TinyNet(nn.Module):
    """One hidden layer; its last Linear gives the logits, so specialists can replace its rows."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def wrong_width(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return nn.Linear(5, num_classes)  # does not take the data's 8 features
