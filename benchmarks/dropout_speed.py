"""Dropout masks hashed in one C++ pass (distill/dropout.py) against the same masks from torch operations and
against torch's nn.Dropout, per call and per teacher epoch.

    python benchmarks/dropout_speed.py [--calls 300] [--epochs 3] [--out benchmarks/results]

Per call: forward and backward of dropout at p = 0.5 on a 128 x 1200 batch (a hidden layer of the 1200-1200
teacher at batch 128) in fp32 and bf16, the median over `--calls` calls, the three ways interleaved call by call.
Per epoch: the teacher of benchmarks/throughput.py (dropout 0.2 on the inputs and 0.5 on both hidden layers,
max-norm, 2-pixel jitter) for one epoch in each precision as training runs it, with the kernel and with the torch
operations (the kernel switched off), interleaved epoch by epoch. The results are the ratios within this one
invocation. Results: benchmarks/results/dropout_speed.json.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from unittest import mock

import torch
from torch import nn

from distill import dropout
from distill.config import TrainConfig
from distill.dropout import BitDropout
from distill.memory import retain_freed_memory
from distill.train import HARD_LABELS
from distillery.benchmark import parser, write_result
from throughput import BATCH, N, TEACHER, time_epoch

SHAPE = (BATCH, 1200)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--calls", type=int, default=300, help="timed calls per way and dtype (median kept)")
    arguments.add_argument("--epochs", type=int, default=3, help="timed teacher epochs per way and precision")
    args = arguments.parse_args()
    retain_freed_memory()  # as distill.train.train does
    if dropout.kernels() is None:
        raise SystemExit("dropout_speed: the dropout kernel cannot be built here; nothing to compare")
    without_kernel = mock.patch.object(dropout, "kernels", lambda: None)
    results = {"shape": list(SHAPE), "p": 0.5, "per_call_us": {}, "teacher_epoch_seconds": {}}
    for name, dtype in DTYPES.items():
        x, grad = torch.randn(SHAPE, dtype=dtype), torch.randn(SHAPE, dtype=dtype)
        ways = {"kernel": (BitDropout(0.5), None), "torch_operations": (BitDropout(0.5), without_kernel),
                "nn.Dropout": (nn.Dropout(0.5), None)}
        microseconds = {way: [] for way in ways}
        for _ in range(args.calls):
            for way, (layer, patch) in ways.items():
                with patch or contextlib.nullcontext():
                    microseconds[way].append(_forward_backward_us(layer, x, grad))
        results["per_call_us"][name] = {way: statistics.median(values) for way, values in microseconds.items()}
        print(f"dropout forward + backward, {SHAPE[0]} x {SHAPE[1]} {name}: " + ", ".join(
            f"{way} {us:.0f} us" for way, us in results["per_call_us"][name].items()))
    inputs, labels = torch.rand(N, 1, 28, 28), torch.randint(0, 10, (N,))
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.05, augment_shift=2)
    for precision in DTYPES:
        seconds = {"kernel": [], "torch_operations": []}
        for _ in range(args.epochs):
            seconds["kernel"].append(time_epoch(TEACHER, config, HARD_LABELS, inputs, labels, precision=precision))
            with without_kernel:
                seconds["torch_operations"].append(
                    time_epoch(TEACHER, config, HARD_LABELS, inputs, labels, precision=precision))
        ratio = statistics.median(k / t for k, t in zip(seconds["kernel"], seconds["torch_operations"]))
        results["teacher_epoch_seconds"][precision] = {**seconds, "kernel_over_torch_operations": ratio}
        print(f"teacher epoch {precision}: kernel {statistics.median(seconds['kernel']):.2f} s, torch operations "
              f"{statistics.median(seconds['torch_operations']):.2f} s, ratio (median of paired epochs) {ratio:.2f}")
    write_result(args.out, "dropout_speed", results)


def _forward_backward_us(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    x = x.detach().requires_grad_()
    started = time.perf_counter()
    layer(x).backward(grad)
    return (time.perf_counter() - started) * 1e6


if __name__ == "__main__":
    main()
