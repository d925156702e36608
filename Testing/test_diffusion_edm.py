"""EDM and residual super-resolution against the closed-form Gaussian denoiser.

For x0 ~ N(mu, S^2) per voxel and x = x0 + sigma n, the optimal denoiser is
D(x; sigma) = mu + S^2 / (S^2 + sigma^2) (x - mu). The raw network that EDM's preconditioning turns
into this D is F = (D - c_skip x) / c_out, where the network sees c_in x and c_noise = ln(sigma)/4.
"""
from __future__ import annotations

import math

import pytest
import torch

from PETDiffusionLib.diffusion.edm import (EDM, ResidualSuperResolution, edm_preconditioning,
                                           karras_sigmas)

S = 0.5
MU = torch.linspace(-2.0, 2.0, 64 * 64).view(1, 1, 64, 64)


def optimal_raw_net(edm: EDM, mean_channel: int | None = 1):
    """F such that the preconditioned denoiser is the exact Gaussian one; mu read from a channel
    of the input (or zero when ``mean_channel`` is None)."""
    def net(inp: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        sigma = (4 * c_noise.double()).exp().view(-1, 1, 1, 1)
        c_skip, c_out, c_in, _ = edm_preconditioning(sigma, edm.sigma_data)
        x = inp[:, :1].double() / c_in
        mu = 0.0 if mean_channel is None else inp[:, mean_channel:mean_channel + 1].double()
        d = mu + S ** 2 / (S ** 2 + sigma ** 2) * (x - mu)
        return ((d - c_skip * x) / c_out).float()
    return net


def test_preconditioning_and_sigmas_follow_karras_table_1():
    c_skip, c_out, c_in, c_noise = edm_preconditioning(0.5, 0.5)
    assert float(c_skip) == pytest.approx(0.5) and float(c_out) == pytest.approx(0.5 / math.sqrt(2))
    assert float(c_in) == pytest.approx(1 / math.sqrt(0.5)) and float(c_noise) == pytest.approx(math.log(0.5) / 4)
    s = karras_sigmas(18)
    assert len(s) == 19 and s[0] == pytest.approx(80.0) and s[17] == pytest.approx(0.002) and s[18] == 0.0
    assert all(a > b for a, b in zip(s, s[1:]))


def test_deterministic_heun_at_default_steps_reproduces_the_gaussian_target():
    # measured on this test: std ratio 1.05 at Karras's 18 steps, 1.007-1.02 at 35, 0.995-1.009 at 100
    edm = EDM()
    res = edm.sample(optimal_raw_net(edm), cond=MU, seed=2)  # 35 steps (TotalGen), 69 evaluations
    r = res.mean - MU
    assert abs(float(r.mean())) < 0.02
    assert abs(float(r.std()) / S - 1.0) < 0.03


def test_stochastic_heun_reproduces_the_target_too():
    edm = EDM()
    res = edm.sample(optimal_raw_net(edm), cond=MU, seed=2, steps=40, s_churn=20.0)
    r = res.mean - MU
    assert abs(float(r.mean())) < 0.02 and abs(float(r.std()) / S - 1.0) < 0.05


def test_deterministic_sampler_from_fixed_noise_has_zero_std_and_seeds_matter():
    edm = EDM()
    net = optimal_raw_net(edm)
    fixed = torch.randn(MU.shape, generator=torch.Generator().manual_seed(0))
    det = edm.sample(net, cond=MU, steps=6, n_samples=3, noise=fixed)
    assert float(det.std.max()) == 0.0
    a = edm.sample(net, cond=MU, steps=6, seed=1).mean
    assert torch.equal(a, edm.sample(net, cond=MU, steps=6, seed=1).mean)
    assert (a - edm.sample(net, cond=MU, steps=6, seed=2).mean).abs().mean() > 0.1
    sto = edm.sample(net, cond=MU, steps=6, n_samples=3, seed=1)
    assert float(sto.std.min()) > 0


def test_training_loss_vanishes_for_the_exact_denoiser_of_a_point_mass():
    edm = EDM()
    x0 = MU.clone()

    def point_mass(inp, c_noise):  # D = x0 exactly
        sigma = (4 * c_noise.double()).exp().view(-1, 1, 1, 1)
        c_skip, c_out, c_in, _ = edm_preconditioning(sigma, edm.sigma_data)
        x = inp[:, :1].double() / c_in
        return ((x0.double() - c_skip * x) / c_out).float()
    assert float(edm.training_loss(point_mass, x0)) < 1e-6


def test_residual_super_resolution_adds_the_target_residual_to_the_upsampled_input():
    sr = ResidualSuperResolution()
    low = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    # residual ~ N(0, S^2): the network ignores the conditioning channels (mean 0)
    res = sr.sample(optimal_raw_net(sr.edm, mean_channel=None), low, (64, 64), seed=0)  # 100 steps
    up = sr.upsample(low, (64, 64))
    assert res.mean.shape == (1, 1, 64, 64)
    r = res.mean - up
    assert abs(float(r.mean())) < 0.02 and abs(float(r.std()) / S - 1.0) < 0.03
    # the upsampling is linear interpolation: a constant image stays constant
    assert torch.allclose(sr.upsample(torch.full((1, 1, 4, 4), 2.0), (8, 8)), torch.full((1, 1, 8, 8), 2.0))
