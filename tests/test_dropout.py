"""Dropout masks hashed from one seed per call (distill/dropout.py): SplitMix64's words, the same values with the
C++ kernel and with torch operations, nn.Dropout's rate and expectation, and a backward pass through the same mask."""

import pytest
import torch

from distill import dropout
from distill.dropout import BitDropout, mask_scale, random_words

needs_kernel = pytest.mark.skipif(dropout.kernels() is None,
                                  reason="the dropout kernel cannot be compiled here (no C++ compiler or ninja)")


def _threshold(p):
    return BitDropout(p).threshold


def _with_torch_operations(monkeypatch):
    monkeypatch.setattr(dropout, "kernels", lambda: None)


def test_the_words_are_splitmix64():
    """Published SplitMix64 outputs: the first of seed 0, the first three of seed 1234567."""
    as_unsigned = [int(w) % 2**64 for w in random_words(0, 1)] + [int(w) % 2**64 for w in random_words(1234567, 3)]
    assert as_unsigned == [0xE220A8397B1DCDAF, 6457827717110365317, 3203168211198807973, 9817491932198370423]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1,), (3, 7), (5, 1029), (128, 1200)])  # tails of a word and of a 1,024 block
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_the_kernel_computes_what_the_torch_operations_compute(monkeypatch, dtype, shape, p):
    x = torch.randn(shape).to(dtype)
    x.view(-1)[0] = float("inf")  # a dropped inf becomes NaN (inf * 0), as in torch; a kept one stays inf
    seed = -8_765_432_109_876_543
    compiled = mask_scale(x, seed, _threshold(p), p)
    _with_torch_operations(monkeypatch)
    assert torch.equal(compiled.isnan(), mask_scale(x, seed, _threshold(p), p).isnan())
    assert torch.equal(compiled.nan_to_num(), mask_scale(x, seed, _threshold(p), p).nan_to_num())
    assert compiled.dtype == dtype


@pytest.mark.parametrize("kernel", [True, False])
def test_backward_multiplies_by_the_forward_mask(monkeypatch, kernel):
    if kernel and dropout.kernels() is None:
        pytest.skip("the dropout kernel cannot be compiled here")
    if not kernel:
        _with_torch_operations(monkeypatch)
    layer = BitDropout(0.5)
    x = torch.randn(33, 65, requires_grad=True)
    y = layer(x)
    mask = y.detach() / x.detach()  # 0 or 2 (x has no zeros)
    grad = torch.randn(33, 65)
    y.backward(grad)
    assert set(mask.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(x.grad, grad * mask)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_keeps_the_rate_and_the_expectation(p):
    layer = BitDropout(p)
    x = torch.ones(400, 1000)
    y = layer(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.003)
    assert y[y != 0].unique().tolist() == pytest.approx([1 / (1 - p)])
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    layer.eval()
    assert layer(x) is x


def test_masks_differ_between_calls_and_lanes_but_not_between_equal_seeds():
    layer = BitDropout(0.5)
    torch.manual_seed(3)
    a, b = layer(torch.ones(64, 64)), layer(torch.ones(64, 64))
    assert not torch.equal(a, b)
    for lane in range(4):  # each 64-bit word feeds four neighbouring elements: every lane keeps the rate
        assert 0.4 < (a[:, lane::4] == 0).float().mean() < 0.6
    torch.manual_seed(3)
    assert torch.equal(layer(torch.ones(64, 64)), a)


def test_the_mask_does_not_depend_on_the_number_of_threads():
    x = torch.randn(300, 1000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = mask_scale(x, 42, _threshold(0.5), 0.5)
        torch.set_num_threads(max(2, threads))
        assert torch.equal(mask_scale(x, 42, _threshold(0.5), 0.5), alone)
    finally:
        torch.set_num_threads(threads)
