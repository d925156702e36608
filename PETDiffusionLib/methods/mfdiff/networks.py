"""MFdiff networks (Sec. 3.1-3.2, Fig. 2), sized for 2.5D work on a CPU, and the ablation baselines.

- :class:`FusionModule`: the multi-modality feature fusion module. Intra-modality learning (IML,
  Sec. 3.1.1): two modality encoders with the same architecture and independent weights (Eq. 2: a
  conv stem and Restormer blocks), then per modality a global branch (Eq. 3) and a detail branch
  (Eq. 4) with independent weights (f_theta_p != f_theta_m). Cross-modality aggregation (CMA,
  Sec. 3.1.2): a global fusion layer (1x1 merge of G_P, G_M, then the global block), a detail fusion
  layer (1x1 merge of D_P, D_M, then the detail block), and a decoder of two transformer blocks that
  outputs the fused feature F. ``use_global`` / ``use_detail`` switch a branch off for the GMUNet /
  DMUNet ablation rows (Table 5): the remaining branch is then doubled (two of it), as the paper
  keeps the parameter count similar.
  One guide encoder serves MR and CT: the guide's modality enters as a learned per-channel bias
  (``guide_modality`` 0 = MR T1, 1 = CT), so the CT-guided and MR-guided cases train one network.
- :class:`MFdiffUNet`: the conditional diffusion U-Net epsilon_theta(x_t, t, x_P, x_fusion) (Eq. 8):
  ``cat[x_t, x_P (2k+1 slices), F]`` enters the first layer; time-conditioned residual blocks with
  self-attention at the lowest resolution ("denoising attention UNet", Sec. 3.2.2).
- :class:`MUNet`: the M-UNet row of Tables 1 and 5 (Chen et al. 2019, ref. [40]: low-dose PET and
  the guide concatenated as input channels), the same U-Net without x_t and with t fixed at 0,
  predicting the standard-dose slice directly (``use_guide=False``: the "UNet" row).

Intensities: :func:`pet_to_x` / :func:`x_to_pet` (SUV <-> [-1, 1], log map with a cut-off) and
:func:`guide_to_x` (CT in HU or MR in arbitrary units -> about [-1, 1]).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from PETDiffusionLib.methods.mfdiff.blocks import DetailBlock, GlobalBlock, RestormerBlock
from PETDiffusionLib.networks.blocks import TimeResBlock, timestep_embedding

SUV_CUTOFF = 20.0
"""SUV mapped to x = 1; higher values clip. AMDiff Sec. 2.2.1 ("a cutoff is applied to SUV values
above 20"), PHYSICS.md Sec. 5 (FDG SUVs of tumours up to ~24, most diagnostic values below 20).
The restored image keeps the low-dose input where it exceeds the cut-off (pipeline)."""
GUIDES = ("mr", "ct")
CT_WINDOW_HU = (-1000.0, 1000.0)
"""HU mapped onto [-1, 1]: air (-1000 HU, PHYSICS.md Sec. 3) to dense bone."""
MR_SCALE_PERCENTILE = 99.0
"""MR T1 has arbitrary units: divided by this percentile of the voxels above the 50th percentile
(the body, not the air), so the body's bright tissue sits near 1 before the shift to [-1, 1]."""


# --------------------------------------------------------------------------------------------
# Intensities
# --------------------------------------------------------------------------------------------
def pet_to_x(suv: torch.Tensor, cutoff: float = SUV_CUTOFF) -> torch.Tensor:
    return 2.0 * (torch.log1p(suv.clamp_min(0.0)) / math.log1p(cutoff)).clamp_max(1.0) - 1.0


def x_to_pet(x: torch.Tensor, cutoff: float = SUV_CUTOFF) -> torch.Tensor:
    return torch.expm1((x.clamp(-1.0, 1.0) + 1.0) / 2.0 * math.log1p(cutoff))


def mr_scale(mr: np.ndarray) -> float:
    """The MR volume's scale (see :data:`MR_SCALE_PERCENTILE`); 1.0 for an empty image."""
    a = np.asarray(mr, np.float32)
    body = a[a > np.percentile(a, 50)]
    s = float(np.percentile(body, MR_SCALE_PERCENTILE)) if body.size else 0.0
    return s if s > 0 else 1.0


def guide_to_x(guide: np.ndarray, modality: str) -> np.ndarray:
    """A whole guide volume (numpy, on the working grid) -> network units, about [-1, 1]."""
    g = np.asarray(guide, np.float32)
    if modality == "ct":
        lo, hi = CT_WINDOW_HU
        return (2.0 * (np.clip(g, lo, hi) - lo) / (hi - lo) - 1.0).astype(np.float32)
    if modality == "mr":
        return (np.clip(g / mr_scale(g), 0.0, 2.0) - 1.0).astype(np.float32)
    raise ValueError(f"guide modality must be one of {GUIDES}, not {modality!r}")


# --------------------------------------------------------------------------------------------
# Fusion module (IML + CMA)
# --------------------------------------------------------------------------------------------
class ModalityEncoder(nn.Module):
    """Eq. 2: a stride-2 conv stem + ``blocks`` Restormer blocks (shallow features F_i at half
    resolution; the CMA decoder "maps high-level features back to the original input size",
    Sec. 3.1.2). Half resolution makes the fusion module 4x cheaper on a CPU."""

    def __init__(self, c_in: int, channels: int, blocks: int, heads: int):
        super().__init__()
        self.stem = nn.Conv2d(c_in, channels, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[RestormerBlock(channels, heads) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


class DualBranch(nn.Module):
    """The global/detailed encoder of one modality: (G_i, D_i) from F_i (Eq. 3 and Eq. 4)."""

    def __init__(self, channels: int, heads: int, pool: int, use_global: bool, use_detail: bool):
        super().__init__()
        def one(kind: str) -> nn.Module:
            return GlobalBlock(channels, heads, pool) if kind == "g" else DetailBlock(channels)
        kinds = ("g" if use_global else "d", "d" if use_detail else "g")
        self.first, self.second = one(kinds[0]), one(kinds[1])

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.first(f), self.second(f)


class FusionModule(nn.Module):
    """x_P [B, 2k+1, H, W] and a guide [B, 2k+1, H, W] (H, W even) -> fused feature F
    [B, out_channels, H, W]; IML and CMA run at H/2 x W/2, the decoder up-samples back."""

    def __init__(self, context: int = 1, channels: int = 16, encoder_blocks: int = 1, heads: int = 2,
                 pool: int = 4, out_channels: int = 8, use_global: bool = True,
                 use_detail: bool = True):
        super().__init__()
        if not (use_global or use_detail):
            raise ValueError("the fusion module needs the global branch, the detail branch or both")
        self.context = int(context)
        n = 2 * self.context + 1
        c = int(channels)
        self.enc_pet = ModalityEncoder(n, c, encoder_blocks, heads)
        self.enc_guide = ModalityEncoder(n, c, encoder_blocks, heads)
        self.guide_bias = nn.Embedding(len(GUIDES), c)
        nn.init.zeros_(self.guide_bias.weight)
        self.iml_pet = DualBranch(c, heads, pool, use_global, use_detail)
        self.iml_guide = DualBranch(c, heads, pool, use_global, use_detail)
        self.merge_g, self.merge_d = nn.Conv2d(2 * c, c, 1), nn.Conv2d(2 * c, c, 1)
        self.fuse = DualBranch(c, heads, pool, use_global, use_detail)   # global / detail fusion layers
        self.merge = nn.Conv2d(2 * c, c, 1)
        self.decoder = nn.Sequential(RestormerBlock(c, heads), RestormerBlock(c, heads))
        self.up = nn.ConvTranspose2d(c, c, 2, stride=2)
        self.out = nn.Conv2d(c + n, int(out_channels), 3, padding=1)
        self.divisor = 2
        self.out_channels = int(out_channels)

    def forward(self, x_pet: torch.Tensor, x_guide: torch.Tensor,
                guide_modality: torch.Tensor) -> torch.Tensor:
        f_p = self.enc_pet(x_pet)
        f_m = self.enc_guide(x_guide) + self.guide_bias(guide_modality.long())[:, :, None, None]
        g_p, d_p = self.iml_pet(f_p)
        g_m, d_m = self.iml_guide(f_m)
        g_fuse = self.fuse.first(self.merge_g(torch.cat([g_p, g_m], 1)))
        d_fuse = self.fuse.second(self.merge_d(torch.cat([d_p, d_m], 1)))
        h = self.up(self.decoder(self.merge(torch.cat([g_fuse, d_fuse], 1))))
        h = h[..., :x_pet.shape[-2], :x_pet.shape[-1]]
        # back at the input size, the full-resolution low-dose slices join the last layer
        return self.out(torch.cat([F.gelu(h), x_pet], 1))


# --------------------------------------------------------------------------------------------
# U-Nets
# --------------------------------------------------------------------------------------------
class _SelfAttention(nn.Module):
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(8, channels), channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)
        y = self.attn(seq, seq, seq, need_weights=False)[0]
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class _UNet(nn.Module):
    """A small time-conditioned U-Net: len(channels) levels, self-attention at the lowest."""

    def __init__(self, n_in: int, channels=(16, 32, 64), heads: int = 2):
        super().__init__()
        ch = tuple(int(c) for c in channels)
        self.divisor = 2 ** (len(ch) - 1)
        self.t_dim = 4 * ch[0]
        self.t_mlp = nn.Sequential(nn.Linear(ch[0], self.t_dim), nn.SiLU(),
                                   nn.Linear(self.t_dim, self.t_dim))
        self.inp = nn.Conv2d(n_in, ch[0], 3, padding=1)
        self.enc, self.downs = nn.ModuleList(), nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            self.enc.append(TimeResBlock(prev, c, self.t_dim))
            prev = c
            if i < len(ch) - 1:
                self.downs.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = TimeResBlock(prev, prev, self.t_dim)
        self.attn = _SelfAttention(prev, heads)
        self.ups, self.dec = nn.ModuleList(), nn.ModuleList()
        for i in range(len(ch) - 2, -1, -1):
            self.ups.append(nn.ConvTranspose2d(prev, ch[i], 2, stride=2))
            self.dec.append(TimeResBlock(2 * ch[i], ch[i], self.t_dim))
            prev = ch[i]
        self.out = nn.Sequential(nn.GroupNorm(min(8, prev), prev), nn.SiLU(),
                                 nn.Conv2d(prev, 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.t_mlp(timestep_embedding(t, self.inp.out_channels))
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.enc):
            h = block(h, temb)
            if i < len(self.downs):
                skips.append(h)
                h = self.downs[i](h)
        h = self.attn(self.mid(h, temb))
        for up, block in zip(self.ups, self.dec):
            h = block(torch.cat([up(h), skips.pop()], 1), temb)
        return self.out(h)


class MFdiffUNet(_UNet):
    """epsilon_theta(cat[x_t, x_P (2k+1), F (fusion_channels)], t) (Eq. 8).

    ``residual`` (x0-prediction models, card ``diffusion.prediction: sample``): the output is the
    low-dose centre slice plus the network's correction, as M-UNet's and the native denoiser's
    (no parameters added: an epsilon model's weights load into it)."""

    def __init__(self, context: int = 1, fusion_channels: int = 8, channels=(16, 32, 64),
                 heads: int = 2, residual: bool = False):
        self.context = int(context)
        self.fusion_channels = int(fusion_channels)
        self.residual = bool(residual)
        super().__init__(1 + 2 * self.context + 1 + self.fusion_channels, channels, heads)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.run(x, t)
        if self.residual:
            c = 1 + self.context          # cat[x_t, x_P ...]: x_P's centre slice
            out = x[:, c:c + 1] + out
        return out


class MUNet(_UNet):
    """M-UNet: cat[x_P (2k+1), guide (2k+1)] -> standard-dose slice in x units (residual on the
    centre low-dose slice); ``use_guide=False`` is the PET-only UNet row."""

    def __init__(self, context: int = 1, use_guide: bool = True, channels=(16, 32, 64),
                 heads: int = 2):
        self.context = int(context)
        self.use_guide = bool(use_guide)
        n = 2 * self.context + 1
        super().__init__(n * (2 if self.use_guide else 1) + len(GUIDES), channels, heads)

    def forward(self, x_pet: torch.Tensor, x_guide: torch.Tensor,
                guide_modality: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(guide_modality.long(), len(GUIDES)).float()
        onehot = onehot[:, :, None, None].expand(-1, -1, *x_pet.shape[-2:])
        if not self.use_guide:
            onehot = torch.zeros_like(onehot)
        parts = [x_pet] + ([x_guide] if self.use_guide else []) + [onehot]
        t = torch.zeros(x_pet.shape[0], dtype=torch.long, device=x_pet.device)
        return x_pet[:, self.context:self.context + 1] + self.run(torch.cat(parts, 1), t)
