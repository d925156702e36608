"""Samplers against exact answers: Gaussian data has a closed-form optimal denoiser.

Data: each voxel x0 ~ N(mu, S^2) with mu given by the condition image. Under the forward process
x_t = a x0 + s eps (a = sqrt(ab_t), s = sqrt(1 - ab_t)), x_t ~ N(a mu, a^2 S^2 + s^2), and the
optimal noise prediction is E[eps | x_t] = s (x_t - a mu) / (a^2 S^2 + s^2). Plugged into a sampler
it must produce samples whose per-voxel residual x - mu has mean 0 and standard deviation S.
4096 voxels per image give a standard error of about 1.1 % on the standard deviation.
"""
from __future__ import annotations

import math

import pytest
import torch

from PETDiffusionLib.diffusion.bridge import BrownianBridge
from PETDiffusionLib.diffusion.ddpm import DEFAULT_STEPS, ConditionalDiffusion
from PETDiffusionLib.errors import Cancelled

S = 0.5  # data standard deviation around the conditional mean
MU = torch.linspace(-2.0, 2.0, 64 * 64).view(1, 1, 64, 64)  # condition image = conditional mean


def optimal_eps_net(diffusion: ConditionalDiffusion):
    ab_all = diffusion.alphas_cumprod.float()

    def net(inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, mu = inp[:, :1], inp[:, 1:2]  # channel order: [x_t, cond]
        ab = ab_all[t].view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * S ** 2 + 1 - ab)
    return net


def residual_stats(x: torch.Tensor, mu: torch.Tensor) -> tuple[float, float]:
    r = x - mu
    return float(r.mean()), float(r.std() / S)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp2m"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_each_sampler_at_its_default_steps_reproduces_the_gaussian_target(sampler, schedule):
    d = ConditionalDiffusion(num_train_timesteps=1000, schedule=schedule)
    res = d.sample(optimal_eps_net(d), MU, sampler=sampler, seed=3)
    mean_err, std_ratio = residual_stats(res.mean, MU)
    assert abs(mean_err) < 0.02 * S * 4  # mean within 0.04 (S = 0.5)
    # discretisation at 50 (DDIM) / 20 (DPM-Solver++, logSNR steps) / 250 (DDPM) steps: within 6 %
    assert abs(std_ratio - 1.0) < 0.06, (sampler, schedule, DEFAULT_STEPS[sampler], std_ratio)


def test_samplers_converge_to_the_exact_distribution_with_many_steps():
    d = ConditionalDiffusion(1000, "linear")
    for sampler in ("ddim", "ddpm"):
        res = d.sample(optimal_eps_net(d), MU, steps=1000, sampler=sampler, seed=5)
        mean_err, std_ratio = residual_stats(res.mean, MU)
        assert abs(mean_err) < 0.02 and abs(std_ratio - 1.0) < 0.03, (sampler, std_ratio)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_starting_from_a_noised_data_sample_keeps_the_target_distribution(sampler):
    d = ConditionalDiffusion(1000, "cosine")
    start = MU + S * torch.randn(MU.shape, generator=torch.Generator().manual_seed(11))
    res = d.sample(optimal_eps_net(d), MU, steps=30, sampler=sampler, seed=1,
                   start_image=start, start_fraction=0.3)
    assert len(d.timesteps(30, 0.3)) == 30 and d.timesteps(30, 0.3)[0] == 300
    mean_err, std_ratio = residual_stats(res.mean, MU)
    assert abs(mean_err) < 0.04 and abs(std_ratio - 1.0) < 0.08


def test_same_seed_same_output_different_seed_different_output():
    d = ConditionalDiffusion(100, "cosine")
    net = optimal_eps_net(d)
    a = d.sample(net, MU, steps=10, sampler="ddpm", seed=7).mean
    b = d.sample(net, MU, steps=10, sampler="ddpm", seed=7).mean
    c = d.sample(net, MU, steps=10, sampler="ddpm", seed=8).mean
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.1


def test_n_sample_std_is_zero_for_deterministic_ddim_and_positive_for_ddpm():
    d = ConditionalDiffusion(100, "cosine")
    net = optimal_eps_net(d)
    fixed = torch.randn(MU.shape, generator=torch.Generator().manual_seed(0))
    det = d.sample(net, MU, steps=10, sampler="ddim", eta=0.0, n_samples=3, noise=fixed)
    assert det.samples.shape == (3, 1, 1, 64, 64) and float(det.std.max()) == 0.0
    sto = d.sample(net, MU, steps=10, sampler="ddpm", n_samples=3, seed=2)
    assert float(sto.std.min()) > 0.0
    # three draws of N(mu, S^2): the per-voxel population std averages S * E[chi_2]/sqrt(3) ~ 0.72 S
    assert 0.5 * S < float(sto.std.mean()) < 0.95 * S


def test_progress_reaches_one_and_cancellation_stops_sampling():
    d = ConditionalDiffusion(100, "cosine")
    seen: list[float] = []
    d.sample(optimal_eps_net(d), MU, steps=5, n_samples=2, progress=seen.append)
    assert seen[-1] == 1.0 and seen == sorted(seen)

    def cancel_midway(fraction: float) -> None:
        if fraction > 0.5:
            raise Cancelled("cancelled by the user")
    with pytest.raises(Cancelled):
        d.sample(optimal_eps_net(d), MU, steps=10, progress=cancel_midway)


def test_training_loss_is_zero_for_the_optimal_network_at_zero_noise_level():
    # with a point mass (S -> 0 not needed): the forward process is exactly what the net inverts
    d = ConditionalDiffusion(1000, "cosine")
    x0 = MU.clone()
    noise = torch.randn_like(x0)
    t = torch.tensor([400])
    ab = float(d.alphas_cumprod[400])
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise
    oracle = lambda inp, tt: (inp[:, :1] - math.sqrt(ab) * x0) / math.sqrt(1 - ab)  # noqa: E731
    assert torch.allclose(d.scheduler.add_noise(x0, noise, t), x_t, atol=1e-5)
    assert float(d.training_loss(oracle, x0, MU, loss="l2", t=t, noise=noise)) < 1e-8


# ------------------------------------------------------------------------------------- bridge
def optimal_bridge_net(bridge: BrownianBridge):
    """Exact E[x0 | x_t, y] for x0 ~ N(0.5 y + 1, S^2), returned in the 'grad' parameterisation."""
    m_all, v_all = bridge.m.float(), bridge.var.float()

    def net(inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, y = inp[:, :1], inp[:, 1:2]  # channel order [x_t, cond]; here cond = y
        m, v = m_all[t].view(-1, 1, 1, 1), v_all[t].view(-1, 1, 1, 1)
        mu = 0.5 * y + 1
        x0 = mu + (1 - m) * S ** 2 / ((1 - m) ** 2 * S ** 2 + v) * (x - (1 - m) * mu - m * y)
        return x - x0  # grad objective: x_t - x0
    return net


def test_bridge_constants_follow_bbdm():
    b = BrownianBridge(num_train_timesteps=1000, max_var=1.0)
    assert b.m[0] == pytest.approx(0.001) and b.m[-1] == pytest.approx(0.999)
    assert float(b.var[499]) == pytest.approx(2 * (float(b.m[499]) - float(b.m[499]) ** 2))
    assert len(b.timesteps(200)) == 200 and b.timesteps(200)[0] == 999 and b.timesteps(200)[-1] == 0


@pytest.mark.parametrize("steps,tol", [(200, 0.10), (1000, 0.03)])
def test_bridge_sampler_with_the_exact_posterior_maps_y_to_the_target(steps, tol):
    b = BrownianBridge(num_train_timesteps=1000)
    y = torch.randn((1, 1, 64, 64), generator=torch.Generator().manual_seed(4))
    res = b.sample(optimal_bridge_net(b), y, cond=y, steps=steps, seed=0)
    mean_err, std_ratio = residual_stats(res.mean, 0.5 * y + 1)
    assert abs(mean_err) < 0.03
    # measured: 0.93 at 200 skip steps (variance lost to coarse steps), 0.99 at 1000
    assert abs(std_ratio - 1.0) < tol, std_ratio


def test_bridge_training_target_matches_cpdm_algorithm_1():
    b = BrownianBridge(num_train_timesteps=1000)
    x0, y, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([10, 900])
    x_t, target = b.q_sample(x0, y, t, noise)
    m, sd = b.m[t].float().view(-1, 1, 1, 1), b.var[t].float().sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(x_t, (1 - m) * x0 + m * y + sd * noise, atol=1e-6)
    assert torch.allclose(target, m * (y - x0) + sd * noise, atol=1e-6)
    exact = lambda inp, tt: inp[:, :1] - x0  # noqa: E731  (x_t - x0 is the 'grad' target)
    assert float(b.training_loss(exact, x0, y, cond=torch.zeros_like(y), t=t, noise=noise)) < 1e-6


def test_bridge_channel_order_is_x_then_y_then_cond():
    b = BrownianBridge(condition_on_y=True)
    x, y, c = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.full((1, 2, 2, 2), 2.0)
    inp = b.net_input(x, y, c)
    assert inp[:, 0].eq(0).all() and inp[:, 1].eq(1).all() and inp[:, 2:].eq(2).all()


def test_bridge_stochastic_samples_differ_and_reproduce():
    b = BrownianBridge(num_train_timesteps=100)
    y = torch.randn(1, 1, 16, 16)
    net = optimal_bridge_net(b)
    r1 = b.sample(net, y, cond=y, steps=20, seed=1, n_samples=2)
    r2 = b.sample(net, y, cond=y, steps=20, seed=1, n_samples=2)
    assert torch.equal(r1.samples, r2.samples) and float(r1.std.min()) > 0
