"""Brownian-bridge diffusion (BBDM, Li et al. 2023, arXiv:2205.07680) as used by CPDM.

The bridge runs from the target x0 (PET, or its latent) at t = 0 to the source y (CT, or its latent)
at t = T: x_t = (1 - m_t) x0 + m_t y + sqrt(var_t) eps (BBDM eq. 3; CPDM eq. 1), with
m_t = linspace(0.001, 0.999, T) and var_t = 2 (m_t - m_t^2) max_var (BBDM §3.1 and its reference
code; CPDM seed §4 cites BBDM for the formulation). With the 'grad' objective the network predicts
m_t (y - x0) + sqrt(var_t) eps (CPDM Algorithm 1 line 6; BBDM eq. 11), under an L1 loss (CPDM).

Channel order of the network input, always: ``[x_t, y (only if condition_on_y), cond (if given)]``,
then ``net(input, t)`` with ``t`` a long tensor [B] of training timesteps. CPDM concatenates
x_t with its attention and attenuation maps (Algorithm 1: concat(x_t, M_sigma, M_mu)), i.e.
``condition_on_y=False`` and ``cond = cat([M_sigma, M_mu], 1)``.
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

M_MIN, M_MAX = 0.001, 0.999
"""Ends of m_t = linspace(0.001, 0.999, T) (BBDM reference code, 'linear' m schedule)."""


def bridge_sample(predict_x0: Callable[[torch.Tensor, int], torch.Tensor], y: torch.Tensor,
                  timesteps: list[int], m: list[float], var: list[float], eta: float,
                  generator: torch.Generator, progress: ProgressFn | None = None) -> torch.Tensor:
    """BBDM skip sampling (Li et al. 2023, §3.2.2 eq. 13-14 and Algorithm 2), DDIM-like.

    Start at x_T = y (CPDM Algorithm 2 line 1). Between consecutive timesteps t > s:
      x0_hat = predict_x0(x_t, t)
      eps_hat = (x_t - (1 - m_t) x0_hat - m_t y) / sqrt(var_t)
      sigma_s^2 = eta^2 (var_t - var_s (1 - m_t)^2 / (1 - m_s)^2) var_s / var_t   (eq. 14)
      x_s = (1 - m_s) x0_hat + m_s y + sqrt(var_s - sigma_s^2) eps_hat + sigma_s z
    and at the final timestep return x0_hat.
    """
    x = y
    for i, t in enumerate(timesteps):
        x0 = predict_x0(x, t)
        if i + 1 == len(timesteps):
            x = x0
        else:
            s = timesteps[i + 1]
            var_ts = var[t] - var[s] * (1 - m[t]) ** 2 / (1 - m[s]) ** 2  # delta_{t|s}, CPDM eq. 2
            sigma2 = eta ** 2 * var_ts * var[s] / var[t]
            eps = (x - (1 - m[t]) * x0 - m[t] * y) / math.sqrt(var[t])
            x = (1 - m[s]) * x0 + m[s] * y + math.sqrt(max(var[s] - sigma2, 0.0)) * eps
            if sigma2 > 0:
                x = x + math.sqrt(sigma2) * randn(x.shape, generator, x)
        report(progress, (i + 1) / len(timesteps))
    return x


class BrownianBridge:
    """BBDM/CPDM Brownian bridge: training loss and skip sampler (y at t=T -> x0 at t=0)."""

    OBJECTIVES = ("grad", "noise", "ysubx")

    def __init__(self, num_train_timesteps: int = 1000, max_var: float = 1.0,
                 objective: str = "grad", eta: float = 1.0, condition_on_y: bool = False,
                 loss: str = "l1"):
        if objective not in self.OBJECTIVES:
            raise ValueError(f"objective must be one of {self.OBJECTIVES}, not {objective!r}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.max_var, self.objective, self.eta = float(max_var), objective, float(eta)
        self.condition_on_y, self.loss = bool(condition_on_y), loss
        m = torch.linspace(M_MIN, M_MAX, self.num_train_timesteps, dtype=torch.float64)
        self.m = m
        self.var = 2.0 * (m - m ** 2) * self.max_var  # BBDM eq. 3: delta_t = 2 s (m_t - m_t^2)

    def net_input(self, x_t: torch.Tensor, y: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        parts = [x_t] + ([y] if self.condition_on_y else []) + ([cond] if cond is not None else [])
        return torch.cat([p.to(x_t.dtype) for p in parts], 1)

    def q_sample(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward process (CPDM eq. 1) and the network's training target for this objective."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        m_t = self.m.to(x0.device)[t].view(shape).to(x0.dtype)
        sd_t = self.var.to(x0.device)[t].sqrt().view(shape).to(x0.dtype)
        x_t = (1 - m_t) * x0 + m_t * y + sd_t * noise
        if self.objective == "grad":
            target = m_t * (y - x0) + sd_t * noise  # CPDM Algorithm 1 line 6
        elif self.objective == "noise":
            target = noise
        else:
            target = y - x0
        return x_t, target

    def training_loss(self, net: Net, x0: torch.Tensor, y: torch.Tensor,
                      cond: torch.Tensor | None = None, t: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
        """|| target - net([x_t, y?, cond], t) ||_1 (CPDM Algorithm 1), t ~ U{0..T-1}."""
        if t is None:
            t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t, target = self.q_sample(x0, y, t, noise)
        out = net(self.net_input(x_t, y, cond), t).float()
        return F.l1_loss(out, target.float()) if self.loss == "l1" else F.mse_loss(out, target.float())

    def x0_from_output(self, out: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, t: int
                       ) -> torch.Tensor:
        """Invert the objective: x0_hat from the network output at timestep t."""
        m_t, sd_t = float(self.m[t]), math.sqrt(float(self.var[t]))
        if self.objective == "grad":
            return x_t - out  # x_t - x0 = m_t (y - x0) + sd_t eps
        if self.objective == "noise":
            return (x_t - m_t * y - sd_t * out) / (1 - m_t)
        return y - out

    def timesteps(self, steps: int) -> list[int]:
        """Skip sampling: ``steps`` timesteps evenly spaced from T-1 down to 0 (CPDM: 200 of 1000)."""
        steps = max(2, min(int(steps), self.num_train_timesteps))
        ts = torch.linspace(self.num_train_timesteps - 1, 0, steps).round().long()
        return torch.unique_consecutive(ts).tolist()

    @torch.no_grad()
    def sample(self, net: Net, y: torch.Tensor, cond: torch.Tensor | None = None, steps: int = 200,
               seed: int = 0, n_samples: int = 1, progress: ProgressFn | None = None,
               eta: float | None = None) -> SampleResult:
        """Map y to samples of x0; ``steps`` network evaluations (CPDM default 200, §5.1)."""
        eta = self.eta if eta is None else float(eta)
        ts = self.timesteps(steps)
        m, var = self.m.tolist(), self.var.tolist()

        def predict_x0(x: torch.Tensor, t: int) -> torch.Tensor:
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            return self.x0_from_output(net(self.net_input(x, y, cond), tt).to(x.dtype), x, y, t)

        def one_sample(gen: torch.Generator, prog: ProgressFn) -> torch.Tensor:
            return bridge_sample(predict_x0, y, ts, m, var, eta, gen, prog)

        return draw_samples(one_sample, n_samples, seed, progress)
