"""Numeric precision of a model's matrix products: fp32, or bf16 where the hardware has fast bf16 matrix units.

bf16 runs a model's forward and backward matrix products in bfloat16 under `torch.autocast`, with fp32 master
weights (the optimizer, the weights saved in checkpoints and the loss stay fp32). `auto` picks bf16 only where the
device multiplies bf16 matrices natively: a CPU with AMX or AVX-512 BF16 instructions, a CUDA device that supports
bf16. Elsewhere bf16 is emulated and slower than fp32, so `auto` picks fp32 there. The choice is made where a model
trains (each worker of a cluster decides for itself) and recorded with the model.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from distill.config import Precision

ComputePrecision = str  # "fp32" or "bf16": a resolved Precision, never "auto"


def bf16_matrix_units(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware (AMX or AVX-512 BF16 on a CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def resolve_precision(setting: Precision, device: torch.device,
                      has_units: Callable[[torch.device], bool] = bf16_matrix_units) -> ComputePrecision:
    """The precision a model trains in on `device`: the setting, with `auto` decided by the hardware."""
    if setting == "auto":
        return "bf16" if has_units(device) else "fp32"
    return setting


def autocast(precision: ComputePrecision, device: torch.device):
    """The context a forward pass in `precision` runs in (nothing to do for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
