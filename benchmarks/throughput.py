"""Training throughput in fp32 and bf16 against the same process's GEMM rate, and a distillation epoch against a
plain one.

    python benchmarks/throughput.py [--epochs 3] [--precisions fp32 bf16] [--out benchmarks/results]

For the paper's 1200-1200 teacher (dropout, max-norm, 2-pixel jitter) and 800-800 student at batch 128 on
MNIST-shaped data, in each precision, it reports the epoch time and the achieved training FLOP/s (the GEMM work of
forward and backward, counted exactly) as a share of the FLOP/s that torch.mm reaches on the very same matrix
shapes in that precision, in this process; then the bf16 epoch over the fp32 epoch. bf16 is timed three times: as
training runs it (distill/bf16_step.py: the fused update, and for these MLPs the backward pass written out; the
student's inputs cast to bf16 once per run, before its first epoch, as distill.train.train does), with
the fused update under torch's autograd (`bf16_autograd`, before the written-out backward) and with torch's
autocast step (`bf16_autocast`, before the fused update). It also times a student epoch
on cached soft targets (T = 20) against a hard-label epoch of the same student. For the small CNN (`cnn`, 32-64
channels) it times a part epoch of 12,800 images in each precision in the channels-last layout training uses, and
in the usual layout for comparison. Ratios, not wall times, are the results: both sides of each ratio run in the
same process, interleaved epoch by epoch. Last, where a teacher step's time goes in each precision: the same
steps timed with one more stage of the step each time (batch and jitter, forward, loss and backward, update,
max-norm), on the autocast path.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from unittest import mock

import torch

from distill.bf16_step import fused_step_available
from distill.config import LossWeights, TrainConfig
from distill.data import augment_batch
from distill.losses import distillation_loss
from distill.memory import retain_freed_memory
from distill.models import create_model
from distill.precision import autocast, bf16_matrix_units
import distill.bf16_step
import distill.train
from distill.train import HARD_LABELS, SoftTargets, make_optimizer, make_schedule, train_epoch
from distillery.benchmark import parser, write_result

N, BATCH, INPUT = 60_000, 128, 784
CNN_ROWS = 12_800  # a part epoch: the CNN's full epoch takes half a minute here
STAGE_ROWS = 12_800
STAGES = ["batch and jitter", "forward", "loss and backward", "update", "max-norm"]
CPU = torch.device("cpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16_autograd": torch.bfloat16,
          "bf16_autocast": torch.bfloat16}
TEACHER = {"hidden": [1200, 1200], "dropout_input": 0.2, "dropout_hidden": 0.5, "max_norm": 3.5}
STUDENT = {"hidden": [800, 800]}


def training_flops_per_example(widths: list[int]) -> int:
    """Forward (2 d_i d_o), weight gradient (2 d_i d_o) and input gradient (2 d_i d_o, none for the first layer)."""
    layers = list(zip(widths, widths[1:]))
    return 6 * sum(i * o for i, o in layers) - 2 * layers[0][0] * layers[0][1]


def gemm_seconds_per_step(widths: list[int], dtype: torch.dtype, repeats: int = 100) -> float:
    """Seconds torch.mm takes for one step's GEMMs in `dtype` (same shapes as the MLP's forward and backward)."""
    shapes = []
    for index, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        shapes.append((BATCH, fan_in, fan_out))  # forward
        shapes.append((fan_out, BATCH, fan_in))  # weight gradient
        if index:
            shapes.append((BATCH, fan_out, fan_in))  # input gradient
    operands = [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)) for m, k, n in shapes]
    for a, b in operands:
        torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        for a, b in operands:
            torch.mm(a, b)
    return (time.perf_counter() - started) / repeats


def time_epoch(kwargs: dict, config: TrainConfig, weights: LossWeights, inputs, labels, targets=None,
               precision: str = "fp32", model_name: str = "mlp") -> float:
    """Seconds of one epoch; `precision` "bf16_autograd" is bf16 with the fused update and autograd's backward,
    "bf16_autocast" bf16 without the fused update."""
    torch.manual_seed(0)
    model = create_model(model_name, 10, (1, 28, 28), **kwargs)
    model.to(memory_format=distill.train.image_layout(model, inputs))  # as distill.train.train does
    optimizer = make_optimizer(model, config)
    scheduler = make_schedule(optimizer, config, steps_per_epoch=-(-N // BATCH))
    generator = torch.Generator().manual_seed(0)
    autograd = mock.patch.object(distill.bf16_step, "layer_chain", lambda model: None) \
        if precision == "bf16_autograd" else contextlib.nullcontext()
    compute, fused = precision.split("_")[0], not precision.endswith("_autocast")
    with autograd:
        if fused:  # as distill.train.train does, once per run
            inputs = distill.train.step_inputs(model, optimizer, compute, inputs, targets)
        started = time.perf_counter()
        train_epoch(model, optimizer, scheduler, inputs, labels, config, weights, targets, generator, compute,
                    fused=fused)
    return time.perf_counter() - started


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--epochs", type=int, default=3, help="timed epochs per measurement (median is kept)")
    arguments.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = arguments.parse_args()
    retain_freed_memory()  # as distill.train.train does: the epochs timed here are the epochs users run
    inputs, labels = torch.rand(N, 1, 28, 28), torch.randint(0, 10, (N,))
    soft = SoftTargets(logits=torch.randn(N, 10) * 5)
    results = {"batch_size": BATCH, "epochs_timed": args.epochs, "bf16_matrix_units": bf16_matrix_units(CPU),
               "models": {}}
    steps = -(-N // BATCH)
    modes = [*args.precisions, *(["bf16_autograd", "bf16_autocast"] if "bf16" in args.precisions else [])]
    results["fused_bf16_update"] = fused_step_available()
    for name, kwargs, shift in [("teacher_1200_1200", TEACHER, 2), ("student_800_800", STUDENT, 0)]:
        widths = [INPUT, *kwargs["hidden"], 10]
        config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.05, augment_shift=shift)
        flops = training_flops_per_example(widths)
        epochs, gemms = {p: [] for p in modes}, {p: [] for p in modes}
        for _ in range(args.epochs):  # precisions interleaved, each GEMM timed right after its epoch: speed drifts
            for precision in modes:
                epochs[precision].append(time_epoch(kwargs, config, HARD_LABELS, inputs, labels, precision=precision))
                gemms[precision].append(gemm_seconds_per_step(widths, DTYPES[precision]) * steps)
        entry = {"augment_shift": shift}
        for precision in modes:
            epoch = statistics.median(epochs[precision])
            share = statistics.median(gemm / seconds for gemm, seconds in zip(gemms[precision], epochs[precision]))
            entry[precision] = {"epoch_seconds": epochs[precision], "gemm_seconds_per_epoch": gemms[precision],
                                "training_gflops": flops * N / epoch / 1e9,
                                "gemm_gflops_same_shapes": flops * N / statistics.median(gemms[precision]) / 1e9,
                                "share_of_gemm": share}
            print(f"{name} {precision}: epoch {epoch:.2f} s, {flops * N / epoch / 1e9:.1f} GFLOP/s, "
                  f"{share:.1%} of torch.mm's rate on the same shapes in {precision}")
        if len(args.precisions) == 2:
            for bf16 in ("bf16", "bf16_autograd", "bf16_autocast"):
                entry[f"{bf16}_over_fp32_epoch"] = statistics.median(
                    b / f for f, b in zip(epochs["fp32"], epochs[bf16]))
                print(f"{name}: {bf16} epoch / fp32 epoch (median of paired epochs) "
                      f"{entry[f'{bf16}_over_fp32_epoch']:.2f}")
        results["models"][name] = entry
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.05)
    plain, distilled = [], []
    for _ in range(args.epochs):  # interleaved, so drift in machine load hits both alike
        plain.append(time_epoch(STUDENT, config, HARD_LABELS, inputs, labels))
        distilled.append(time_epoch(STUDENT, config, LossWeights(20.0, 1.0, 0.0), inputs, labels, soft))
    ratio = statistics.median(distilled) / statistics.median(plain)
    results["distillation_epoch"] = {"plain_seconds": statistics.median(plain),
                                     "distill_seconds": statistics.median(distilled), "ratio": ratio,
                                     "setting": "800-800 student, fp32, cached soft targets, T=20, w_soft=1, w_hard=0"}
    print(f"cached-soft-target epoch / hard-label epoch: {ratio:.3f}")
    results["cnn"] = cnn_layouts(inputs[:CNN_ROWS], labels[:CNN_ROWS], args.epochs, args.precisions)
    results["teacher_step_stages"] = step_stages(inputs[:STAGE_ROWS], labels[:STAGE_ROWS], args.epochs,
                                                 args.precisions)
    write_result(args.out, "throughput", results)


def cnn_layouts(inputs, labels, repeats: int, precisions: list[str]) -> dict:
    """The small CNN's part epoch in each precision, channels-last (as training runs it) and in the usual layout
    (the layout choice replaced for the comparison)."""
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.05)
    usual = mock.patch.object(distill.train, "image_layout", lambda model, inputs: torch.contiguous_format)
    seconds = {(p, layout): [] for p in precisions for layout in ("channels_last", "usual")}
    for _ in range(repeats):
        for precision in precisions:
            seconds[precision, "channels_last"].append(
                time_epoch({}, config, HARD_LABELS, inputs, labels, precision=precision, model_name="cnn"))
            with usual:
                seconds[precision, "usual"].append(
                    time_epoch({}, config, HARD_LABELS, inputs, labels, precision=precision, model_name="cnn"))
    entry = {"rows": len(inputs), "epoch_seconds": {f"{p}_{layout}": v for (p, layout), v in seconds.items()}}
    for precision in precisions:
        entry[f"{precision}_channels_last_over_usual"] = statistics.median(
            c / u for c, u in zip(seconds[precision, "channels_last"], seconds[precision, "usual"]))
        print(f"cnn {precision}: channels-last part epoch / usual layout "
              f"{entry[f'{precision}_channels_last_over_usual']:.2f}")
    if len(precisions) == 2:
        entry["bf16_over_fp32_channels_last"] = statistics.median(
            b / f for f, b in zip(seconds["fp32", "channels_last"], seconds["bf16", "channels_last"]))
        entry["bf16_channels_last_over_fp32_usual"] = statistics.median(
            b / f for f, b in zip(seconds["fp32", "usual"], seconds["bf16", "channels_last"]))
        print(f"cnn: bf16 / fp32, both channels-last {entry['bf16_over_fp32_channels_last']:.2f}; bf16 channels-last "
              f"/ fp32 usual layout (before) {entry['bf16_channels_last_over_fp32_usual']:.2f}")
    return entry


def step_stages(inputs, labels, repeats: int, precisions: list[str]) -> dict:
    """Milliseconds per teacher step with the first k stages of the training step (STAGES), k = 1 ... 5, and
    each stage's share as the difference of consecutive lines: the step of distill.train.train_epoch, cut short."""
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.05, augment_shift=2)
    milliseconds = {p: {stage: [] for stage in STAGES} for p in precisions}
    for _ in range(repeats):
        for precision in precisions:
            for depth, stage in enumerate(STAGES, start=1):
                torch.manual_seed(0)
                model = create_model("mlp", 10, (1, 28, 28), **TEACHER).train()
                optimizer = make_optimizer(model, config)
                scheduler = make_schedule(optimizer, config, steps_per_epoch=-(-len(inputs) // BATCH))
                generator = torch.Generator().manual_seed(0)
                indices = torch.randperm(len(inputs), generator=generator).split(BATCH)
                started = time.perf_counter()
                for index in indices:
                    batch = augment_batch(inputs[index], config.augment_shift, False, generator)
                    if depth >= 2:
                        with autocast(precision, CPU):
                            logits = model(batch)
                    if depth >= 3:
                        loss = distillation_loss(logits.float(), None, labels[index], 1.0, 0.0, 1.0)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                    if depth >= 4:
                        optimizer.step()
                        scheduler.step()
                    if depth >= 5:
                        model.apply_constraints()
                milliseconds[precision][stage].append((time.perf_counter() - started) / len(indices) * 1e3)
    entry = {"rows": len(inputs), "cumulative_ms_per_step": milliseconds, "stage_ms": {}}
    for precision in precisions:
        cumulative = [statistics.median(milliseconds[precision][stage]) for stage in STAGES]
        entry["stage_ms"][precision] = {stage: value - before for stage, value, before
                                        in zip(STAGES, cumulative, [0.0, *cumulative])}
        print(f"teacher step {precision}: " + ", ".join(f"{stage} {ms:.2f}" for stage, ms
                                                       in entry["stage_ms"][precision].items()) + " ms")
    return entry


if __name__ == "__main__":
    main()
