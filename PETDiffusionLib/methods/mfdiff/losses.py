"""The training losses: MFdiff's Eq. 9 and the M-UNet baseline's L1 regression."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion


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


def munet_loss(batch: dict, networks: dict):
    """M-UNet (ref. [40]): L1 between the predicted and the standard-dose slice (x units)."""
    pred = networks["munet"](batch["low"], batch["guide"], batch["modality"])
    loss = F.l1_loss(pred, batch["target"])
    return loss, {"l1": float(loss.detach())}
