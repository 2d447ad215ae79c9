"""DAT's building blocks on their own: the LALR optimizer against a hand-computed update, and the gradient
compressors' unbiasedness, value sets and payloads."""

from __future__ import annotations

import math

import pytest
import torch

from advsuite.distributed import LALR, dequantize, natural_compress, quantize
from advsuite.errors import ConfigError


def assert_unbiased(draws: torch.Tensor, target: torch.Tensor, variance: torch.Tensor) -> None:
    """Every element's mean over the draws is within 4.5 of its exact standard errors of the target."""
    gap = (draws.mean(0) - target).abs()
    exact = variance == 0  # always the same value: it must be the target itself
    assert float(torch.cat([gap[exact], torch.zeros(1)]).max()) < 1e-6
    z = gap[~exact] / (variance[~exact] / len(draws)).sqrt()
    assert float(z.max()) < 4.5, float(z.max())


def test_lalr_matches_a_hand_computed_two_step_update() -> None:
    w0 = torch.tensor([3.0, 4.0])  # norm 5
    p = torch.nn.Parameter(w0.clone())
    opt = LALR([p], lr=0.1, betas=(0.5, 0.75), eps=1e-8, weight_decay=0.0)
    g = torch.tensor([1.0, -2.0])
    m = v = torch.zeros(2)
    w = w0.clone()
    for _ in range(2):
        p.grad = g.clone()
        opt.step()
        m, v = 0.5 * m + 0.5 * g, 0.75 * v + 0.25 * g * g  # no bias correction, as DAT's code
        u = m / (v.sqrt() + 1e-8)
        w = w - 0.1 * (w.norm() / u.norm()) * u  # each layer moves lr x its own weight norm
    assert torch.allclose(p.detach(), w, atol=1e-6)
    # the step moved the weights by exactly lr x ||w|| (the trust ratio makes the step size scale-free)
    assert math.isclose(float((w0 - lalr_one_step(w0, g)).norm()), 0.1 * 5.0, rel_tol=1e-5)


def lalr_one_step(w0: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    p = torch.nn.Parameter(w0.clone())
    p.grad = g.clone()
    LALR([p], lr=0.1, weight_decay=0.0).step()
    return p.detach()


def test_lalr_clamps_the_weight_norm_and_leaves_zero_weights_to_a_unit_ratio() -> None:
    big = torch.full((4,), 50.0)  # norm 100, clamped to max_weight_norm 10
    assert math.isclose(float((big - lalr_one_step(big, torch.ones(4))).norm()), 0.1 * 10.0, rel_tol=1e-5)
    zero = torch.zeros(4)  # trust ratio 1: the plain Adam-style step
    p = torch.nn.Parameter(zero.clone())
    p.grad = torch.ones(4)
    LALR([p], lr=0.1, weight_decay=0.0, eps=1e-8).step()
    u = 0.1 / (math.sqrt(0.001) + 1e-8)
    assert torch.allclose(p.detach(), torch.full((4,), -0.1 * u), rtol=1e-5)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        LALR([p], lr=0.0)


@pytest.mark.parametrize("bits", [1, 4, 7])
def test_the_quantiser_is_unbiased_and_stays_on_its_levels(bits: int) -> None:
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(200, generator=gen)
    draws = torch.stack([dequantize(quantize(g, bits, gen)) for _ in range(2000)])
    levels = (1 << bits) - 1
    grid = draws / g.norm() * levels  # every value sits on a level: sign x k / s x norm
    assert torch.allclose(grid, grid.round(), atol=1e-3) and int(grid.abs().max()) <= levels
    # the mean of 2000 draws is within 4.5 standard errors of g for every element (a biased rounding is not):
    # each element is n/s x (floor + Bernoulli(frac)), so its variance is (n/s)^2 frac (1 - frac)
    scaled = g.abs() / g.norm() * levels
    frac = scaled - scaled.floor()
    assert_unbiased(draws, g, (g.norm() / levels) ** 2 * frac * (1 - frac))
    q = quantize(g, bits, gen)
    assert q.codes.dtype == torch.uint8 and q.payload_bytes == 200 + 4


def test_the_quantiser_refuses_bits_that_leave_no_room_for_the_sign() -> None:
    with pytest.raises(ConfigError, match="bits must be a whole number in \\[1, 7\\]"):
        quantize(torch.ones(3), bits=8)
    assert torch.equal(dequantize(quantize(torch.zeros(5))), torch.zeros(5))  # a zero gradient stays zero


def test_natural_compression_is_unbiased_on_powers_of_two() -> None:
    gen = torch.Generator().manual_seed(1)
    t = torch.cat([torch.randn(300, generator=gen) * 3, torch.zeros(2), torch.tensor([0.25, -4.0])])
    draws = torch.stack([natural_compress(t, gen) for _ in range(2000)])
    nonzero = draws[draws != 0].abs()
    assert torch.equal(torch.exp2(torch.log2(nonzero).round()), nonzero)  # only powers of two
    assert torch.equal(draws[:, 300:302], torch.zeros(2000, 2))  # zeros stay zero
    assert torch.equal(draws[:, -2:], t[-2:].expand(2000, 2))  # powers of two are kept exactly
    low = torch.exp2(torch.floor(torch.log2(t.abs().clamp_min(1e-30))))
    assert_unbiased(draws, t, ((2 * low - t.abs()) * (t.abs() - low)).clamp_min(0))
    # the variance bound of Horvath et al.: E||C(t) - t||^2 <= ||t||^2 / 8
    assert float(((draws - t) ** 2).sum(1).mean()) <= float(t.norm() ** 2) / 8
