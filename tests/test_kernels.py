"""The CPU kernels of the training step (trainer/kernels.py) compute what torch's own do."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer import kernels


def test_dropout_masks_keep_each_element_with_probability_one_minus_p():
    torch.manual_seed(0)
    for p in (0.1, 0.5, 0.9):
        keep = kernels.keep_mask(torch.Size([1000, 1001]), p, torch.device("cpu"))  # odd count: a part-used draw
        n = keep.numel()
        se = math.sqrt(p * (1 - p) / n)
        assert abs(keep.float().mean().item() - (1 - p)) < 5 * se
        # the four int16 quarters of one 64-bit draw are not correlated
        quarters = keep.flatten()[: n - n % 4].view(-1, 4).float().T  # (4, n/4)
        corr = torch.corrcoef(quarters)[torch.triu_indices(4, 4, 1).unbind()]
        assert corr.abs().max().item() < 5 / math.sqrt(n / 4)


def test_dropout_masks_keep_16_bit_uniforms_at_a_rate_within_two_to_the_minus_17_of_one_minus_p():
    every_value = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)  # each 16-bit uniform once
    for p in (0.1, 0.25, 1 / 3, 0.9):
        exact_rate = (every_value >= kernels.keep_threshold(p)).double().mean().item()
        assert abs(exact_rate - (1 - p)) <= 2**-17
    # and a mask is those uniforms: the global generator's 64-bit draws read as four int16 each
    torch.manual_seed(5)
    keep = kernels.keep_mask(torch.Size([3, 7]), 0.1, torch.device("cpu"))
    torch.manual_seed(5)
    draws = torch.empty(6, dtype=torch.int64).random_(-(2**63), None).view(torch.int16)[:21]
    assert torch.equal(keep.flatten(), draws >= kernels.keep_threshold(0.1))


def test_dropout_zeroes_or_scales_each_element_and_is_identity_in_eval():
    torch.manual_seed(0)
    x = torch.rand(64, 80) + 1.0
    y = kernels.dropout(x, 0.25, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    assert 0.6 < kept.float().mean().item() < 0.9
    assert kernels.dropout(x, 0.25, training=False) is x and kernels.dropout(x, 0.0, training=True) is x
    assert torch.equal(kernels.dropout(x, 1.0, training=True), torch.zeros_like(x))


def test_dropout_masks_come_from_the_global_generator_so_a_seed_repeats_them():
    x = torch.ones(8, 128, 128)
    torch.manual_seed(3)
    a = kernels.dropout(x, 0.1, True)
    torch.manual_seed(3)
    assert torch.equal(a, kernels.dropout(x, 0.1, True))


def test_attention_with_dropout_is_the_textbook_formula(monkeypatch):
    """With a mask that keeps everything, the dropout path must equal torch's causal SDPA (values
    and gradients); with a real mask, the dropped weights are exactly the zeros."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def grads(fn):
        for t in (q, k, v):
            t.grad = None
        out = fn()
        out.square().sum().backward()
        return out.detach(), [t.grad.clone() for t in (q, k, v)]

    monkeypatch.setattr(kernels, "keep_mask", lambda shape, p, device: torch.ones(shape, dtype=torch.bool))
    mine, mine_grads = grads(lambda: kernels.causal_attention(q, k, v, 0.2, training=True))
    ref, ref_grads = grads(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True) / 0.8)
    assert torch.allclose(mine, ref) and all(torch.allclose(a, b) for a, b in zip(mine_grads, ref_grads, strict=True))

    keep = torch.rand(2 * 4, 16, 16) > 0.3
    monkeypatch.setattr(kernels, "keep_mask", lambda shape, p, device: keep.view(shape))
    weights = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(
        torch.ones(16, 16, dtype=torch.bool).triu(1), float("-inf")), dim=-1)
    expected = (weights * keep.view(2, 4, 16, 16) / 0.8) @ v
    assert torch.allclose(kernels.causal_attention(q, k, v, 0.2, training=True), expected)


def test_attention_with_dropout_one_drops_every_weight():
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    assert torch.equal(kernels.causal_attention(q, k, v, 1.0, training=True), torch.zeros(2, 4, 16, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cross_entropy_and_its_gradient_equal_torch(dtype):
    torch.manual_seed(0)
    logits = (torch.randn(64, 300) * 3).to(dtype).requires_grad_()
    targets = torch.randint(0, 300, (64,))
    mine = kernels.cross_entropy(logits, targets)
    (g_mine,) = torch.autograd.grad(mine * 2.0, logits)  # a scaled loss scales the gradient
    ref = F.cross_entropy(logits.float(), targets)
    (g_ref,) = torch.autograd.grad(ref * 2.0, logits)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    assert mine.dtype == torch.float32 and g_mine.dtype == dtype
    assert math.isclose(mine.item(), ref.item(), rel_tol=1e-6)  # computed in float32 from the same logits
    assert torch.allclose(g_mine.float(), g_ref.float(), atol=tol, rtol=tol)


def test_cross_entropy_of_a_hopeless_target_is_exact_not_infinite():
    logits = torch.zeros(2, 5)
    logits[0, 0] = 200.0  # target 1's probability underflows to 0 in float32
    logits.requires_grad_()
    targets = torch.tensor([1, 2])
    mine = kernels.cross_entropy(logits, targets)
    ref = F.cross_entropy(logits, targets)
    assert math.isfinite(mine.item()) and math.isclose(mine.item(), ref.item(), rel_tol=1e-6)
    mine.backward()
    assert torch.isfinite(logits.grad).all()


def test_cross_entropy_ignores_padding_targets_as_torch_does():
    logits = torch.randn(4, 10, requires_grad=True)
    targets = torch.tensor([1, -100, 3, 4])
    assert torch.equal(kernels.cross_entropy(logits, targets), F.cross_entropy(logits, targets))


def test_cross_entropy_refuses_a_second_backward_instead_of_a_wrong_gradient():
    logits = torch.randn(4, 10, requires_grad=True)
    loss = kernels.cross_entropy(logits, torch.tensor([1, 2, 3, 4]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_code_that_torch_compile_traces_gets_torchs_own_ops(monkeypatch):
    """Inductor fuses dropout, attention and the loss itself; the kernels step aside for it."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    x = torch.ones(1000)
    torch.manual_seed(0)
    mine = kernels.dropout(x, 0.5, training=True)
    torch.manual_seed(0)
    assert torch.equal(mine, F.dropout(x, 0.5, training=True))
    logits = torch.randn(4, 10, requires_grad=True)
    assert type(kernels.cross_entropy(logits, torch.tensor([1, 2, 3, 4])).grad_fn).__name__.startswith("NllLoss")
