"""STMDiff's networks, small enough to train on one CPU core (constructor arguments JSON-able, so a
model card rebuilds them through ``models.card.build_network``).

- :class:`SliceEncoder`: G1 (PET) and G2 (CT) of the matching network (STMDiff §2.1 uses ResNet-19;
  here a 3-stage ResNet): an L2-normalised latent vector for the InfoNCE, a feature map at the
  autoencoder's latent grid (the CT prior of the diffusion condition, Eq. 6) and a body-contour head
  (the Dice term of Eq. 2).
- :class:`SliceAutoencoder`: the image <-> latent map (f = 4) trained here; the paper fine-tunes
  Stable Diffusion's f = 8 VAE, which cannot be downloaded.
- :class:`LatentDenoiser`: the epsilon network on the latent grid, input cat(x_t, c) with
  c = cat(G2 features of the top-k CT slices, NAC latent) (Eq. 6).
- :class:`DetailHead`: not in the paper. A residual refinement of the decoded AC slice from the NAC
  slice at full resolution. The NAC and the AC image are reconstructed from the same counts, so their
  noise textures coincide; a latent of 1/4 resolution cannot carry that texture, and this head puts it
  back (its last convolution starts at zero, so it starts as the identity). With ``ct_slices`` = k
  it also sees the k matched first-scan CT slices at full resolution (the CT prior of Eq. 6 at the
  image grid; the G2 features reach only the 1/4-resolution latent).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from PETDiffusionLib.networks.blocks import TimeResBlock, timestep_embedding

PACKAGE = "PETDiffusionLib.methods.stmdiff.networks"
POOL_GRID = 4  # cells per side of the encoders' pooled map (a 512 mm field of view: 128 mm cells)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.GroupNorm(min(8, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.GroupNorm(min(8, c_out), c_out)
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out
                     else nn.Conv2d(c_in, c_out, 1, stride, bias=False))

    def forward(self, x):
        h = F.silu(self.bn1(self.conv1(x)))
        return F.silu(self.bn2(self.conv2(h)) + self.skip(x))


class SliceEncoder(nn.Module):
    """1-channel slice [B, 1, H, W] (H, W multiples of 8) -> latent [B, dim] (unit L2 norm)."""

    def __init__(self, width: int = 12, dim: int = 64, feature_channels: int = 8, contour_size: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1), nn.SiLU())     # /2
        self.stage1 = ResBlock(width, width * 2, 2)          # /4: the autoencoder's latent grid
        self.stage2 = ResBlock(width * 2, width * 4, 2)      # /8
        self.stage3 = ResBlock(width * 4, width * 4, 1)
        self.features_out = nn.Conv2d(width * 2, feature_channels, 1)
        # a 4x4 grid of pooled cells, flattened: the latent keeps the coarse in-plane layout (body
        # outline, lungs, organs) that tells neighbouring slices apart; global pooling lost it
        self.project = nn.Linear(width * 4 * POOL_GRID * POOL_GRID, dim)
        self.contour = nn.Linear(dim, contour_size * contour_size)
        self.contour_size = contour_size
        self.features_stride = 4  # stem /2 and stage1 /2: the autoencoder's latent grid

    def _trunk(self, x):
        f4 = self.stage1(self.stem(x))
        return f4, self.stage3(self.stage2(f4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, f8 = self._trunk(x)
        return F.normalize(self.project(F.adaptive_avg_pool2d(f8, POOL_GRID).flatten(1)), dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map on the /4 grid [B, feature_channels, H/4, W/4] (the diffusion's CT prior)."""
        return self.features_out(self._trunk(x)[0])

    def contour_logits(self, z: torch.Tensor) -> torch.Tensor:
        s = self.contour_size
        return self.contour(z).view(-1, 1, s, s)


class SliceAutoencoder(nn.Module):
    """[B, 1, H, W] <-> [B, latent_channels, H/4, W/4]; deterministic (L1-trained)."""

    def __init__(self, channels: tuple[int, int] = (8, 32), latent_channels: int = 4):
        super().__init__()
        c1, c2 = channels
        self.enc = nn.Sequential(nn.Conv2d(1, c1, 3, 1, 1), nn.SiLU(), ResBlock(c1, c2, 2),
                                 ResBlock(c2, c2, 2), nn.Conv2d(c2, latent_channels, 1))
        self.dec = nn.Sequential(nn.Conv2d(latent_channels, c2, 3, 1, 1), nn.SiLU(), ResBlock(c2, c2),
                                 nn.Upsample(scale_factor=2, mode="nearest"), ResBlock(c2, c2 // 2),
                                 nn.Upsample(scale_factor=2, mode="nearest"),
                                 nn.Conv2d(c2 // 2, c1, 3, 1, 1), nn.SiLU(), nn.Conv2d(c1, 1, 3, 1, 1))

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return self.dec(z)

    def forward(self, x):
        return self.decode(self.encode(x))


class LatentDenoiser(nn.Module):
    """eps_theta(cat(x_t, c), t) on the latent grid: a two-level U-Net of TimeResBlocks."""

    def __init__(self, in_channels: int, out_channels: int = 4, channels: int = 32, t_dim: int = 64):
        super().__init__()
        self.t_dim = t_dim
        self.t_mlp = nn.Sequential(nn.Linear(t_dim, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.inp = nn.Conv2d(in_channels, channels, 3, 1, 1)
        self.d1 = TimeResBlock(channels, channels, t_dim)
        self.down = nn.Conv2d(channels, channels * 2, 3, 2, 1)
        self.d2 = TimeResBlock(channels * 2, channels * 2, t_dim)
        self.mid = TimeResBlock(channels * 2, channels * 2, t_dim)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.u1 = TimeResBlock(channels * 3, channels, t_dim)
        self.u2 = TimeResBlock(channels, channels, t_dim)
        self.out = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, 1, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.t_mlp(timestep_embedding(t, self.t_dim))
        h1 = self.d1(self.inp(x), temb)
        h2 = self.mid(self.d2(self.down(h1), temb), temb)
        h = self.u1(torch.cat([self.up(h2), h1], 1), temb)
        return self.out(self.u2(h, temb))


class DetailHead(nn.Module):
    """(decoded AC [B, 1, H, W], NAC [B, 1, H, W][, matched CT [B, ct_slices, H, W]]) ->
    decoded + r(decoded, NAC[, CT]) (module docstring)."""

    def __init__(self, channels: int = 16, blocks: int = 2, ct_slices: int = 0):
        super().__init__()
        self.ct_slices = int(ct_slices)
        self.inp = nn.Conv2d(2 + self.ct_slices, channels, 3, 1, 1)
        self.body = nn.Sequential(*[ResBlock(channels, channels) for _ in range(int(blocks))])
        self.out = nn.Conv2d(channels, 1, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, decoded: torch.Tensor, nac: torch.Tensor, ct: torch.Tensor | None = None) -> torch.Tensor:
        if (ct is None) != (self.ct_slices == 0) or (ct is not None and ct.shape[1] != self.ct_slices):
            raise ValueError(f"this detail head takes {self.ct_slices} matched CT slices, got "
                             f"{0 if ct is None else ct.shape[1]}")
        x = torch.cat([decoded, nac] + ([ct] if ct is not None else []), 1)
        return decoded + self.out(self.body(F.silu(self.inp(x))))


def encoder_spec(width: int = 12, dim: int = 64, feature_channels: int = 8, contour_size: int = 16) -> dict:
    return {"class": f"{PACKAGE}.SliceEncoder",
            "args": {"width": width, "dim": dim, "feature_channels": feature_channels,
                     "contour_size": contour_size}}


def autoencoder_spec(channels=(8, 32), latent_channels: int = 4) -> dict:
    return {"class": f"{PACKAGE}.SliceAutoencoder",
            "args": {"channels": list(channels), "latent_channels": latent_channels}}


def denoiser_spec(latent_channels: int, feature_channels: int, k: int, channels: int = 24) -> dict:
    """k = 0: the ablation without CT prior (condition = NAC latent only)."""
    return {"class": f"{PACKAGE}.LatentDenoiser",
            "args": {"in_channels": 2 * latent_channels + k * feature_channels,
                     "out_channels": latent_channels, "channels": channels}}


def detail_spec(channels: int = 16, blocks: int = 2, ct_slices: int = 0) -> dict:
    """``ct_slices`` = 0: the NAC-only head (0.6.0's spec, unchanged)."""
    args = {"channels": int(channels), "blocks": int(blocks)}
    return {"class": f"{PACKAGE}.DetailHead", "args": args | ({"ct_slices": int(ct_slices)} if ct_slices else {})}


def unet_spec(features=(8, 16, 32, 32, 64, 8)) -> dict:
    """The NAC -> AC U-Net baseline of STMDiff Table 1 (Ronneberger 2015), MONAI's BasicUNet."""
    return {"class": "monai.networks.nets.BasicUNet",
            "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "features": list(features)}}
