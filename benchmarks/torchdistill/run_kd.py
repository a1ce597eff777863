"""torchdistill's side of benchmarks/torchdistill_side_by_side.py; runs in benchmarks/.venv-torchdistill.

    python benchmarks/torchdistill/run_kd.py --config benchmarks/torchdistill/mnist_kd.yaml --teacher T.pt
        --data-root DIR --epochs 60 --result result.json

Distils a Distillery teacher checkpoint (loaded with weights_only=True; the same frozen module in evaluation mode)
into the same 800-800 student module, the way torchdistill's users run it: a torchvision MNIST data set with
ToTensor through torchdistill's data loader, its DistillationBox and KDLoss from the YAML config, the teacher
run on every batch. Writes the student's test errors and the training loop's seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torchdistill
import torchvision
from torchdistill.common.yaml_util import load_yaml_file
from torchdistill.core.distillation import get_distillation_box

# Installed into torchdistill's environment by the side-by-side script (without dependencies): the same model
# definitions and checkpoint loading as Distillery's side.
from distill.checkpoint import load_checkpoint
from distill.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--config", "--teacher", "--data-root", "--result"):
        parser.add_argument(name, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    transform = torchvision.transforms.ToTensor()
    train_set = torchvision.datasets.MNIST(args.data_root, train=True, transform=transform)
    test_set = torchvision.datasets.MNIST(args.data_root, train=False, transform=transform)
    teacher = load_checkpoint(args.teacher)[0].eval()
    student = create_model("mlp", 10, (1, 28, 28), hidden=[800, 800])
    train_config = load_yaml_file(args.config)["train"]
    train_config["num_epochs"] = args.epochs
    batch_size = train_config["train_data_loader"]["kwargs"]["batch_size"]
    train_config["scheduler"]["kwargs"].update(epochs=args.epochs,
                                               steps_per_epoch=math.ceil(len(train_set) / batch_size))
    box = get_distillation_box(teacher, student, {"mnist/train": train_set}, train_config, torch.device("cpu"),
                               device_ids=None, distributed=False, lr_factor=1)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            box.post_forward_process(box.forward_process(sample_batch, targets, supp_dict))
        box.post_epoch_process()
    train_seconds = time.perf_counter() - started
    student.eval()
    loader = torch.utils.data.DataLoader(test_set, batch_size=2048)
    with torch.inference_mode():
        errors = sum(int((student(x).argmax(1) != y).sum()) for x, y in loader)
    Path(args.result).write_text(json.dumps({"errors": errors, "train_seconds": train_seconds,
                                          "torchdistill": torchdistill.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
