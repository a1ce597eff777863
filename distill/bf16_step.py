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

For the MLP (a chain of Linear, ReLU and dropout layers) the backward pass is written out (`ChainBf16Step`): the
loss's gradient in closed form, then the same torch operations autograd would run, in the same order, so from the
same loss gradient the same gradients bit for bit, without the autograd engine, `functional_call` and autocast
around them (docs/results.md, "bf16 against fp32": in the last invocation of benchmarks/throughput.py the 800-800
student's bf16 epoch took 0.48 of its fp32 epoch against 0.58 under autograd, the 1200-1200 teacher's 0.42 against
0.52).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn
from torch.func import functional_call

from distill.config import LossWeights
from distill.dropout import BitDropout, mask_scale
from distill.losses import distillation_loss, distillation_loss_gradient, run_loss
from distill.models import MLP
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
    """Forward and backward on persistent bf16 copies of the weights; `update` is the fused SGD step above, from
    the gradients clipped to a total norm of `clip_grad_norm` where one is given."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.SGD, clip_grad_norm: float | None = None):
        self.model, self.optimizer, self.clip_grad_norm = model, optimizer, clip_grad_norm
        self.params = dict(model.named_parameters())
        self.copies = {name: p.detach().to(torch.bfloat16).requires_grad_(p.requires_grad)
                       for name, p in self.params.items()}
        caps = model.row_norm_caps() if hasattr(model, "row_norm_caps") else {}
        self.caps = {name: caps.get(name, 0.0) for name in self.params}
        self.schedule_told = False

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # casts the batch and anything outside the weights
            return functional_call(self.model, self.copies, (batch,))

    loss = staticmethod(run_loss)

    def gradients(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """The bf16 gradient of each weight the loss reaches."""
        for copy in self.copies.values():
            copy.grad = None
        loss.backward()
        # None where frozen, or unused by this loss: torch's SGD leaves those weights alone too.
        return {name: copy.grad for name, copy in self.copies.items() if copy.grad is not None}

    def update(self, loss: torch.Tensor) -> None:
        group = self.optimizer.param_groups[0]
        grads = self.gradients(loss)
        scale = clip_scale(grads.values(), self.clip_grad_norm)
        for name, grad in grads.items():
            param = self.params[name]
            state = self.optimizer.state[param]
            first = state.get("momentum_buffer") is None
            if first:
                state["momentum_buffer"] = torch.empty_like(param)
            kernels().sgd_step(param, state["momentum_buffer"], grad, self.copies[name], float(group["lr"]),
                               group["momentum"], group["nesterov"], group["weight_decay"], self.caps[name], first,
                               scale)
        if not self.schedule_told:
            # The weights hold no gradients, so this changes nothing: a learning-rate schedule checks, at its first
            # step, that the optimizer stepped before it (it warns otherwise). Once per epoch, not per step: amid
            # the step's matrix products this no-op took 0.12 ms of the student's 2.7 ms.
            self.optimizer.step()
            self.schedule_told = True


def clip_scale(grads: Collection[torch.Tensor], max_norm: float | None) -> float:
    """The factor torch.nn.utils.clip_grad_norm_ scales gradients by: max_norm / (their total L2 norm + 1e-6), at
    most 1; 1 without a max_norm. The norms are summed in fp32 (bf16 ones would be only three digits exact), so the
    factor is the autocast path's up to rounding. A NaN norm gives 1: the NaN reaches the weights either way."""
    if max_norm is None or not grads:
        return 1.0
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))
    return min(1.0, max_norm / (norm.item() + 1e-6))


def layer_chain(model: nn.Module) -> list[nn.Module] | None:
    """The layers after the leading Flatten of the built-in MLP (or of an nn.Sequential) when all are Linear, ReLU
    or BitDropout: a model whose backward pass ChainBf16Step writes out. None for any other model."""
    net = model.net if type(model) is MLP else model if type(model) is nn.Sequential else None
    if type(net) is not nn.Sequential or not len(net):
        return None
    flatten, *layers = net
    if type(flatten) is not nn.Flatten or (flatten.start_dim, flatten.end_dim) != (1, -1):
        return None
    if not any(type(layer) is nn.Linear for layer in layers) or \
            not all(type(layer) in (nn.Linear, nn.ReLU, BitDropout) for layer in layers):
        return None
    return layers


def casts_inputs_first(model: nn.Module) -> bool:
    """Whether the written-out step's first operation is the cast of its inputs to bf16: a layer chain that starts
    with a linear layer (dropout on the inputs scales them in fp32 first)."""
    layers = layer_chain(model)
    return layers is not None and type(layers[0]) is nn.Linear


class ChainBf16Step(FusedBf16Step):
    """FusedBf16Step for a `layer_chain` model, its forward and backward passes written out: the operations autocast
    and autograd run for each layer (addmm on the bf16 copies; in-place ReLU and its threshold_backward; the dropout
    mask again from its seed), in their order, so that from the same gradient of the loss they reach the gradients
    of FusedBf16Step bit for bit. The loss's gradient is in closed form (distill.losses.distillation_loss_gradient):
    autograd's up to float rounding."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.SGD, layers: list[nn.Module],
                 clip_grad_norm: float | None = None):
        super().__init__(model, optimizer, clip_grad_norm)
        prefix = {module: name for name, module in model.named_modules()}
        self.layers = [(layer, f"{prefix[layer]}.") for layer in layers]
        # The backward pass ends there: the input needs no gradient.
        self.first_linear = next(layer for layer in layers if type(layer) is nn.Linear)
        self.tape: list[tuple[nn.Module, str, object]] = []
        self.logits_grad: torch.Tensor | None = None

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        h = batch.flatten(1)
        self.tape = []
        for layer, prefix in self.layers:
            if type(layer) is nn.Linear:
                h = h.to(torch.bfloat16)  # autocast's cast of a linear layer's input
                self.tape.append((layer, prefix, h))
                weight, bias = self.copies[prefix + "weight"], self.copies.get(prefix + "bias")
                h = h.mm(weight.t()) if bias is None else torch.addmm(bias, h, weight.t())
            elif type(layer) is nn.ReLU:
                h = torch.relu_(h) if layer.inplace else torch.relu(h)
                self.tape.append((layer, prefix, h))
            elif layer.training and layer.p:
                seed = layer.draw_seed()
                self.tape.append((layer, prefix, seed))
                h = mask_scale(h, seed, layer.threshold, layer.p)
        return h.float()

    @torch.no_grad()
    def loss(self, logits: torch.Tensor, teacher_probs: torch.Tensor | None, labels: torch.Tensor,
             weights: LossWeights) -> torch.Tensor:
        """The loss without a graph; its gradient, kept for `gradients`, in closed form: about 4 % of a bf16 epoch
        of the 800-800 student and of the 1200-1200 teacher against autograd's (paired part-epochs of one probe)."""
        args = (teacher_probs, labels, weights.temperature, weights.w_soft, weights.w_hard)
        self.logits_grad = distillation_loss_gradient(logits, *args)
        return distillation_loss(logits, *args)

    @torch.no_grad()
    def _backward(self, grad: torch.Tensor) -> dict[str, torch.Tensor]:
        grads = {}
        for layer, prefix, saved in reversed(self.tape):
            if type(layer) is nn.Linear:
                # autograd's addmm backward: the weight's gradient as grad^T @ input (the weight enters transposed),
                # the bias's as the batch sum. grad^T is copied out first: torch.mm gives the same numbers on that
                # copy as on the transposed view, in less time with the copy (the 1200-1200 MLP's bf16 epoch: 0.46
                # of its fp32 epoch against 0.51, paired epochs of one probe). The sum stays torch's: a sum in
                # another order, fused into that copy, differed from it in the last bit where terms cancel.
                if self.params[prefix + "weight"].requires_grad:
                    grads[prefix + "weight"] = kernels().transpose_bf16(grad).mm(saved)
                if prefix + "bias" in self.params and self.params[prefix + "bias"].requires_grad:
                    grads[prefix + "bias"] = grad.sum(0)
                if layer is self.first_linear:
                    break
                grad = grad.mm(self.copies[prefix + "weight"])
            elif type(layer) is nn.ReLU:
                grad = torch.ops.aten.threshold_backward(grad, saved, 0)
            else:
                grad = mask_scale(grad, saved, layer.threshold, layer.p)
        self.tape = []
        return grads

    def gradients(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """From the gradient `loss` kept: the loss itself has no graph."""
        return self._backward(self.logits_grad.to(torch.bfloat16))  # the backward of the cast to fp32


def fused_step(model: nn.Module, optimizer: torch.optim.SGD, clip_grad_norm: float | None = None) -> FusedBf16Step:
    """The fused step for a `fusable` model: with the backward pass written out where the model is a layer chain."""
    layers = layer_chain(model)
    return (FusedBf16Step(model, optimizer, clip_grad_norm) if layers is None
            else ChainBf16Step(model, optimizer, layers, clip_grad_norm))
