"""A specialist: the generalist's architecture with an output per class of its subset plus a dustbin
(docs/method.md section 4, steps 3-5): its initial weights, its training data and its dustbin correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from distill.errors import ConfigError
from distill.streamed import Inputs
from distill.train import predict_logits


def output_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The name and module of the last nn.Linear registered in the model: the layer whose rows are the class
    logits. The rule holds for the built-in models, torchvision's classifiers and any model whose last Linear
    produces its logits directly (docs/own-data.md#models); a model without a Linear is refused."""
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear output layer for specialists to replace")
    return linears[-1]


def penultimate_features(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """The inputs (N, H) of the output layer, in evaluation mode."""
    _, layer = output_layer(model)
    captured = []
    handle = layer.register_forward_hook(lambda module, args, output: captured.append(args[0].detach()))
    try:
        predict_logits(model, inputs)
    finally:
        handle.remove()
    return torch.cat(captured)


def specialist_state(generalist: nn.Module, subset: list[int], features: torch.Tensor,
                     ridge: float = 1e-3) -> dict[str, torch.Tensor]:
    """The state dict of a specialist for `subset` that starts where the generalist is.

    Every layer is the generalist's; the output rows of the subset's classes are copied, so before training the
    specialist's distribution restricted to the subset equals the generalist's. The dustbin row (last) should give
    the log of the generalist's mass on all other classes, logsumexp_{j not in S} z_j, which is not linear in the
    features; it is the least-squares (ridge) fit of that target on `features`, the generalist's penultimate
    features of unlabelled inputs (`penultimate_features`, computed once for all subsets), so the dustbin starts
    consistent with the generalist.
    """
    name, layer = output_layer(generalist)
    others = torch.ones(layer.out_features, dtype=torch.bool)
    others[subset] = False
    with torch.no_grad():
        target = torch.logsumexp(layer(features).double()[:, others], dim=1)
    features = features.double()
    design = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    gram = design.T @ design + ridge * len(design) * torch.eye(design.shape[1], dtype=torch.float64)
    solution = torch.linalg.solve(gram, design.T @ target)
    state = {key: value.detach().clone() for key, value in generalist.state_dict().items()}
    weight, bias = layer.weight.detach(), layer.bias.detach()
    state[f"{name}.weight"] = torch.cat([weight[subset], solution[None, :-1].to(weight)])
    state[f"{name}.bias"] = torch.cat([bias[subset], solution[-1:].to(bias)])
    return state


@dataclass
class SpecialistData:
    """A specialist's training examples (indices into the training set), their labels in the specialist's output
    space (position in the subset, or the dustbin `len(subset)`), and the share of special examples in them."""

    indices: torch.Tensor
    labels: torch.Tensor
    special_share: float


def specialist_data(labels: torch.Tensor, subset: list[int], seed: int) -> SpecialistData:
    """Every training example of the subset's classes, and as many drawn at random (without replacement, with
    `seed`) from the other classes: half from S_m, half from the rest (docs/method.md section 4, step 4).

    The paper does not say whether the rest is redrawn each epoch; here it is one draw, fixed per specialist,
    so a specialist's data (and a resumed training) is reproducible from its seed alone. When the other classes
    have fewer examples than the subset, all of them are used and `special_share` records the actual split.
    """
    labels = labels.cpu()
    special = torch.isin(labels, torch.tensor(subset))
    special_idx, other_idx = special.nonzero().squeeze(1), (~special).nonzero().squeeze(1)
    generator = torch.Generator().manual_seed(seed)
    drawn = other_idx[torch.randperm(len(other_idx), generator=generator)[: len(special_idx)]]
    indices = torch.cat([special_idx, drawn]).sort().values
    return SpecialistData(indices, specialist_labels(labels[indices], subset), len(special_idx) / max(1, len(indices)))


def specialist_labels(labels: torch.Tensor, subset: list[int]) -> torch.Tensor:
    """Labels (N,) in a specialist's output space: the position in `subset`, or the dustbin `len(subset)`."""
    size = max(int(labels.max()), *subset) + 1
    position = torch.full((size,), len(subset), dtype=torch.long, device=labels.device)
    position[subset] = torch.arange(len(subset), device=labels.device)
    return position[labels]


def dustbin_shift(natural_share: float, training_share: float) -> float:
    """The prior-shift correction added to the dustbin logit after training (docs/method.md section 4, step 5).

    A classifier trained with special examples at `training_share` s, applied where they occur at
    `natural_share` f, has dustbin-vs-special log-odds off by log((1 - f) / f) - log((1 - s) / s); with the
    paper's 1/2 this is log((1 - f) / f).
    """
    if not (0 < natural_share < 1 and 0 < training_share < 1):
        raise ValueError(f"shares must be in (0, 1), got natural {natural_share}, training {training_share}")
    return math.log((1 - natural_share) / natural_share) - math.log((1 - training_share) / training_share)


def corrected_logits(logits: torch.Tensor, shift: float) -> torch.Tensor:
    """A specialist's logits (N, |S| + 1) with `shift` added to the dustbin (last) column."""
    corrected = logits.clone()
    corrected[:, -1] += shift
    return corrected
