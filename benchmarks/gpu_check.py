"""The GPU path in one short check: a small CNN ensemble and a specialist run, trained on the GPU and on the CPU.

    bash benchmarks/gpu_check.sh [--cpu]       (or python benchmarks/gpu_check.py [--cpu] [--out DIR])

Both runs use data that ships with the code (scikit-learn's 8 x 8 digits for the CNNs, the synthetic label set
for the specialists), so a bare GPU machine needs no data set. Each run goes through `distillery.pipeline.run`
with `device: cuda` (every model, the soft targets and the combiner on the GPU; precision `auto`, so bf16
autocast where the GPU has it) and again with `device: cpu`, in this process (no Ray). The record: each model's
mean epoch seconds on each device, their ratio, the device and precision each run recorded, and the runs'
accuracies (which need not match to the bit across devices). `--cpu` skips the GPU, says so in the record, and
exists so the script itself is tested where no GPU is. Meant to finish in under 5 minutes on one GPU.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from pathlib import Path

import torch

from distill.config import load_config
from distillery.benchmark import parser, write_result
from distillery.pipeline import run

CHECKS = {
    "cnn_ensemble": ["data.name=digits", "ensemble.size=3", "teacher.model={name: cnn, kwargs: {channels: [16, 32]}}",
                     "teacher.train={epochs: 10, batch_size: 64, lr: 0.05}",
                     "student.model={name: cnn, kwargs: {channels: [8]}}",
                     "student.train={epochs: 10, batch_size: 64, lr: 0.05}", "specialists.count=0"],
    "specialists": ["data.name=synthetic", "data.options={classes: 1000, groups: 50, dim: 64, train_per_class: 30,"
                    " test_per_class: 10, class_spread: 1.0, noise: 2.5}",
                    "teacher.model={name: mlp, kwargs: {hidden: [256, 256]}}",
                    "teacher.train={epochs: 5, batch_size: 128}", "specialists.count=20",
                    "specialists.train.epochs=3", "student.model={name: mlp, kwargs: {hidden: [256, 256]}}",
                    "student.train={epochs: 5, batch_size: 128}"],
}
log = logging.getLogger("gpu_check")


def check(name: str, device: str, work: Path) -> dict:
    config = load_config(overrides=[*CHECKS[name], f"device={device}", "cluster.executor=local"])
    metrics = run(config, work / f"{name}_{device}", data_root=work)
    epochs = {model: statistics.mean(record.seconds for record in history)
              for model, history in metrics.history.items()}
    return {"device": metrics.run.device, "seconds": round(metrics.run.seconds, 2),
            "precision": {model: m.precision for model, m in metrics.models.items()},
            "accuracy": {model: round(m.accuracy, 4) for model, m in metrics.models.items()},
            "mean_epoch_seconds": {model: round(seconds, 4) for model, seconds in epochs.items()}}


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--cpu", action="store_true", help="run the CPU half only (no GPU here)")
    args = arguments.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    gpu = not args.cpu
    if gpu and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run with --cpu to check the script on the CPU only")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in CHECKS:
            runs = {device: check(name, device, Path(scratch)) for device in (["cuda"] if gpu else []) + ["cpu"]}
            if gpu:
                runs["cpu_over_gpu_epoch_seconds"] = {
                    model: round(runs["cpu"]["mean_epoch_seconds"][model] / seconds, 2)
                    for model, seconds in runs["cuda"]["mean_epoch_seconds"].items() if seconds > 0}
            results[name] = runs
            log.info("%s: %s", name, runs)
    path = write_result(args.out, "gpu_check", {
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "note": None if gpu else "--cpu: no GPU was used; this record only shows the script runs",
        "checks": {name: " ".join(overrides) for name, overrides in CHECKS.items()}, "results": results})
    log.info("-> %s", path)


if __name__ == "__main__":
    main()
