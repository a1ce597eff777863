"""The bf16 training step on the CPU with the weight update fused into one pass per weight.

Under `torch.autocast` every step casts each fp32 weight to bf16 for the forward pass and each bf16 weight gradient
back to fp32 for the update; then the optimizer, the max-norm constraint and the next step's cast each read and
write the weights again. For an MLP on a CPU these passes are bound by memory bandwidth and cost as much as the
bf16 matrix products themselves (docs/results.md, "bf16 against fp32"). Here the forward and backward passes run on
bf16 copies of the weights that persist between steps, and one C++ loop per weight reads the bf16 gradient,
applies SGD with (Nesterov) momentum and weight decay to the fp32 weight and its momentum, caps each row's norm
(max-norm) and writes the bf16 copy the next step uses: one read and one write of each array instead of four.

The arithmetic is torch's SGD and `renorm_` in fp32; the weights, the momentum (in the optimizer's state, where
torch keeps it) and so checkpoints and resumes are those of the autocast path. The loop is compiled on first use
(distill/native.py); where that fails, training takes the autocast path.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from distill.native import BF16_HELPERS, load_kernel

_SOURCE = BF16_HELPERS + r"""
#include <cmath>

// One row: d = g + decay w; m = d (first step) or mu m + d; w -= lr (d + mu m) with Nesterov, lr m without; a row
// whose norm exceeds cap > 0 is scaled to cap / (norm + 1e-7) of itself (torch.renorm); copy = bf16(w). The
// choices are template arguments: as runtime selects inside the loop they made it four times slower.
template <bool First, bool Nesterov, bool Decay>
static void sgd_row(float* __restrict w, float* __restrict m, const uint16_t* __restrict g, uint16_t* __restrict c,
                    int64_t n, float lr, float mu, float decay, float cap) {
  float squares = 0.f;
  #pragma omp simd reduction(+:squares)
  for (int64_t k = 0; k < n; ++k) {
    const float d = Decay ? from_bf16(g[k]) + decay * w[k] : from_bf16(g[k]);  // as torch: no 0 * inf
    const float mk = First ? d : mu * m[k] + d;
    m[k] = mk;
    const float wk = w[k] - lr * (Nesterov ? d + mu * mk : mk);
    w[k] = wk;
    squares += wk * wk;
  }
  const float norm = std::sqrt(squares);
  if (cap > 0.f && norm > cap) {
    const float scale = cap / (norm + 1e-7f);
    #pragma omp simd
    for (int64_t k = 0; k < n; ++k) w[k] *= scale;
  }
  #pragma omp simd
  for (int64_t k = 0; k < n; ++k) c[k] = to_bf16(w[k]);
}

template <bool First, bool Nesterov, bool Decay>
static void sgd_rows(float* w, float* m, const uint16_t* g, uint16_t* c, int64_t rows, int64_t cols, float lr,
                     float mu, float decay, float cap) {
  at::parallel_for(0, rows, 1, [=](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      sgd_row<First, Nesterov, Decay>(w + r * cols, m + r * cols, g + r * cols, c + r * cols, cols, lr, mu, decay,
                                      cap);
    }
  });
}

// One SGD step on an fp32 weight, its rows capped at max_norm when > 0 (a weight of fewer than 2 dimensions is
// one row).
void sgd_step(torch::Tensor weight, torch::Tensor momentum, torch::Tensor grad, torch::Tensor copy, double lr,
              double mu, bool nesterov, double decay, double max_norm, bool first) {
  for (const auto& t : {weight, momentum, grad, copy}) {
    TORCH_CHECK(t.is_contiguous() && t.numel() == weight.numel(), "sgd_step: tensors must be contiguous, one shape");
  }
  TORCH_CHECK(weight.scalar_type() == at::kFloat && momentum.scalar_type() == at::kFloat &&
              grad.scalar_type() == at::kBFloat16 && copy.scalar_type() == at::kBFloat16, "sgd_step: dtypes");
  const int64_t rows = weight.dim() < 2 ? 1 : weight.size(0);
  const int64_t cols = weight.numel() / rows;
  float* w = weight.data_ptr<float>();
  float* m = momentum.data_ptr<float>();
  const uint16_t* g = reinterpret_cast<const uint16_t*>(grad.data_ptr<at::BFloat16>());
  uint16_t* c = reinterpret_cast<uint16_t*>(copy.data_ptr<at::BFloat16>());
  const float args[] = {float(lr), float(mu), float(decay), float(max_norm)};
  const int variant = (first ? 4 : 0) + (nesterov ? 2 : 0) + (decay != 0.0 ? 1 : 0);
  switch (variant) {
    case 0: sgd_rows<false, false, false>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3]); break;
    case 1: sgd_rows<false, false, true>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3]); break;
    case 2: sgd_rows<false, true, false>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3]); break;
    case 3: sgd_rows<false, true, true>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3]); break;
    case 4: sgd_rows<true, false, false>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3]); break;
    case 5: sgd_rows<true, false, true>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3]); break;
    case 6: sgd_rows<true, true, false>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3]); break;
    default: sgd_rows<true, true, true>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3]); break;
  }
}
"""


def _kernel():
    return load_kernel("fused_bf16_update", _SOURCE, ("sgd_step",), "bf16 training uses torch.autocast")


def fused_step_available() -> bool:
    return _kernel() is not None


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
            _kernel().sgd_step(param, state["momentum_buffer"], self.copies[name].grad, self.copies[name],
                               float(group["lr"]), group["momentum"], group["nesterov"], group["weight_decay"],
                               self.caps[name], first)
        # The weights themselves hold no gradients, so this step changes nothing; it is the step a learning-rate
        # schedule counts (it warns when stepped without one).
        self.optimizer.step()
