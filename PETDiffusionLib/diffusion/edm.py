"""EDM (Karras et al. 2022, arXiv:2206.00364) and residual super-resolution (TotalGen).

TotalGen (seed §2) trains score networks in the EDM framework: a global low-resolution PET/CT volume
from demographics, then a residual diffusion model R = I_HR - I_LU on the linear upsampling I_LU of
the low-resolution volume (seed eq. 4, I_SR = I_LU + R), sampled with 35 and 100 steps.

Network convention: the raw network F is called ``net(cat([c_in * x, cond], 1), c_noise)`` with
``c_noise`` a float tensor [B]; the denoiser is D(x; sigma) = c_skip x + c_out F (Karras eq. 7).
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F

from PETDiffusionLib.diffusion.sampling import ProgressFn, SampleResult, draw_samples, randn, report

log = logging.getLogger(__name__)

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]

# Karras et al. 2022, Table 1 ("EDM" column) and §5 (training distribution of sigma)
SIGMA_DATA = 0.5
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
P_MEAN, P_STD = -1.2, 1.2
DEFAULT_STEPS = 35
"""TotalGen seed §3: 35 sampling steps for the global stage (100 for super-resolution). Karras's 18
steps (Table 1) leave the Gaussian test's std 5 % too high; 35 steps bring it within 2 %."""
SR_DEFAULT_STEPS = 100  # TotalGen seed §3


def karras_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  rho: float = RHO) -> list[float]:
    """Noise levels sigma_0 > ... > sigma_{N-1}, then sigma_N = 0 (Karras eq. 5)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, not {steps}")
    if steps == 1:
        return [sigma_max, 0.0]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + i / (steps - 1) * (b - a)) ** rho for i in range(steps)] + [0.0]


def edm_preconditioning(sigma: torch.Tensor | float, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) of Karras Table 1 / eq. 7."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def heun_sample(denoise: Denoiser, x: torch.Tensor, sigmas: list[float],
                generator: torch.Generator | None = None, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
                progress: ProgressFn | None = None) -> torch.Tensor:
    """Karras et al. 2022 Algorithm 2 (deterministic when s_churn = 0, then Algorithm 1).

    ``x`` starts at sigma_0 (x_0 ~ N(0, sigma_0^2 I)); ``sigmas`` ends with 0.
    """
    n = len(sigmas) - 1
    for i in range(n):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        # lines 4-6: optionally raise the noise level to t_hat ("churn")
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= t_cur <= s_tmax else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            x = x + math.sqrt(t_hat ** 2 - t_cur ** 2) * s_noise * randn(x.shape, generator, x)
        # lines 7-8: Euler step
        d = (x - denoise(x, t_hat)) / t_hat
        x_next = x + (t_next - t_hat) * d
        # lines 9-11: second-order (Heun) correction unless stepping to sigma = 0
        if t_next > 0:
            d_next = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x + (t_next - t_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
        report(progress, (i + 1) / n)
    return x


class EDM:
    """EDM preconditioning, training loss (Karras eq. 2 with lambda = 1/c_out^2) and Heun sampling."""

    def __init__(self, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN,
                 sigma_max: float = SIGMA_MAX, rho: float = RHO, p_mean: float = P_MEAN,
                 p_std: float = P_STD):
        self.sigma_data, self.sigma_min, self.sigma_max, self.rho = sigma_data, sigma_min, sigma_max, rho
        self.p_mean, self.p_std = p_mean, p_std

    def denoise(self, net: Net, x: torch.Tensor, sigma: torch.Tensor | float,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) (Karras eq. 7); sigma scalar or [B]."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data)
        view = (-1,) + (1,) * (x.dim() - 1)
        c_skip, c_out, c_in = (c.to(x.dtype).view(view) for c in (c_skip, c_out, c_in))
        inp = c_in * x if cond is None else torch.cat([c_in * x, cond.to(x.dtype)], 1)
        out = net(inp, c_noise.to(torch.float32))
        return c_skip * x + c_out * out.to(x.dtype)

    def training_loss(self, net: Net, x0: torch.Tensor, cond: torch.Tensor | None = None,
                      sigma: torch.Tensor | None = None, noise: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Karras eq. 2 and §5: ln(sigma) ~ N(P_mean, P_std^2), weight lambda(sigma) = 1 / c_out^2."""
        b = x0.shape[0]
        if sigma is None:
            sigma = (torch.randn(b, device=x0.device) * self.p_std + self.p_mean).exp()
        if noise is None:
            noise = torch.randn_like(x0)
        view = (-1,) + (1,) * (x0.dim() - 1)
        d = self.denoise(net, x0 + sigma.view(view).to(x0.dtype) * noise, sigma, cond)
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        return (weight.view(view).to(x0.dtype) * (d.float() - x0.float()) ** 2).mean()

    def sigmas(self, steps: int) -> list[float]:
        return karras_sigmas(steps, self.sigma_min, self.sigma_max, self.rho)

    @torch.no_grad()
    def sample(self, net: Net, shape: tuple[int, ...] | None = None,
               cond: torch.Tensor | None = None, steps: int = DEFAULT_STEPS, seed: int = 0,
               n_samples: int = 1, s_churn: float = 0.0, progress: ProgressFn | None = None,
               noise: torch.Tensor | None = None, device: torch.device | str | None = None
               ) -> SampleResult:
        """Heun sampling from N(0, sigma_max^2) to the data; deterministic for s_churn = 0.

        Output shape: ``shape``, else ``cond`` with one channel. ``noise``: a fixed standard
        normal start (then the deterministic sampler gives identical samples). ``device``: where
        to sample when there is no ``cond`` (default CPU).
        """
        if shape is None:
            if cond is None:
                raise ValueError("give shape or cond")
            shape = (cond.shape[0], 1, *cond.shape[2:])
        ref = cond if cond is not None else torch.empty(0, device=device or "cpu")
        sigmas = self.sigmas(steps)

        def one_sample(gen: torch.Generator, prog: ProgressFn) -> torch.Tensor:
            z = noise.to(ref.device, ref.dtype) if noise is not None else randn(shape, gen, ref)
            return heun_sample(lambda x, s: self.denoise(net, x, s, cond), sigmas[0] * z, sigmas,
                               gen, s_churn=s_churn, progress=prog)

        return draw_samples(one_sample, n_samples, seed, progress)


class ResidualSuperResolution:
    """EDM on the residual R = I_HR - upsample(I_LR) (TotalGen seed §2, eq. 4; I_SR = I_LU + R).

    The network sees ``cat([c_in * R_sigma, upsample(I_LR), cond])``: the upsampled volume is the
    spatial prior every patch is conditioned on (TotalGen: I_LU), ``cond`` anything else
    (demographic channels, patch coordinates).
    """

    def __init__(self, edm: EDM | None = None, mode: str = "linear"):
        self.edm = edm or EDM()
        self.mode = mode

    def upsample(self, low: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """Linear (bi/trilinear) interpolation to ``size`` (TotalGen: "linear interpolation")."""
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)] if self.mode == "linear" else self.mode
        return F.interpolate(low, size=tuple(size), mode=mode,
                             align_corners=False if mode.endswith("linear") else None)

    def _cond(self, up: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return up if cond is None else torch.cat([up, cond.to(up.dtype)], 1)

    def training_loss(self, net: Net, high: torch.Tensor, low: torch.Tensor,
                      cond: torch.Tensor | None = None) -> torch.Tensor:
        up = self.upsample(low, tuple(high.shape[2:]))
        return self.edm.training_loss(net, high - up, self._cond(up, cond))

    @torch.no_grad()
    def sample(self, net: Net, low: torch.Tensor, size: tuple[int, ...],
               cond: torch.Tensor | None = None, steps: int = SR_DEFAULT_STEPS, seed: int = 0,
               n_samples: int = 1, s_churn: float = 0.0, progress: ProgressFn | None = None
               ) -> SampleResult:
        """I_SR samples = upsample(low) + residual samples (TotalGen: 100 steps)."""
        up = self.upsample(low, tuple(size))
        shape = (up.shape[0], low.shape[1], *up.shape[2:])
        res = self.edm.sample(net, shape=shape, cond=self._cond(up, cond), steps=steps, seed=seed,
                              n_samples=n_samples, s_churn=s_churn, progress=progress)
        samples = up[None] + res.samples
        return SampleResult(mean=samples.mean(0), std=samples.std(0, unbiased=False), samples=samples)
