"""A small 3D U-Net for TotalGen's two EDM stages (seed §2.2: "we extend the EDM2 framework to the
3D domain ... integrating 3D convolutions"), sized for this CPU.

Called as ``net(x, c_noise)`` with ``c_noise = ln(sigma) / 4`` ([B]) and x the concatenation
``[c_in * noisy, condition channels]`` (diffusion/edm.py's convention). EDM2 ingredients kept
(Karras et al. 2024, arXiv:2312.02696): Fourier features of the noise level (their MPFourier),
pixel normalisation over channels instead of group normalisation (§3: "we normalise ... pixel-wise")
and a zero-initialised last layer per block, so that each block starts as the identity. Pixel
normalisation is local, so the network runs window by window (diffusion/windows.py) without any
global statistic changing between the whole volume and a window: the super-resolution network uses
it. The global stage always sees the whole 16 mm volume and may use group normalisation instead
(``norm="group"``): with pixel normalisation the 220-step stage-1 model hardly denoised at low noise
(RMSE 0.174 after denoising noise of sigma 0.2 on a held-out volume).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from PETDiffusionLib.diffusion.edm import SIGMA_DATA


class PixelNorm(nn.Module):
    """x / rms over channels, per voxel (EDM2 §3, 'pixel norm')."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-4)


class FourierNoise(nn.Module):
    """Fixed Fourier features of c_noise (EDM2's MPFourier: cos(2 pi (f c + phi)), f ~ N(0, 1))."""

    def __init__(self, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim, generator=g))
        self.register_buffer("phases", torch.rand(dim, generator=g))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return torch.cos(2 * math.pi * (c[:, None].float() * self.freqs + self.phases)) * math.sqrt(2)


def make_norm(kind: str, channels: int) -> nn.Module:
    """"pixel": EDM2's per-voxel norm (local: windowed runs equal whole runs); "group": GroupNorm
    (Wu & He 2018) over groups of 4 channels and the whole volume (the DDPM/ADM U-Net norm), for a
    network that always sees the whole volume (stage 1)."""
    if kind == "pixel":
        return PixelNorm()
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 4), channels)
    raise ValueError(f"norm must be 'pixel' or 'group', not {kind!r}")


class ResBlock3d(nn.Module):
    """norm -> SiLU -> conv3 -> scale/shift by the noise embedding -> SiLU -> conv3 (zero init)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, norm: str = "pixel"):
        super().__init__()
        self.norm1, self.norm2 = make_norm(norm, cin), make_norm(norm, cout)
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None, None].chunk(2, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class EDMUNet3d(nn.Module):
    """3D U-Net: ``len(mults)`` levels of ``base * mult`` channels, one residual block per level on
    each side, strided-conv down, nearest + conv up, skip concatenation. Spatial sizes must be
    divisible by 2^(levels-1). ``full_res_blocks`` False drops the residual blocks of the first
    (full-resolution) level, keeping only its input and output convolutions and the skip: the
    super-resolution network runs over millions of voxels, where those blocks cost most."""

    def __init__(self, in_channels: int, out_channels: int, base: int = 16,
                 mults: tuple[int, ...] | list[int] = (1, 2, 4), emb_dim: int = 64,
                 full_res_blocks: bool = True, norm: str = "pixel", standardise: bool = False):
        super().__init__()
        self.full_res_blocks = bool(full_res_blocks)
        self.standardise = bool(standardise)
        if self.standardise:
            # per-channel mean and SD of the training data in network units, set by the recipe
            # before training and saved with the weights (see to_standard)
            self.register_buffer("data_mean", torch.zeros(out_channels))
            self.register_buffer("data_std", torch.ones(out_channels))
        mults = tuple(int(m) for m in mults)
        self.levels = len(mults)
        chans = [base * m for m in mults]
        self.fourier = FourierNoise(emb_dim)
        self.emb = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv3d(in_channels, chans[0], 3, padding=1)
        self.enc = nn.ModuleList([ResBlock3d(c, c, emb_dim, norm) for c in chans])
        self.down = nn.ModuleList([nn.Conv3d(chans[i], chans[i + 1], 3, stride=2, padding=1)
                                   for i in range(self.levels - 1)])
        self.mid = ResBlock3d(chans[-1], chans[-1], emb_dim, norm)
        self.up = nn.ModuleList([nn.Conv3d(chans[i + 1], chans[i], 3, padding=1)
                                 for i in range(self.levels - 1)])
        self.dec = nn.ModuleList([ResBlock3d(2 * c, c, emb_dim, norm) for c in chans])
        if not self.full_res_blocks:
            self.enc[0], self.dec[0] = nn.Identity(), nn.Identity()
        c_out = chans[0] * (1 if self.full_res_blocks else 2)
        self.out_norm = make_norm(norm, c_out)
        self.out = nn.Conv3d(c_out, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def to_standard(self, x: torch.Tensor) -> torch.Tensor:
        """Data in network units -> the diffusion's space: each channel shifted to mean 0 and scaled
        to SD ``SIGMA_DATA`` (0.5, EDM's assumed data SD; Karras et al. 2022 §5). Without it the
        stage-1 data have SD 0.21 around -0.8 (mostly air and empty organ channels) and the
        low-noise levels, which make the organs, were hardly learned (card 0.2.0). Identity for a
        network built without ``standardise``."""
        if not self.standardise:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.data_mean.view(shape)) / self.data_std.view(shape) * SIGMA_DATA

    def from_standard(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_standard`."""
        if not self.standardise:
            return z
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return z / SIGMA_DATA * self.data_std.view(shape) + self.data_mean.view(shape)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = F.silu(self.emb(self.fourier(c_noise.reshape(-1).expand(x.shape[0]))))
        h = self.inp(x)
        skips = []
        for i in range(self.levels):
            h = self.enc[i](h, emb) if i or self.full_res_blocks else h
            skips.append(h)
            if i < self.levels - 1:
                h = self.down[i](h)
        h = self.mid(h, emb)
        for i in reversed(range(self.levels)):
            if i < self.levels - 1:
                h = self.up[i](F.interpolate(h, size=skips[i].shape[2:], mode="nearest"))
            h = torch.cat([h, skips[i]], 1)
            h = self.dec[i](h, emb) if i or self.full_res_blocks else h
        return self.out(F.silu(self.out_norm(h)))


def unet_spec(in_channels: int, out_channels: int, base: int, mults, emb_dim: int = 64,
              full_res_blocks: bool = True, norm: str = "pixel", standardise: bool = False) -> dict:
    """The card entry ``{"class", "args"}`` that ``models.card.build_network`` rebuilds."""
    return {"class": "PETDiffusionLib.methods.totalgen.networks.EDMUNet3d",
            "args": {"in_channels": int(in_channels), "out_channels": int(out_channels),
                     "base": int(base), "mults": [int(m) for m in mults], "emb_dim": int(emb_dim),
                     "full_res_blocks": bool(full_res_blocks), "norm": str(norm),
                     **({"standardise": True} if standardise else {})}}
