"""The training losses: MFdiff's Eq. 9 and the M-UNet baseline's L1 regression."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion
from PETDiffusionLib.methods.mfdiff.networks import x_to_pet


def draw_timesteps(n: int, diffusion: ConditionalDiffusion, t_max_fraction: float,
                   generator: torch.Generator) -> torch.Tensor:
    """Uniform t in [0, t_max_fraction * T): inference starts from the low-dose image noised to
    start_fraction * T <= t_max_fraction * T, so higher t are never sampled and not trained (a
    budget choice for CPU training; the paper trains all T = 1000, Sec. 4.1.3)."""
    t_max = max(1, int(round(t_max_fraction * diffusion.num_train_timesteps)))
    return torch.randint(0, t_max, (n,), generator=generator)  # on the CPU: same draws on any device


def mfdiff_loss(batch: dict, networks: dict, diffusion: ConditionalDiffusion,
                t_max_fraction: float, generator: torch.Generator):
    """Eq. 9: || eps - eps_theta(x_t, t, x_P, x_fusion) ||^2, fusion and U-Net trained jointly."""
    fused = networks["fusion"](batch["low"], batch["guide"], batch["modality"])
    x0 = batch["target"]
    t = draw_timesteps(x0.shape[0], diffusion, t_max_fraction, generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    cond = torch.cat([batch["low"], fused], 1)
    loss = diffusion.training_loss(networks["denoiser"], x0, cond, loss="l2", t=t, noise=noise)
    return loss, {"l_eps": float(loss.detach())}


def mfdiff_x0_loss(batch: dict, networks: dict, diffusion: ConditionalDiffusion,
                   top_fraction: float, generator: torch.Generator, power: float = 2.0):
    """Eq. 9 with the x0 target (``diffusion.prediction == "sample"``), t uniform on [0, T) and a
    share ``top_fraction`` at t = T - 1, where the prediction is the posterior mean of the
    standard-dose slice given the low-dose slices and the fused guide (the one-step estimate
    inference uses); the squared error in x units weighted by (1 + SUV)^power, so that power 2 is to
    first order the SUV mean squared error (as the native denoiser's loss,
    training/native_denoise.native_loss)."""
    fused = networks["fusion"](batch["low"], batch["guide"], batch["modality"])
    x0 = batch["target"]
    b, T = x0.shape[0], diffusion.num_train_timesteps
    t = torch.randint(0, T, (b,), generator=generator)
    top = torch.rand(b, generator=generator) < top_fraction
    t = torch.where(top, torch.full_like(t, T - 1), t).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = diffusion.scheduler.add_noise(x0, noise, t)
    pred = networks["denoiser"](torch.cat([x_t, batch["low"], fused], 1), t)
    w = (1.0 + x_to_pet(x0)) ** power
    err = (pred.float() - x0.float()) ** 2 * w
    loss = err.sum() / w.sum()
    top_d = top.to(x0.device)
    return loss, {"l_x0": float(loss.detach()),
                  "l_top": float(err.detach()[top_d].sum() / w[top_d].sum().clamp_min(1e-6))}


def munet_loss(batch: dict, networks: dict):
    """M-UNet (ref. [40]): L1 between the predicted and the standard-dose slice (x units)."""
    pred = networks["munet"](batch["low"], batch["guide"], batch["modality"])
    loss = F.l1_loss(pred, batch["target"])
    return loss, {"l1": float(loss.detach())}
