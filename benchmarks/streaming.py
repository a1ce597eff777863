"""Training throughput on images streamed from PNG files against the same images in memory, in one invocation.

    python benchmarks/streaming.py [--work data/mnist_png] [--train-rows 60000] [--epochs 1] [--repeats 2]
                                   [--workers 0 2] [--precision auto] [--out benchmarks/results]

MNIST is written once as an image folder of PNG files (`WORK/train/DIGIT/*.png`, `WORK/test/DIGIT/*.png`, from
the idx files under the data root: no download) and loaded through `image_folder` twice: in memory, and streamed
(`memory_budget_gb: 0`, decoded by each number of DataLoader processes in --workers). For each model, epochs of
`train` on the first --train-rows images go round the sides, in reversed order every other repeat (so the host's
drift falls on all), after one read of every file (a warm page cache: the ratios measure decoding, not the
disk); each ratio is a streamed epoch over the in-memory epoch. Every side sees the same batches:
their losses must agree.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from distill.config import TrainConfig
from distill.data import load_dataset, load_mnist, resolve_data_root
from distill.models import create_model
from distill.precision import resolve_precision
from distill.train import train
from distillery.benchmark import parser, write_result

MODELS = {"cnn": {"name": "cnn", "kwargs": {}}, "mlp_800_800": {"name": "mlp", "kwargs": {"hidden": [800, 800]}}}
GOAL = 1.3


def write_png_folder(work: Path, data_root: Path) -> None:
    """MNIST as PNG files in class folders, written once (a finished folder has WORK/complete)."""
    if (work / "complete").is_file():
        return
    mnist = load_mnist(data_root)
    for split, images, labels in (("train", mnist.x_train, mnist.y_train), ("test", mnist.x_test, mnist.y_test)):
        pixels = (images[:, 0] * 255).round().to(torch.uint8).numpy()
        for row, (image, label) in enumerate(zip(pixels, labels.tolist())):
            folder = work / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{row:05d}.png")
    (work / "complete").write_text("")


def epoch_seconds(model_spec: dict, inputs, labels, config: TrainConfig, input_shape) -> tuple[float, float]:
    """Seconds and final loss of `config.epochs` epochs of a freshly built, seeded model."""
    torch.manual_seed(0)
    model = create_model(model_spec["name"], 10, input_shape, **model_spec["kwargs"])
    started = time.perf_counter()
    history = train(model, inputs, labels, config, seed=0,
                    precision=resolve_precision(config.precision, torch.device("cpu")))
    return (time.perf_counter() - started) / config.epochs, history[-1].loss


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--work", type=Path, default=Path("data") / "mnist_png")
    arguments.add_argument("--train-rows", type=int, default=60_000)
    arguments.add_argument("--epochs", type=int, default=1)
    arguments.add_argument("--repeats", type=int, default=2)
    arguments.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    arguments.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    arguments.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = arguments.parse_args()
    write_png_folder(args.work, resolve_data_root(None))
    options = {"root": str(args.work / "train"), "test_root": str(args.work / "test"), "size": 28, "channels": 1}
    sides = {"memory": load_dataset("image_folder", Path("."), options)}
    for workers in args.workers:
        sides[f"streamed_workers_{workers}"] = load_dataset("image_folder", Path("."),
                                                            {**options, "memory_budget_gb": 0, "workers": workers})
    rows = torch.arange(min(args.train_rows, len(sides["memory"].y_train)))
    for path in sides[f"streamed_workers_{args.workers[0]}"].x_train[rows].files:
        Path(path).read_bytes()  # warm the page cache: the ratios measure decoding, not the disk
    config = TrainConfig(epochs=args.epochs, batch_size=128, lr=0.05, precision=args.precision)
    results = {}
    for name in args.models:
        seconds, losses = {side: [] for side in sides}, {}
        for repeat in range(args.repeats):
            for side in (list(sides) if repeat % 2 == 0 else list(sides)[::-1]):
                data = sides[side]
                took, losses[side] = epoch_seconds(MODELS[name], data.x_train[rows], data.y_train[rows], config,
                                                   data.input_shape)
                seconds[side].append(took)
                print(f"{name} {side}: {took:.2f} s per epoch", flush=True)
        memory = statistics.mean(seconds["memory"])
        ratios = {side: statistics.mean(seconds[side]) / memory for side in sides if side != "memory"}
        results[name] = {"model": MODELS[name], "seconds_per_epoch": seconds, "ratio": ratios, "final_loss": losses,
                         "same_loss": max(losses.values()) - min(losses.values()) < 1e-5}
        print(f"{name}: streamed / in memory = {ratios} (goal <= {GOAL})", flush=True)
    write_result(args.out, "streaming", {"train_rows": len(rows), "epochs": args.epochs, "repeats": args.repeats,
                                         "precision": args.precision, "batch_size": 128, "cpus": os.cpu_count(),
                                         "models": results, "goal": GOAL})


if __name__ == "__main__":
    main()
