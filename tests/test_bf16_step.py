"""The fused bf16 step (distill/bf16_step.py) computes what torch's autocast step computes: SGD, max-norm and the
bf16 copy in one pass, and a whole training run that matches the autocast path's losses and weights."""

import math
import os
import subprocess
import sys
import time

import pytest
import torch

from distill import bf16_step
from distill.bf16_step import ChainBf16Step, FusedBf16Step, fusable, fused_step_available, layer_chain
from distill.config import LossWeights, TrainConfig
from distill.losses import distillation_loss
from distill.models import create_model
from distill import train as train_module
from distill.train import (HARD_LABELS, AutocastStep, SoftTargets, make_optimizer, make_schedule, train, train_epoch,
                           weight_step)

CPU = torch.device("cpu")
needs_kernel = pytest.mark.skipif(not fused_step_available(),
                                  reason="the fused bf16 update cannot be compiled here (no C++ compiler or ninja)")


def _torch_step(weight, momentum, grad, lr, mu, nesterov, decay, cap, first, scale):
    """The reference: torch's fused SGD on the fp32 gradient times `scale` (as clip_grad_norm_ scales it), then
    renorm_, then the bf16 cast."""
    param = torch.nn.Parameter(weight.clone())
    optimizer = torch.optim.SGD([param], lr=lr, momentum=mu, nesterov=nesterov, weight_decay=decay, fused=True)
    if not first:
        optimizer.state[param]["momentum_buffer"] = momentum.clone()
    param.grad = grad.float() * scale
    optimizer.step()
    with torch.no_grad():
        if cap:
            param.renorm_(2, 0, cap)
    return param.detach(), optimizer.state[param]["momentum_buffer"], param.detach().to(torch.bfloat16)


@needs_kernel
@pytest.mark.parametrize("shape, nesterov, decay, cap, first, scale", [
    ((300, 70), True, 0.0, 1.0, False, 1.0),   # the norms straddle the cap: some rows scaled, others not
    ((300, 70), False, 1e-3, 1.0, False, 1.0),
    ((300, 70), True, 1e-3, 0.0, True, 1.0),   # first step: the momentum starts as the gradient
    ((37,), True, 0.0, 0.0, False, 1.0),       # a bias: one row, never capped
    ((300, 70), True, 1e-3, 1.0, False, 0.37),  # a clipped gradient
])
def test_one_fused_step_is_torchs_sgd_renorm_and_cast(shape, nesterov, decay, cap, first, scale):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(shape, generator=generator) * 0.12
    momentum = torch.randn(shape, generator=generator) * 0.01
    grad = (torch.randn(shape, generator=generator) * 0.1).to(torch.bfloat16)
    expected = _torch_step(weight, momentum, grad, 0.3, 0.9, nesterov, decay, cap, first, scale)
    if cap:
        norms = expected[0].norm(dim=1)
        assert (norms < cap * 0.999).any() and (norms > cap * 0.999).any()
    copy_ = torch.empty(shape, dtype=torch.bfloat16)
    bf16_step.kernels().sgd_step(weight, momentum, grad, copy_, 0.3, 0.9, nesterov, decay, cap, first, scale)
    torch.testing.assert_close(weight, expected[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(momentum, expected[1], rtol=0, atol=1e-6)
    assert torch.equal(copy_, weight.to(torch.bfloat16))  # the copy is the cast of the weight it was written from


@needs_kernel
def test_the_copy_rounds_as_torchs_cast_does_nan_and_infinity_included():
    values = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5e-3, 3.0e38, float("inf"), float("-inf"), float("nan")])
    weight, momentum = values.clone(), torch.zeros_like(values)
    copy_ = torch.empty_like(values, dtype=torch.bfloat16)
    bf16_step.kernels().sgd_step(weight, momentum, torch.zeros_like(copy_), copy_, 0.1, 0.9, False, 0.0, 0.0, True,
                                     1.0)
    assert torch.equal(copy_[:-1], values[:-1].to(torch.bfloat16)) and copy_[-1].isnan()


@needs_kernel
@pytest.mark.parametrize("shape", [(128, 800), (37, 70), (1, 33), (64, 1)])  # whole tiles, ragged edges, one line
def test_the_transposing_copy_is_torchs(shape):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    transposed = bf16_step.kernels().transpose_bf16(matrix)
    assert transposed.is_contiguous() and torch.equal(transposed, matrix.t())


def _train(fused: bool = True, epochs: int = 3, model_kwargs: dict | None = None, shift: int = 0,
           weights: LossWeights = HARD_LABELS, clip_grad_norm: float | None = None):
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.rand(512, 1, 8, 8, generator=generator), torch.randint(0, 5, (512,), generator=generator)
    targets = SoftTargets(logits=torch.randn(512, 5, generator=generator) * 3) if weights.w_soft else None
    torch.manual_seed(1)
    model = create_model("mlp", 5, (1, 8, 8), **(model_kwargs or dict(hidden=[32, 16], dropout_hidden=0.3,
                                                                       max_norm=0.5)))
    config = TrainConfig(epochs=epochs, batch_size=32, lr=0.3, weight_decay=1e-3, augment_shift=shift,
                         clip_grad_norm=clip_grad_norm)
    optimizer = make_optimizer(model, config)
    scheduler = make_schedule(optimizer, config, math.ceil(len(inputs) / config.batch_size))
    order = torch.Generator().manual_seed(0)
    losses = [train_epoch(model, optimizer, scheduler, inputs, labels, config, weights, targets, order, "bf16",
                          fused) for _ in range(epochs)]
    return losses, model, optimizer, scheduler


@needs_kernel
@pytest.mark.parametrize("clip_grad_norm", [None, 0.3])
def test_training_with_the_fused_step_follows_the_autocast_path(clip_grad_norm):
    """Dropout, max-norm (binding: lr 0.3 against a cap of 0.5), weight decay and the one-cycle schedule over three
    epochs, with and without gradient clipping: the same losses and, up to fp32 rounding, the same weights and
    momentum. The kernel sums a row's squares
    in another order than torch's norm, and a last-bit difference in a weight sometimes flips the rounding of its
    bf16 copy (its step is 1e-3 at 0.25): differences of 1e-5 to 1e-4 build up over the 48 steps, against weights
    of 0.1 to 0.5, and how large depends on the run's dropout masks."""
    fused_losses, fused, fused_optimizer, fused_schedule = _train(fused=True, clip_grad_norm=clip_grad_norm)
    torch_losses, reference, torch_optimizer, torch_schedule = _train(fused=False, clip_grad_norm=clip_grad_norm)
    if clip_grad_norm is not None:  # binding in some steps: the gradients' norms run 0.12 to 0.39 unclipped
        assert fused_losses != pytest.approx(_train(fused=True)[0], rel=1e-3)
    assert fused_losses == pytest.approx(torch_losses, rel=1e-5)
    assert max(fused.row_norm_caps().values()) == 0.5
    # At the cap up to what weight decay takes off in the last steps, where the one-cycle rate is near 0.
    assert max(w.norm(dim=1).max().item() for name, w in fused.named_parameters() if name.endswith("weight")) \
        == pytest.approx(0.5, rel=1e-3)
    for (name, weight), other in zip(fused.named_parameters(), reference.parameters()):
        torch.testing.assert_close(weight, other, rtol=0, atol=2e-4, msg=name)
        torch.testing.assert_close(fused_optimizer.state[weight]["momentum_buffer"],
                                   torch_optimizer.state[other]["momentum_buffer"], rtol=0, atol=2e-4, msg=name)
    assert fused_schedule.get_last_lr() == torch_schedule.get_last_lr()


def _autograds_loss_gradient(logits, *args):
    logits = logits.detach().requires_grad_()
    with torch.enable_grad():
        distillation_loss(logits, *args).backward()
    return logits.grad


CHAIN_CASES = pytest.mark.parametrize("model_kwargs, shift", [
    ({"hidden": [32, 16], "dropout_input": 0.2, "dropout_hidden": 0.3, "max_norm": 0.5}, 1),  # the teacher's kind
    ({"hidden": [24]}, 0),  # the student's kind
])


@needs_kernel
@CHAIN_CASES
def test_the_written_out_backward_gives_autograds_gradients_bit_for_bit(monkeypatch, model_kwargs, shift):
    """Two epochs of soft and hard targets (T = 4), so that every layer's backward is used; the written-out step
    starts from autograd's gradient of the loss here (its own closed form differs in the last bits: next test)."""
    distil = dict(epochs=2, model_kwargs=model_kwargs, shift=shift, weights=LossWeights(4.0, 0.7, 0.3))
    monkeypatch.setattr(bf16_step, "distillation_loss_gradient", _autograds_loss_gradient)
    chain_losses, chain, chain_optimizer, _ = _train(**distil)
    assert type(weight_step(chain, chain_optimizer, "bf16", CPU)) is ChainBf16Step
    monkeypatch.setattr(bf16_step, "layer_chain", lambda model: None)
    autograd_losses, reference, reference_optimizer, _ = _train(**distil)
    assert type(weight_step(reference, reference_optimizer, "bf16", CPU)) is FusedBf16Step
    assert chain_losses == autograd_losses
    for (name, weight), other in zip(chain.named_parameters(), reference.parameters()):
        assert torch.equal(weight, other), name
        assert torch.equal(chain_optimizer.state[weight]["momentum_buffer"],
                           reference_optimizer.state[other]["momentum_buffer"]), name


@needs_kernel
def test_the_written_out_backward_is_autograds_where_the_batch_sums_cancel():
    """A bias gradient summed in another order than torch's passes the test above: bf16 terms of similar size sum
    exactly in fp32 whatever the order. Not where large terms cancel and small ones remain, as in a model that fits
    its data (some examples' gradients near 0, others near 1): a column sum fused into the transposing copy drifted
    in the demo's ninth epoch. Here each column's loss gradient is +1 and -1 around terms of 1e-12 to 1e-6. The
    weights' gradients are compared to one bf16 rounding step only: they are torch.mm's on grad^T copied out and on
    its transposed view, the same numbers with AMX kernels, but with AVX2 ones (a simulated host without bf16 units)
    one element of 180 rounded the other way."""
    torch.manual_seed(0)
    model = create_model("mlp", 6, (1, 5, 5), hidden=[40, 30])
    batch = torch.rand(128, 1, 5, 5)
    small = torch.randn(126, 6) * 10 ** torch.empty(126, 6).uniform_(-12, -6)
    logits_grad = torch.cat([torch.ones(1, 6), small, -torch.ones(1, 6)])
    steps = [step_kind(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
             for step_kind in (bf16_step.fused_step, FusedBf16Step)]
    assert [type(step) for step in steps] == [ChainBf16Step, FusedBf16Step]
    steps[0].forward(batch)
    steps[0].logits_grad = logits_grad
    chain = steps[0].gradients(None)
    autograd = steps[1].gradients((steps[1].forward(batch).float() * logits_grad).sum())
    assert chain.keys() == autograd.keys()
    assert (autograd["net.5.bias"].float().abs() < 1e-4).all()  # the output layer's +1 and -1 cancel
    for name, grad in chain.items():
        if name.endswith("bias"):
            assert torch.equal(grad, autograd[name]), name
        else:
            torch.testing.assert_close(grad, autograd[name], rtol=2**-7, atol=1e-6, msg=name)


@needs_kernel
@CHAIN_CASES
def test_the_loss_gradient_in_closed_form_trains_as_autograds(monkeypatch, model_kwargs, shift):
    """The same two epochs with the step's own closed-form gradient of the loss: rounding apart, the same run."""
    distil = dict(epochs=2, model_kwargs=model_kwargs, shift=shift, weights=LossWeights(4.0, 0.7, 0.3))
    closed_losses, closed, _, _ = _train(**distil)
    monkeypatch.setattr(bf16_step, "distillation_loss_gradient", _autograds_loss_gradient)
    autograd_losses, reference, _, _ = _train(**distil)
    assert closed_losses == pytest.approx(autograd_losses, rel=1e-4)
    for (name, weight), other in zip(closed.named_parameters(), reference.parameters()):
        torch.testing.assert_close(weight, other, rtol=0, atol=1e-4, msg=name)


@needs_kernel
def test_inputs_cast_once_per_run_train_as_batches_cast_each_step(monkeypatch):
    """A chain that starts with a linear layer casts its inputs to bf16 first: train() casts them once instead,
    with shifted and mirrored batches, and the run is the same bit for bit."""
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.rand(300, 1, 6, 6, generator=generator), torch.randint(0, 4, (300,), generator=generator)
    config = TrainConfig(epochs=2, batch_size=32, lr=0.2, augment_shift=1, augment_flip=True)

    def run():
        torch.manual_seed(0)
        model = create_model("mlp", 4, (1, 6, 6), hidden=[16], dropout_hidden=0.2)
        return train(model, inputs, labels, config, precision="bf16"), model
    cast_once = run()
    assert train_module.step_inputs(cast_once[1], make_optimizer(cast_once[1], config), "bf16", inputs,
                                    None).dtype == torch.bfloat16
    monkeypatch.setattr(train_module, "step_inputs", lambda model, optimizer, precision, inputs, targets: inputs)
    cast_each_step = run()
    assert [r.loss for r in cast_once[0]] == [r.loss for r in cast_each_step[0]]
    for weight, other in zip(cast_once[1].parameters(), cast_each_step[1].parameters()):
        assert torch.equal(weight, other)


@needs_kernel
def test_inputs_stay_fp32_where_the_step_does_not_cast_them_first():
    inputs = torch.rand(8, 1, 4, 4)
    student = create_model("mlp", 3, (1, 4, 4), hidden=[8])
    teacher = create_model("mlp", 3, (1, 4, 4), hidden=[8], dropout_input=0.2)  # scales the inputs in fp32 first
    sgd = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    assert train_module.step_inputs(student, sgd, "bf16", inputs, None).dtype == torch.bfloat16
    assert train_module.step_inputs(student, sgd, "fp32", inputs, None) is inputs
    assert train_module.step_inputs(student, sgd, "bf16", inputs, SoftTargets(teacher=teacher)) is inputs
    assert train_module.step_inputs(teacher, torch.optim.SGD(teacher.parameters(), lr=0.1, momentum=0.9), "bf16",
                                    inputs, None) is inputs
    cnn = create_model("cnn", 3, (1, 8, 8))
    assert train_module.step_inputs(cnn, torch.optim.SGD(cnn.parameters(), lr=0.1, momentum=0.9), "bf16",
                                    torch.rand(8, 1, 8, 8), None).dtype == torch.float32


def test_only_a_chain_of_known_layers_gets_the_written_out_backward():
    mlp = create_model("mlp", 3, (1, 4, 4), hidden=[8, 8], dropout_input=0.1, dropout_hidden=0.5)
    assert layer_chain(mlp) == list(mlp.net)[1:]
    assert layer_chain(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))) is not None
    assert layer_chain(torch.nn.Sequential(torch.nn.Linear(16, 3))) is None  # no Flatten: inputs of any rank
    assert layer_chain(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3), torch.nn.Tanh())) is None
    assert layer_chain(create_model("cnn", 3, (1, 8, 8))) is None

    class Scaled(type(mlp)):  # a subclass may have a forward of its own
        def forward(self, x):
            return 2 * super().forward(x)
    assert layer_chain(Scaled(3, (1, 4, 4), hidden=[8])) is None


@needs_kernel
@pytest.mark.parametrize("written_out", [False, True])
def test_a_frozen_weight_is_left_alone(written_out):
    torch.manual_seed(0)
    model = create_model("mlp", 3, (4,), hidden=[8])
    model.net[1].weight.requires_grad_(False)
    before, trained_before = model.net[1].weight.clone(), model.net[3].weight.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
    step = ChainBf16Step(model, optimizer, layer_chain(model)) if written_out else FusedBf16Step(model, optimizer)
    step.update(step.loss(step.forward(torch.rand(5, 4)), None, torch.tensor([0, 1, 2, 0, 1]), HARD_LABELS))
    assert torch.equal(model.net[1].weight, before) and model.net[1].weight not in optimizer.state
    assert not torch.equal(model.net[3].weight, trained_before)


class Constrained(torch.nn.Module):
    """A model with a constraint of its own, which the fused step would skip."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x)

    @torch.no_grad()
    def apply_constraints(self):
        self.linear.weight.clamp_(-0.1, 0.1)


def test_the_fused_step_applies_only_where_it_computes_the_same(monkeypatch):
    """bf16 on a CPU with SGD and momentum, dense fp32 weights and no constraint the kernel does not know; elsewhere
    (and where the kernel cannot be built) training takes torch's autocast step."""
    monkeypatch.setattr(bf16_step, "fused_step_available", lambda: True)
    model = create_model("mlp", 3, (4,), hidden=[8], max_norm=2.0)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert isinstance(weight_step(model, sgd, "bf16", CPU), FusedBf16Step)
    assert isinstance(weight_step(model, sgd, "bf16", CPU, fused=False), AutocastStep)
    assert isinstance(weight_step(model, sgd, "fp32", CPU), AutocastStep)
    assert not fusable(model, sgd, torch.device("cuda"))
    assert not fusable(model, torch.optim.SGD(model.parameters(), lr=0.1), CPU)  # no momentum
    assert not fusable(model, torch.optim.Adam(model.parameters()), CPU)
    constrained = Constrained()
    assert not fusable(constrained, torch.optim.SGD(constrained.parameters(), lr=0.1, momentum=0.9), CPU)
    monkeypatch.setattr(bf16_step, "fused_step_available", lambda: False)
    assert isinstance(weight_step(model, sgd, "bf16", CPU), AutocastStep)


def _available_in_a_fresh_process(cache, env=None, **kwargs):
    return subprocess.run([sys.executable, "-c", "from distill.bf16_step import fused_step_available as f; "
                           "print(f())"], env={**os.environ, "TORCH_EXTENSIONS_DIR": str(cache), **(env or {})},
                          capture_output=True, text=True, **kwargs)


def test_without_a_compiler_bf16_training_falls_back_to_autocast_with_one_warning(tmp_path):
    result = _available_in_a_fresh_process(tmp_path, {"CXX": str(tmp_path / "no-such-compiler")}, timeout=300)
    assert result.stdout.strip() == "False"
    assert "could not be built" in result.stderr and "torch.autocast" in result.stderr
    assert not list((tmp_path / "distillery").glob("*.so"))


@needs_kernel
@pytest.mark.slow
def test_a_build_killed_midway_leaves_nothing_that_blocks_the_next(tmp_path):
    """torch's build lock is a file a killed builder leaves behind; ours is released by the kernel."""
    builder = subprocess.Popen([sys.executable, "-c", "from distill.bf16_step import fused_step_available as f; f()"],
                               env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)})
    deadline = time.monotonic() + 120
    while not list((tmp_path / "distillery").glob("*/build.ninja")) and time.monotonic() < deadline:
        time.sleep(0.1)  # the compiler is running once torch has written its build file
    builder.kill()
    builder.wait()
    assert not list((tmp_path / "distillery").glob("*.so"))
    assert _available_in_a_fresh_process(tmp_path, timeout=300).stdout.strip() == "True"
