"""The learning-rate schedule: the book's constant rate, or linear warmup then cosine decay to min_lr."""

from __future__ import annotations

import math

import pytest
from omegaconf import DictConfig, OmegaConf

from trainer.optim import learning_rate_at

LR, MIN_LR, WARMUP, MAX_ITERS = 1e-3, 1e-4, 10, 110


def schedule(name: str, warmup: int = WARMUP) -> DictConfig:
    return OmegaConf.create({"learning_rate": LR, "min_lr": MIN_LR, "warmup_iters": warmup,
                             "max_iters": MAX_ITERS, "lr_schedule": name})


def test_constant_is_the_books_rate_at_every_step():
    cfg = schedule("constant", warmup=0)
    assert {learning_rate_at(step, cfg) for step in range(MAX_ITERS + 1)} == {LR}


def test_warmup_ramps_linearly_to_the_full_rate():
    cfg = schedule("cosine")
    ramp = [learning_rate_at(step, cfg) for step in range(WARMUP)]
    assert ramp[0] == pytest.approx(LR / WARMUP)  # never 0: the first update already moves the weights
    assert ramp == pytest.approx([LR * (s + 1) / WARMUP for s in range(WARMUP)])
    assert ramp[-1] == pytest.approx(LR)


def test_constant_schedule_warms_up_too():
    cfg = schedule("constant")
    assert learning_rate_at(0, cfg) == pytest.approx(LR / WARMUP)
    assert learning_rate_at(WARMUP, cfg) == learning_rate_at(MAX_ITERS, cfg) == LR


def test_cosine_peaks_at_warmup_end_and_reaches_min_lr_at_the_last_step():
    cfg = schedule("cosine")
    assert learning_rate_at(WARMUP, cfg) == pytest.approx(LR)
    halfway = WARMUP + (MAX_ITERS - WARMUP) // 2
    assert learning_rate_at(halfway, cfg) == pytest.approx((LR + MIN_LR) / 2)
    assert learning_rate_at(MAX_ITERS, cfg) == pytest.approx(MIN_LR)
    # the last update (step max_iters - 1) is just above min_lr; the eval at max_iters logs min_lr
    assert MIN_LR < learning_rate_at(MAX_ITERS - 1, cfg) < MIN_LR + (LR - MIN_LR) * 1e-3


def test_cosine_decays_monotonically_after_warmup():
    cfg = schedule("cosine")
    rates = [learning_rate_at(step, cfg) for step in range(WARMUP, MAX_ITERS + 1)]
    assert all(a > b for a, b in zip(rates[:-1], rates[1:], strict=True))
    assert all(MIN_LR <= r <= LR for r in rates)


def test_cosine_without_warmup_starts_at_the_full_rate():
    cfg = schedule("cosine", warmup=0)
    assert learning_rate_at(0, cfg) == LR
    assert learning_rate_at(MAX_ITERS, cfg) == pytest.approx(MIN_LR)
    assert math.isclose(learning_rate_at(MAX_ITERS // 2, cfg), (LR + MIN_LR) / 2)
