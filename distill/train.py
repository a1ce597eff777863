"""One training loop for hard labels, soft targets, or the paper's weighted mix of both.

Inputs live in memory as one tensor and batches are index slices of it (no DataLoader, no per-sample work), or,
for image folders over the memory budget, batches are decoded from their files (distill/streamed.py) in the same
order.
Soft targets come either from cached teacher logits aligned with the inputs, or, when the student's inputs are
augmented, from a frozen teacher run on each augmented batch.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from distill.bf16_step import FusedBf16Step, casts_inputs_first, fusable, fused_step
from distill.config import LossWeights, TrainConfig
from distill.data import augment_batch
from distill.errors import TrainingError
from distill.losses import run_loss, softmax_at
from distill.memory import retain_freed_memory
from distill.models import CHANNELS_LAST
from distill.precision import ComputePrecision, autocast
from distill.records import to_plain
from distill.streamed import Inputs, batches_of

log = logging.getLogger(__name__)

HARD_LABELS = LossWeights(temperature=1.0, w_soft=0.0, w_hard=1.0)


@dataclass
class EpochRecord:
    """One epoch of a training curve: its mean training loss and seconds, and the test accuracy at the curve's
    points (set by whoever evaluates there, ensembles.jobs; never used to choose a model)."""

    epoch: int
    loss: float
    seconds: float
    test_accuracy: float | None = None


@dataclass
class SoftTargets:
    """Where soft targets come from: cached logits (N, C) aligned with the inputs, or a frozen teacher run in
    `teacher_precision` on each batch."""

    logits: torch.Tensor | None = None
    teacher: nn.Module | None = None
    teacher_precision: ComputePrecision = "fp32"

    def batch(self, index: torch.Tensor, inputs: torch.Tensor, temperature: float) -> torch.Tensor:
        if self.teacher is None:
            return softmax_at(self.logits[index], temperature)
        with autocast(self.teacher_precision, inputs.device):
            logits = self.teacher(inputs)
        return softmax_at(logits.float(), temperature)

    def to(self, device: str | torch.device) -> SoftTargets:
        """Cached logits on `device` (a teacher module is never shipped to another device)."""
        return SoftTargets(logits=self.logits.to(device))


@dataclass
class TopKSoftTargets:
    """Soft targets of a very large label set, compressed: each row's k largest probabilities at the student's
    temperature (N, k), their classes (N, k), and the remaining mass, spread evenly over the other classes."""

    probs: torch.Tensor
    classes: torch.Tensor
    num_classes: int

    @classmethod
    def from_logits(cls, logits: torch.Tensor, temperature: float, k: int) -> TopKSoftTargets:
        probs, classes = softmax_at(logits, temperature).topk(min(k, logits.shape[1]), dim=1)
        return cls(probs, classes, logits.shape[1])

    def batch(self, index: torch.Tensor, inputs: torch.Tensor, temperature: float) -> torch.Tensor:
        probs, classes = self.probs[index], self.classes[index]
        rest = (1.0 - probs.sum(1, keepdim=True)).clamp_min(0) / max(1, self.num_classes - probs.shape[1])
        return rest.expand(len(index), self.num_classes).scatter(1, classes, probs)

    def to(self, device: str | torch.device) -> TopKSoftTargets:
        return TopKSoftTargets(self.probs.to(device), self.classes.to(device), self.num_classes)

    def packed(self) -> torch.Tensor:
        """One float32 tensor (N, 2k), the probabilities then the classes (exact in float32 below 2**24 classes):
        the form the soft-target cache stores."""
        return torch.cat([self.probs.float(), self.classes.float()], dim=1)

    @classmethod
    def unpacked(cls, packed: torch.Tensor, num_classes: int) -> TopKSoftTargets:
        k = packed.shape[1] // 2
        return cls(packed[:, :k], packed[:, k:].long(), num_classes)


EpochCallback = Callable[[int, EpochRecord], None]
StateCallback = Callable[[dict], None]


def train(model: nn.Module, inputs: Inputs, labels: torch.Tensor, config: TrainConfig,
          weights: LossWeights = HARD_LABELS, targets: SoftTargets | TopKSoftTargets | None = None, seed: int = 0,
          on_epoch: EpochCallback | None = None, on_state: StateCallback | None = None,
          resume_from: dict | None = None, precision: ComputePrecision = "fp32") -> list[EpochRecord]:
    """Train `model` in place, its matrix products in `precision`; returns one record per epoch. Raises
    TrainingError on NaN.

    After every epoch `on_state` receives the whole training state (see `training_state`); passing such a state
    as `resume_from` continues from that epoch exactly as if training had not stopped.
    """
    if weights.w_soft and targets is None:
        raise ValueError("soft-target training needs SoftTargets")
    retain_freed_memory()
    model.to(memory_format=image_layout(model, inputs))  # before the optimizer: its state takes the weights' layout
    if isinstance(targets, SoftTargets) and targets.teacher is not None:
        targets.teacher.to(memory_format=image_layout(targets.teacher, inputs))
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    optimizer = make_optimizer(model, config)
    inputs = step_inputs(model, optimizer, precision, inputs, targets)
    scheduler = make_schedule(optimizer, config, steps_per_epoch=math.ceil(len(inputs) / config.batch_size))
    average = averaged_copy(model) if config.average_last else None
    history = (restore_training_state(resume_from, model, optimizer, scheduler, generator, average)
               if resume_from else [])
    for epoch in range(len(history), config.epochs):
        started = time.perf_counter()
        loss = train_epoch(model, optimizer, scheduler, inputs, labels, config, weights, targets, generator, precision)
        if not math.isfinite(loss):
            raise TrainingError(f"training loss became {loss} in epoch {epoch + 1}: lower the learning rate "
                                f"(lr={config.lr}) or check the inputs")
        if average is not None and epoch >= config.epochs - config.average_last:
            average.update_parameters(model)
        record = EpochRecord(epoch + 1, loss, time.perf_counter() - started)
        history.append(record)
        if on_state is not None:  # first, so an epoch announced to on_epoch is one a resume can start after
            on_state(training_state(model, optimizer, scheduler, generator, history, average))
        if on_epoch is not None:
            on_epoch(epoch + 1, record)
    if average is not None:
        model.load_state_dict(average.module.state_dict())
    return history


def averaged_copy(model: nn.Module) -> AveragedModel:
    """A running mean of `model`'s weights. Averaging keeps a max-norm constraint satisfied (each unit's ball is
    convex); buffers are averaged too, since a model without batch norm has no statistics to recompute."""
    return AveragedModel(model, use_buffers=True)


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, generator: torch.Generator,
                   history: list[EpochRecord], average: AveragedModel | None = None) -> dict:
    """Everything a resumed run needs to continue bit for bit: weights, optimizer and schedule, the batch-order
    generator and the global RNG (dropout masks draw from it), the weight average, and the epochs done so far."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "generator": generator.get_state(), "cpu_rng": torch.get_rng_state(),
             "history": [to_plain(record) for record in history]}
    if generator.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(generator.device)
    if average is not None:
        state["average"] = average.state_dict()
    return copy.deepcopy(state)  # state_dict() shares the live tensors, which the next epoch overwrites


def restore_training_state(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                           generator: torch.Generator, average: AveragedModel | None = None) -> list[EpochRecord]:
    """Load a `training_state` into freshly built objects; returns the history of the epochs already done."""
    model.load_state_dict(state["model"])
    if average is not None:
        average.load_state_dict(state["average"])
    optimizer.load_state_dict(state["optimizer"])
    _match_weight_layouts(optimizer)
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["cpu_rng"])
    if "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], generator.device)
    return [EpochRecord(**record) for record in state["history"]]


def _match_weight_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-weight optimizer tensor (momentum) its weight's memory layout. A state saved before a model
    trained channels-last holds them in the usual layout, and the fused update walks weight, gradient and momentum
    in memory order: mismatched, it would pair the wrong elements without any error."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, inputs: Inputs,
                labels: torch.Tensor, config: TrainConfig, weights: LossWeights,
                targets: SoftTargets | TopKSoftTargets | None,
                generator: torch.Generator, precision: ComputePrecision = "fp32", fused: bool = True) -> float:
    """One pass over the inputs in a random order; returns the mean loss. The model's matrix products run in
    `precision`; the loss and the update stay fp32 (`fused`: with distill/bf16_step.py's update where it applies)."""
    model.train()
    order = torch.randperm(len(inputs), generator=generator, device=inputs.device)
    total = torch.zeros((), device=inputs.device)
    step = weight_step(model, optimizer, precision, inputs.device, fused, config.clip_grad_norm)
    layout = image_layout(model, inputs)
    indices = order.split(config.batch_size)
    for index, batch in zip(indices, batches_of(inputs, indices)):
        batch = augment_batch(batch, config.augment_shift, config.augment_flip, generator).contiguous(
            memory_format=layout)
        teacher_probs = targets.batch(index, batch, weights.temperature) if weights.w_soft else None
        loss = step.loss(step.forward(batch), teacher_probs, labels[index], weights)
        step.update(loss)
        scheduler.step()
        total.add_(loss.detach(), alpha=len(index))
    return total.item() / len(inputs)


class AutocastStep:
    """A training step as torch runs it: the forward pass under autocast in `precision`, fp32 gradients reaching
    the weights, clipped to a total norm of `clip_grad_norm` where one is given, the optimizer's update, then the
    model's constraints (max-norm)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, precision: ComputePrecision,
                 device: torch.device, clip_grad_norm: float | None = None):
        self.model, self.optimizer, self.precision, self.device = model, optimizer, precision, device
        self.constrain = getattr(model, "apply_constraints", None)
        self.clip_grad_norm = clip_grad_norm

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device):
            return self.model(batch)

    loss = staticmethod(run_loss)

    def update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.optimizer.step()
        if self.constrain is not None:
            self.constrain()


def weight_step(model: nn.Module, optimizer: torch.optim.Optimizer, precision: ComputePrecision,
                device: torch.device, fused: bool = True,
                clip_grad_norm: float | None = None) -> AutocastStep | FusedBf16Step:
    """The fused bf16 step where it applies (bf16 on a CPU, SGD, the kernel built), else torch's."""
    if fused and precision == "bf16" and fusable(model, optimizer, device):
        return fused_step(model, optimizer, clip_grad_norm)
    return AutocastStep(model, optimizer, precision, device, clip_grad_norm)


def step_inputs(model: nn.Module, optimizer: torch.optim.Optimizer, precision: ComputePrecision, inputs: Inputs,
                targets: SoftTargets | TopKSoftTargets | None) -> Inputs:
    """The inputs a training run's steps take: cast to bf16 once for the run where its step would cast each batch
    as its first operation (distill.bf16_step.casts_inputs_first), the same values, since augmentation only moves
    pixels and adds zeros: no cast per step, and half the bytes gathered (the 800-800 student's bf16 epoch: 4 %,
    paired part-epochs of one probe). A copy at half the inputs' size, for the run. Unchanged elsewhere, and where
    a teacher reads the same batches."""
    if (precision == "bf16" and isinstance(inputs, torch.Tensor) and inputs.dtype == torch.float32
            and not (isinstance(targets, SoftTargets) and targets.teacher is not None)
            and fusable(model, optimizer, inputs.device) and casts_inputs_first(model)):
        return inputs.to(torch.bfloat16)
    return inputs


def image_layout(model: nn.Module, inputs: Inputs) -> torch.memory_format:
    """The memory layout a model trains in: channels-last on image batches for a model marked for it
    (distill.models.CHANNELS_LAST: the built-in CNN, torchvision's models), whose convolutions run faster in it on
    the CPU (oneDNN) and the GPU (the small CNN's step on 128 MNIST images here: 33 ms against 54 in bf16, 57-62
    against 76 in fp32); the usual layout for everything else."""
    if len(inputs.shape) == 4 and getattr(model, CHANNELS_LAST, False):
        return torch.channels_last
    return torch.contiguous_format


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # fused=True: one kernel per step instead of several passes over the weights (about 15 % of a CPU epoch).
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay,
                           fused=True)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    # Momentum stays at the configured value (no cycling) so the config means what it says.
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, epochs=config.epochs,
                                               steps_per_epoch=steps_per_epoch, cycle_momentum=False)


@torch.inference_mode()
def predict_logits(model: nn.Module, inputs: Inputs, batch_size: int = 2048,
                   precision: ComputePrecision = "fp32") -> torch.Tensor:
    """The model's fp32 logits (N, C) in evaluation mode, its matrix products in `precision`, in batches."""
    model.eval()
    with autocast(precision, inputs.device):
        return torch.cat([model(chunk).float() for chunk in inputs.split(batch_size)])
