"""Inverted dropout with masks hashed from one seed per call, in one pass forward and one backward.

torch's CPU `bernoulli_` and `randint` run the Mersenne Twister one number at a time (17 and 2 ns per mask entry
here): the masks of a 1200-1200 MLP took about 0.8 of the 7 ms of its bf16 training step. Here each call draws one
64-bit seed from torch's CPU generator (whose state checkpoints keep, so it decides every mask) and the mask's
random words are SplitMix64 (Steele, Lea and Flood, 2014) of the seed at each word's position: a counter-based
generator, computed in parallel and in vector registers, independent of how the work is split between threads. Each
64-bit word gives four 16-bit uniforms; an element is kept when its signed 16-bit uniform is at least `threshold`,
so the rate is `round(p * 65536) / 65536` (0.2 becomes 0.20001): nn.Dropout's distribution up to that rounding.

A C++ kernel (distill/native.py) makes the words, the mask and the product in one pass, and the backward pass is
the same pass on the gradient (the mask is computed again from the seed, never stored). Where the kernel cannot
be built, and on a GPU, the same words and the same products come from torch operations: a seed gives the same
model with or without the kernel.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from distill.native import kernels

_GAMMA, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 torch stores it."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 words (torch's >> keeps the sign)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def random_words(seed: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Words 0..count-1 of the SplitMix64 stream `seed`, as int64: the kernel's words, from torch operations
    (int64 arithmetic wraps around as the kernel's uint64 does)."""
    z = torch.arange(1, count + 1, dtype=torch.int64, device=device) * _signed(_GAMMA) + _signed(seed % (1 << 64))
    z = (z ^ _shift_right(z, 30)) * _signed(_MIX1)
    z = (z ^ _shift_right(z, 27)) * _signed(_MIX2)
    return z ^ _shift_right(z, 31)


class _MaskedScale(torch.autograd.Function):
    """x * mask: forward and backward are the same pass (the mask does not depend on x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, seed: int, threshold: int, p: float) -> torch.Tensor:
        ctx.mask = seed, threshold, p
        return mask_scale(x, seed, threshold, p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return mask_scale(grad, *ctx.mask), None, None, None


def mask_scale(x: torch.Tensor, seed: int, threshold: int, p: float) -> torch.Tensor:
    """x with the elements whose uniform (of the stream of int64 `seed`) is below `threshold` zeroed and the rest
    scaled by 1 / (1 - p): with the kernel where it applies, else with torch operations; both give the same values."""
    kernel = kernels() if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) else None
    if kernel is not None:
        return kernel.dropout_mask_scale(x.contiguous(), seed, threshold, _scale(x.dtype, p))
    words = random_words(seed, (x.numel() + 3) // 4, x.device)
    keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= threshold
    # Through uint8: torch converts bool to bf16 element by element (90 us for a 128 x 1200 batch here), uint8
    # with vector instructions (13 us); the values are the same 0s and 1s.
    return x * keep.view(torch.uint8).to(x.dtype).mul_(1.0 / (1.0 - p))


@functools.cache
def _scale(dtype: torch.dtype, p: float) -> float:
    """1 / (1 - p) as torch computes it in `dtype` in mask_scale's torch operations, so that both paths multiply
    by the same number (cached: it is asked for twice per layer and step)."""
    return torch.ones((), dtype=dtype).mul_(1.0 / (1.0 - p)).item()


class BitDropout(nn.Module):
    """Inverted dropout at rate `p` (module docstring: its masks and their rate)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = -(2**15) + round(p * 2**16)  # a signed 16-bit uniform below this is dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return _MaskedScale.apply(x, self.draw_seed(), self.threshold, self.p)

    def draw_seed(self) -> int:
        """The seed of one call's mask. From the CPU's generator wherever x is: a number read back from a GPU would
        wait for it. randint's upper bound is exclusive: one 64-bit seed in 2**64 never occurs."""
        return int(torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"p={self.p}"
