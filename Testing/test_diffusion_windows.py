"""2.5D slice stacks and 3D sliding windows with Gaussian blending."""
from __future__ import annotations

import torch

from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion
from PETDiffusionLib.diffusion.windows import (WindowedNet, run_slicewise, slices_25d,
                                               window_starts)


def test_slices_25d_stacks_neighbours_and_replicates_the_edges():
    vol = torch.arange(5.0).view(5, 1, 1).expand(5, 2, 3)  # slice z holds the value z
    out = slices_25d(vol, context=1)
    assert out.shape == (5, 3, 2, 3)
    assert out[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]


def test_slices_25d_channel_order_is_channel_major():
    vol = torch.stack([torch.arange(4.0), 10 + torch.arange(4.0)]).view(2, 4, 1, 1)  # [C, Z, 1, 1]
    out = slices_25d(vol, context=1)
    assert out.shape == (4, 6, 1, 1)
    assert out[2, :, 0, 0].tolist() == [1, 2, 3, 11, 12, 13]


def test_run_slicewise_equals_one_big_batch_and_reports_progress():
    x = torch.randn(7, 3, 8, 8)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)
    seen: list[float] = []
    with torch.no_grad():
        out = run_slicewise(conv, x, batch_size=3, progress=seen.append)
        assert torch.allclose(out, conv(x), atol=1e-6)
    assert seen == [3 / 7, 6 / 7, 1.0]


def test_windows_cover_the_volume_with_overlap():
    assert window_starts(20, 8, 0.25) == [0, 6, 12]
    assert window_starts(8, 8, 0.5) == [0]
    assert window_starts(5, 8, 0.5) == [0]


class LinearLocalEps(torch.nn.Module):
    """A linear, local 'network': one 3x3x3 convolution over [x_t, cond], ignoring t."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * self.conv(x)


def test_windowed_linear_local_network_equals_the_unwindowed_one():
    net = LinearLocalEps()
    x = torch.randn(2, 2, 19, 23, 26)
    t = torch.tensor([5, 500])
    with torch.no_grad():
        full = net(x, t)
        win = WindowedNet(net, (8, 8, 8), overlap=0.25, margin=1, batch_size=4)(x, t)
        no_margin = WindowedNet(net, (8, 8, 8), overlap=0.25, margin=0)(x, t)
    assert (win - full).abs().max() < 1e-5
    # without a margin the window edges see zero padding instead of their neighbours
    assert (no_margin - full).abs().max() > 1e-3


class GaussianOptimalPlusConv(torch.nn.Module):
    """Optimal noise prediction for x0 ~ N(cond, 0.25) plus a small 3x3x3 convolution: linear in
    x_t and cond, local, and well scaled so that the samples stay O(1)."""

    def __init__(self, diffusion: ConditionalDiffusion):
        super().__init__()
        self.ab = diffusion.alphas_cumprod.float()
        self.local = LinearLocalEps()

    def forward(self, inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, mu = inp[:, :1], inp[:, 1:2]
        ab = self.ab[t].view(-1, 1, 1, 1, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * 0.25 + 1 - ab) + 0.1 * self.local(inp, t)


def test_a_whole_sampling_run_with_windows_equals_the_unwindowed_run():
    # linear schedule over 100 steps: ab_T ~ 0.36, so x0 = (x - s eps) / a does not amplify float32
    # rounding (the cosine schedule's ab_T ~ 1e-5 would, by ~300x, windowed or not)
    d = ConditionalDiffusion(num_train_timesteps=100, schedule="linear")
    net = GaussianOptimalPlusConv(d)
    cond = torch.randn(1, 1, 12, 20, 20)
    with torch.no_grad():
        full = d.sample(net, cond, steps=8, sampler="ddpm", seed=4).mean
        win = d.sample(WindowedNet(net, (8, 8, 8), overlap=0.5, margin=1), cond, steps=8,
                       sampler="ddpm", seed=4).mean
    assert full.abs().max() < 10
    assert (win - full).abs().max() < 1e-5


def test_window_larger_than_the_volume_is_padded_and_cropped():
    net = LinearLocalEps()
    x = torch.randn(1, 2, 5, 6, 7)
    with torch.no_grad():
        out = WindowedNet(net, (8, 8, 8), margin=1)(x, torch.tensor([0]))
        assert out.shape == (1, 1, 5, 6, 7)
        assert (out - net(x, None)).abs().max() < 1e-5
