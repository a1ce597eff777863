"""The bf16 training step on the CPU with the weight update fused into one pass per weight.

Under `torch.autocast` every step casts each fp32 weight to bf16 for the forward pass and each bf16 weight gradient
back to fp32 for the update; then the optimizer, the max-norm constraint and the next step's cast each read and
write the weights again. For an MLP on a CPU these passes are bound by memory bandwidth and cost as much as the
bf16 matrix products themselves (docs/results.md, "bf16 against fp32"). Here the forward and backward passes run on
bf16 copies of the weights that persist between steps, and one C++ loop per weight reads the bf16 gradient,
applies SGD with (Nesterov) momentum and weight decay to the fp32 weight and its momentum, caps each row's norm
(max-norm) and writes the bf16 copy the next step uses: one read and one write of each array instead of four.

The arithmetic is torch's SGD and `renorm_` in fp32; the weights, the momentum (in the optimizer's state, where
torch keeps it) and so checkpoints and resumes are those of the autocast path. The loop (`sgd_step` in
distill/native.py) is compiled on first use; where that fails, training takes the autocast path.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from distill.native import kernels


def fused_step_available() -> bool:
    return kernels() is not None


def fusable(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> bool:
    """Whether `model` can train with the fused step: on a CPU, dense fp32 parameters, SGD with momentum in one
    group, and no constraint other than a row-norm cap it declares (`row_norm_caps`)."""
    params, groups = list(model.parameters()), optimizer.param_groups
    return (device.type == "cpu" and isinstance(optimizer, torch.optim.SGD) and len(groups) == 1
            and len(groups[0]["params"]) == len(params) and all(a is b for a, b in zip(groups[0]["params"], params))
            and groups[0]["momentum"] > 0 and groups[0]["dampening"] == 0
            and not groups[0]["maximize"]
            and all(p.dtype == torch.float32 and p.is_contiguous() for p in params)
            and (not hasattr(model, "apply_constraints") or hasattr(model, "row_norm_caps"))
            and fused_step_available())


class FusedBf16Step:
    """Forward and backward on persistent bf16 copies of the weights; `update` is the fused SGD step above."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.SGD):
        self.model, self.optimizer = model, optimizer
        self.params = dict(model.named_parameters())
        self.copies = {name: p.detach().to(torch.bfloat16).requires_grad_(p.requires_grad)
                       for name, p in self.params.items()}
        caps = model.row_norm_caps() if hasattr(model, "row_norm_caps") else {}
        self.caps = {name: caps.get(name, 0.0) for name in self.params}

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # casts the batch and anything outside the weights
            return functional_call(self.model, self.copies, (batch,))

    def update(self, loss: torch.Tensor) -> None:
        for copy in self.copies.values():
            copy.grad = None
        loss.backward()
        group = self.optimizer.param_groups[0]
        for name, param in self.params.items():
            if self.copies[name].grad is None:  # frozen, or unused by this loss: torch's SGD leaves it too
                continue
            state = self.optimizer.state[param]
            first = state.get("momentum_buffer") is None
            if first:
                state["momentum_buffer"] = torch.empty_like(param)
            kernels().sgd_step(param, state["momentum_buffer"], self.copies[name].grad, self.copies[name],
                               float(group["lr"]), group["momentum"], group["nesterov"], group["weight_decay"],
                               self.caps[name], first)
        # The weights themselves hold no gradients, so this step changes nothing; it is the step a learning-rate
        # schedule counts (it warns when stepped without one).
        self.optimizer.step()
