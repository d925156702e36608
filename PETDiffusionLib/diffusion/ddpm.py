"""Conditional denoising diffusion (DDPM) with DDPM, DDIM and DPM-Solver++(2M) samplers.

The network sees the noisy image and its conditions concatenated along channels,
``net(torch.cat([x_t, cond], 1), t)`` with ``t`` a long tensor [B] of training timesteps
(AMDiff, MFdiff and STMDiff all condition this way). The noise schedule and the forward process
(``add_noise``) come from MONAI's ``DDPMScheduler`` (``clip_sample=False``: SUV data is not in
[-1, 1]). The samplers are written here, each as one short function over an explicit list of
timesteps, because MONAI's ``step`` methods assume a fixed stride from t = T-1; starting from a
noised input at an intermediate step (``start_fraction``) needs an arbitrary list.

Notation: ab_t = alpha-bar_t (cumulative product of alphas), x_t = sqrt(ab_t) x0 + sqrt(1-ab_t) eps
(Ho et al. 2020, eq. 4). :func:`x0_from_epsilon` and :func:`epsilon_from_x0` are the one place that
inverts it; :class:`ClippedEpsilon` keeps the implied x0 of an epsilon network inside [-1, 1].
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDPMScheduler

from PETDiffusionLib.diffusion.sampling import ProgressFn, SampleResult, draw_samples, randn, report

log = logging.getLogger(__name__)

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Denoiser = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
"""denoise(x_t, t) -> (x0_hat, eps_hat)."""

SCHEDULES = {"cosine": "cosine", "linear": "linear_beta"}
"""Our names -> MONAI's. Cosine: Nichol & Dhariwal 2021 eq. 17 (AMDiff seed, §3.4: "cosine variance
scheduler"); linear: Ho et al. 2020 §4, beta from 1e-4 to 0.02."""


# --------------------------------------------------------------------------------------------
# x0 <-> epsilon (Ho et al. 2020, eq. 4 solved for x0, and for eps)
# --------------------------------------------------------------------------------------------
def _sqrt_ab(alpha_bar: float | torch.Tensor):
    """(sqrt(ab), sqrt(1 - ab)) as floats or tensors (1 - ab kept above 1e-12: sqrt stays finite)."""
    if isinstance(alpha_bar, torch.Tensor):
        return alpha_bar.sqrt(), (1 - alpha_bar).clamp_min(1e-12).sqrt()
    return math.sqrt(alpha_bar), math.sqrt(max(1 - alpha_bar, 1e-12))


def x0_from_epsilon(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float | torch.Tensor,
                    clip: float | None = None) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab); ``clip``: clamp x0 to [-clip, clip].

    ``alpha_bar`` is a float (one timestep) or a tensor broadcasting against ``x_t`` ([B,1,1,1]).
    """
    a, s = _sqrt_ab(alpha_bar)
    x0 = (x_t - s * eps) / a
    return x0 if clip is None else x0.clamp(-clip, clip)


def epsilon_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: float | torch.Tensor
                    ) -> torch.Tensor:
    """eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""
    a, s = _sqrt_ab(alpha_bar)
    return (x_t - a * x0) / s


class ClippedEpsilon(torch.nn.Module):
    """Wraps an epsilon-predicting network ``net(cat[x_t, cond], t)`` so that its implied x0 stays
    in [-1, 1].

    For data mapped to [-1, 1], clipping the x0 estimate to that range at every step is the DDPM
    practice (Ho et al. 2020, sampling with clipped x0). It matters for an epsilon network near
    t = T, where alpha-bar_T of the cosine schedule is ~4e-8 and x0 = (x_t - sqrt(1 - ab) eps) /
    sqrt(ab) multiplies any error in eps by ~5000. ``x_t`` is channel 0 of the network input.
    """

    def __init__(self, net: torch.nn.Module, alphas_cumprod: torch.Tensor, clip: float = 1.0):
        super().__init__()
        self.net = net
        self.clip = float(clip)
        self.register_buffer("ab", alphas_cumprod.float().clone(), persistent=False)

    def forward(self, inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.net(inp, t)
        x = inp[:, :1]
        ab = self.ab.to(x.device)[t.long()].view(-1, 1, 1, 1)
        return epsilon_from_x0(x, x0_from_epsilon(x, eps, ab, self.clip), ab)


# --------------------------------------------------------------------------------------------
# Samplers: each one short function; ``alpha_bars`` holds ab at each timestep of ``timesteps``
# followed by 1.0 (the clean image, t = -1).
# --------------------------------------------------------------------------------------------
def ddim_sample(denoise: Denoiser, x: torch.Tensor, timesteps: list[int], alpha_bars: list[float],
                eta: float, generator: torch.Generator, progress: ProgressFn | None = None
                ) -> torch.Tensor:
    """DDIM, Song et al. 2021 (arXiv:2010.02502) eq. 12 with sigma_t(eta) from eq. 16.

    eta = 0: the deterministic DDIM ODE sampler; eta = 1: the ancestral DDPM sampler.
    """
    for i, t in enumerate(timesteps):
        ab_t, ab_s = alpha_bars[i], alpha_bars[i + 1]
        x0, eps = denoise(x, t)
        # eq. 16: sigma = eta * sqrt((1 - ab_s) / (1 - ab_t)) * sqrt(1 - ab_t / ab_s)
        sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
        # eq. 12: x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z
        x = math.sqrt(ab_s) * x0 + math.sqrt(max(1 - ab_s - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * randn(x.shape, generator, x)
        report(progress, (i + 1) / len(timesteps))
    return x


def ddpm_sample(denoise: Denoiser, x: torch.Tensor, timesteps: list[int], alpha_bars: list[float],
                generator: torch.Generator, progress: ProgressFn | None = None) -> torch.Tensor:
    """Ancestral DDPM, Ho et al. 2020 (arXiv:2006.11239) Algorithm 2, with the posterior
    q(x_s | x_t, x0) of eq. 6-7 taken between strided timesteps s < t (Nichol & Dhariwal 2021 §4).
    """
    for i, t in enumerate(timesteps):
        ab_t, ab_s = alpha_bars[i], alpha_bars[i + 1]
        beta = 1 - ab_t / ab_s  # beta of the (strided) step s -> t
        x0, _ = denoise(x, t)
        # eq. 7: posterior mean and variance
        mean = (math.sqrt(ab_s) * beta / (1 - ab_t)) * x0 \
            + (math.sqrt(ab_t / ab_s) * (1 - ab_s) / (1 - ab_t)) * x
        var = (1 - ab_s) / (1 - ab_t) * beta
        x = mean + math.sqrt(var) * randn(x.shape, generator, x) if var > 0 else mean
        report(progress, (i + 1) / len(timesteps))
    return x


def dpmpp_2m_sample(denoise: Denoiser, x: torch.Tensor, timesteps: list[int],
                    alpha_bars: list[float], progress: ProgressFn | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 (arXiv:2211.01095) Algorithm 2, data prediction.

    alpha_t = sqrt(ab_t), sigma_t = sqrt(1 - ab_t), lambda_t = log(alpha_t / sigma_t); the last step
    goes to sigma = 0, where the update reduces to x = x0_hat (first order at the final step).
    """
    alphas = [math.sqrt(ab) for ab in alpha_bars]
    sigmas = [math.sqrt(max(1 - ab, 0.0)) for ab in alpha_bars]
    lambdas = [math.log(a / s) if s > 0 else math.inf for a, s in zip(alphas, sigmas)]
    x0_prev, h_prev = None, None
    for i, t in enumerate(timesteps):
        x0, _ = denoise(x, t)
        if sigmas[i + 1] == 0:
            x = x0
        else:
            h = lambdas[i + 1] - lambdas[i]
            if x0_prev is None:
                d = x0  # first step: DPM-Solver++(1), i.e. DDIM
            else:
                r = h_prev / h  # Alg. 2: r_i = h_{i-1} / h_i
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            # Alg. 2: x_{t_i} = sigma_i / sigma_{i-1} x - alpha_i (e^{-h_i} - 1) D_i
            x = (sigmas[i + 1] / sigmas[i]) * x - alphas[i + 1] * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        report(progress, (i + 1) / len(timesteps))
    return x


SAMPLERS = ("ddim", "ddpm", "dpmpp2m")
DEFAULT_STEPS = {"ddim": 50, "ddpm": 250, "dpmpp2m": 20}
"""Default network evaluations per sampler: DDIM 10-50 (Song et al. 2021, Table 1), DPM-Solver++
10-20 (Lu et al. 2022, §6), DDPM 250 (AMDiff seed §3.4, T = 250); PHYSICS.md §6. The sampler tests
check each default against the closed-form Gaussian answer."""


class ConditionalDiffusion:
    """A DDPM whose network takes ``cat([x_t, cond], 1)`` and a timestep, MONAI schedule underneath.

    ``prediction`` is what the network outputs: "epsilon" (Ho et al. 2020), "sample" (x0) or
    "v_prediction" (Salimans & Ho 2022, v = sqrt(ab) eps - sqrt(1-ab) x0).
    """

    def __init__(self, num_train_timesteps: int = 1000, schedule: str = "cosine",
                 prediction: str = "epsilon", **schedule_args):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, not {schedule!r}")
        if prediction not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"prediction must be epsilon, sample or v_prediction, not {prediction!r}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.schedule = schedule
        self.prediction = prediction
        self.scheduler = DDPMScheduler(num_train_timesteps=self.num_train_timesteps,
                                       schedule=SCHEDULES[schedule], clip_sample=False,
                                       prediction_type=prediction, **schedule_args)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.double()

    # ------------------------------------------------------------------------------ training
    def training_loss(self, net: Net, x0: torch.Tensor, cond: torch.Tensor | None,
                      loss: str = "l1", t: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
        """Ho et al. 2020 Algorithm 1 with the network target set by ``prediction``.

        ``loss`` "l1" (AMDiff, §3.4) or "l2" (Ho et al.). ``t`` and ``noise`` are drawn when None.
        """
        b = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_train_timesteps, (b,), device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.scheduler.add_noise(x0, noise, t)
        out = net(self._net_input(x_t, cond), t)
        if self.prediction == "epsilon":
            target = noise
        elif self.prediction == "sample":
            target = x0
        else:
            target = self.scheduler.get_velocity(x0, noise, t)
        if loss == "l1":
            return F.l1_loss(out.float(), target.float())
        if loss == "l2":
            return F.mse_loss(out.float(), target.float())
        raise ValueError(f"loss must be l1 or l2, not {loss!r}")

    @staticmethod
    def _net_input(x_t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return x_t if cond is None else torch.cat([x_t, cond.to(x_t.dtype)], 1)

    # ------------------------------------------------------------------------------ sampling
    def timesteps(self, steps: int, start_fraction: float | None = None, spacing: str = "time"
                  ) -> list[int]:
        """``steps`` distinct training timesteps from the start (T-1, or start_fraction*T) down to 0.

        spacing "time": evenly spaced in t (DDIM, Song et al. 2021 §4.2); "logsnr": evenly spaced in
        lambda = log(alpha/sigma), DPM-Solver's "logSNR" step sizes (Lu et al. 2022, §3.3), which the
        Gaussian test shows it needs (20 time-uniform steps overshoot the std by 9-25 %); each is
        rounded to the nearest timestep, nudged where two coincide.
        """
        t_start = self.num_train_timesteps - 1
        if start_fraction is not None:
            if not 0.0 < start_fraction <= 1.0:
                raise ValueError(f"start_fraction must be in (0, 1], not {start_fraction}")
            t_start = min(t_start, max(0, round(start_fraction * self.num_train_timesteps)))
        steps = max(1, min(int(steps), t_start + 1))
        if spacing == "time":
            ts = torch.linspace(t_start, 0, steps).round().long().tolist()
        elif spacing == "logsnr":
            ab = self.alphas_cumprod[: t_start + 1]
            lam = 0.5 * torch.log(ab / (1 - ab))
            targets = torch.linspace(float(lam[t_start]), float(lam[0]), steps)
            ts = [int(torch.argmin((lam - v).abs())) for v in targets]
        else:
            raise ValueError(f"spacing must be time or logsnr, not {spacing!r}")
        ts[0], ts[-1] = t_start, 0
        # make them strictly decreasing within [0, t_start]: push coinciding ones up from the
        # bottom, then cap from the top (feasible because steps <= t_start + 1)
        for i in range(len(ts) - 2, -1, -1):
            ts[i] = max(ts[i], ts[i + 1] + 1)
        ts[0] = t_start
        for i in range(1, len(ts)):
            ts[i] = min(ts[i], ts[i - 1] - 1)
        return ts

    def denoiser(self, net: Net, cond: torch.Tensor | None) -> Denoiser:
        """denoise(x_t, t) -> (x0_hat, eps_hat) from the network's output (Ho et al. eq. 15)."""
        def denoise(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
            ab = float(self.alphas_cumprod[t])
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            out = net(self._net_input(x, cond), tt).to(x.dtype)
            if self.prediction == "epsilon":
                return x0_from_epsilon(x, out, ab), out
            if self.prediction == "sample":
                return out, epsilon_from_x0(x, out, ab)
            a, s = math.sqrt(ab), math.sqrt(1 - ab)
            return a * x - s * out, s * x + a * out  # v-prediction
        return denoise

    @torch.no_grad()
    def sample(self, net: Net, cond: torch.Tensor | None, steps: int | None = None,
               sampler: str = "ddim",
               seed: int = 0, n_samples: int = 1, start_image: torch.Tensor | None = None,
               start_fraction: float | None = None, progress: ProgressFn | None = None,
               eta: float = 0.0, noise: torch.Tensor | None = None,
               shape: tuple[int, ...] | None = None) -> SampleResult:
        """Draw ``n_samples`` images; returns their mean, per-voxel std and the samples.

        The output has the shape of ``start_image``, else ``shape``, else ``cond`` with one channel.
        ``start_image`` with ``start_fraction`` in (0, 1]: the reverse process starts from
        start_image noised to t = start_fraction*T (forward process, eq. 4) instead of pure noise,
        so that ``steps`` steps cover [0, start_fraction*T] only. ``steps`` None: DEFAULT_STEPS.
        ``noise``: a fixed initial noise (then DDIM with eta=0 is fully deterministic).
        ``eta`` applies to "ddim" only.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
        if (start_image is None) != (start_fraction is None):
            raise ValueError("start_image and start_fraction go together")
        if start_image is not None:
            shape = tuple(start_image.shape)
        elif shape is None:
            if cond is None:
                raise ValueError("give shape, cond or start_image")
            shape = (cond.shape[0], 1, *cond.shape[2:])
        ref = start_image if start_image is not None else cond
        ts = self.timesteps(DEFAULT_STEPS[sampler] if steps is None else steps, start_fraction,
                            spacing="logsnr" if sampler == "dpmpp2m" else "time")
        alpha_bars = [float(self.alphas_cumprod[t]) for t in ts] + [1.0]
        denoise = self.denoiser(net, cond)

        def one_sample(gen: torch.Generator, prog: ProgressFn) -> torch.Tensor:
            eps = noise.to(ref.device, ref.dtype) if noise is not None else randn(shape, gen, ref)
            if start_image is not None:
                ab = alpha_bars[0]
                x = math.sqrt(ab) * start_image + math.sqrt(1 - ab) * eps
            else:
                x = eps
            if sampler == "ddim":
                return ddim_sample(denoise, x, ts, alpha_bars, eta, gen, prog)
            if sampler == "ddpm":
                return ddpm_sample(denoise, x, ts, alpha_bars, gen, prog)
            return dpmpp_2m_sample(denoise, x, ts, alpha_bars, prog)

        log.debug("%s: %d steps from t=%d, %d sample(s)", sampler, len(ts), ts[0], n_samples)
        return draw_samples(one_sample, n_samples, seed, progress)
