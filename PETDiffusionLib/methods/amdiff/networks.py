"""AMDiff networks (Xia et al., "Anatomically and metabolically informed diffusion for
unified denoising and segmentation in low-count PET imaging"; seed text in
``../shared/seeds/AMDiff_denoise_segment.txt``), sized for 2.5D work on a CPU.

Parts, each named after the paper's symbol:

- :class:`SUVNormalisation`: the SUV cut-off at 20 (Sec. 2.2.1) and a log/affine map to [-1, 1] that
  inverts exactly for 0 <= SUV <= cut-off.
- :class:`Denoiser`: f_den, a small time-conditioned U-Net fed ``cat[x_t, I_LC]`` (Eq. 2) with
  self-attention only at the lowest resolution (Sec. 2.1.1).
- :class:`DenoisingRevision`: f_rev (Eq. 6), denoised P_HC + low-count I_LC -> full-range P_HCR, with
  a direct skip from I_LC that passes the part of the input above the diffusion cut-off.
- :class:`DualBranchSegmenter`: f_seg (Eq. 8, Fig. 3), one shared encoder (a conv stem and three
  ResMamba stages, or plain residual conv stages of the same size) and two three-layer decoders,
  one for lesions and one for organs.

The losses are in :mod:`PETDiffusionLib.methods.amdiff.losses`, the cohort readers in
:mod:`PETDiffusionLib.methods.amdiff.cases`.

All networks are 2D (2.5D: neighbouring slices enter as channels); their constructor arguments are
plain JSON values so a model card can rebuild them (STYLE.md, MONAI).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from mambapy.mamba import MambaBlock, MambaConfig, RMSNorm

from PETDiffusionLib.networks.blocks import TimeResBlock, timestep_embedding

# Sec. 2.2.1: "a cutoff is applied to SUV values above 20" before diffusion training.
SUV_CUTOFF = 20.0

# Organ classes of the organ branch, in the order of the paper's evaluation (Sec. 3.1: "liver,
# lung, bone, muscle, kidney, spleen, and aorta"); index 0 is background.
ORGAN_CLASSES: tuple[str, ...] = ("background", "liver", "lung", "kidney", "spleen", "bone",
                                  "aorta", "muscle")
LESION_CLASSES: tuple[str, ...] = ("background", "lesion")


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------
class SUVNormalisation:
    """SUV <-> network units.

    ``u = log(1 + SUV) / log(1 + cutoff)`` (unclipped, >= 0) is the revision module's domain; the
    diffusion works on ``x = 2 * min(u, 1) - 1`` in [-1, 1], i.e. SUV clipped at the cut-off
    (Sec. 2.2.1). The log compresses the 0-20 range where "most diagnostically relevant values are
    concentrated" (Sec. 2.2.1) without a data-dependent scale, so ``to_suv(to_x(s)) == s`` exactly
    (to float rounding) for every 0 <= s <= cutoff, whatever the image.
    """

    def __init__(self, cutoff: float = SUV_CUTOFF):
        self.cutoff = float(cutoff)
        self.scale = math.log1p(self.cutoff)

    def to_u(self, suv: torch.Tensor) -> torch.Tensor:
        return torch.log1p(suv.clamp_min(0.0)) / self.scale

    def u_to_suv(self, u: torch.Tensor) -> torch.Tensor:
        return torch.expm1(u.clamp_min(0.0) * self.scale)

    def to_x(self, suv: torch.Tensor) -> torch.Tensor:
        return 2.0 * self.to_u(suv).clamp_max(1.0) - 1.0

    def x_to_u(self, x: torch.Tensor) -> torch.Tensor:
        return (x.clamp(-1.0, 1.0) + 1.0) / 2.0

    def x_to_suv(self, x: torch.Tensor) -> torch.Tensor:
        return self.u_to_suv(self.x_to_u(x))


# --------------------------------------------------------------------------------------------
# f_den: conditioned diffusion denoiser (Sec. 2.1.1)
# --------------------------------------------------------------------------------------------
class _SelfAttention(nn.Module):
    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.attn = nn.MultiheadAttention(channels, max(1, channels // head_channels),
                                          batch_first=True)

    def forward(self, x):
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)
        y, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class Denoiser(nn.Module):
    """``net(cat[x_t, I_LC context slices], t) -> predicted noise`` (Eq. 2).

    A small time-conditioned U-Net: the paper's "four-layer encoder and a three-layer decoder, with
    self-attention incorporated in the lowest-resolution layer" (Sec. 2.1.1) becomes four resolution
    levels (three down-samplings, three up-sampling decoder layers) with self-attention only at the
    lowest one. (MONAI's DiffusionModelUNet needs ``einops``, which this project does not pin.)
    """

    def __init__(self, context: int = 1, channels: list[int] | tuple[int, ...] = (16, 32, 64, 64),
                 norm_num_groups: int = 8, num_head_channels: int = 16):
        super().__init__()
        self.context = int(context)
        channels = tuple(int(c) for c in channels)
        n_in = 1 + 2 * self.context + 1
        self.t_dim = 4 * channels[0]
        self.t_mlp = nn.Sequential(nn.Linear(channels[0], self.t_dim), nn.SiLU(),
                                   nn.Linear(self.t_dim, self.t_dim))
        g = norm_num_groups
        self.inp = nn.Conv2d(n_in, channels[0], 3, padding=1)
        self.enc = nn.ModuleList()
        self.downs = nn.ModuleList()
        c_prev = channels[0]
        for i, c in enumerate(channels):
            self.enc.append(TimeResBlock(c_prev, c, self.t_dim, g))
            c_prev = c
            if i < len(channels) - 1:
                self.downs.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid_attn = _SelfAttention(channels[-1], num_head_channels, g)
        self.mid = TimeResBlock(channels[-1], channels[-1], self.t_dim, g)
        self.dec = nn.ModuleList()
        for i in range(len(channels) - 2, -1, -1):
            self.dec.append(TimeResBlock(c_prev + channels[i], channels[i], self.t_dim, g))
            c_prev = channels[i]
        self.out = nn.Sequential(nn.GroupNorm(min(g, channels[0]), channels[0]), nn.SiLU(),
                                 nn.Conv2d(channels[0], 1, 3, padding=1))
        self.divisor = 2 ** (len(channels) - 1)
        self.channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.t_mlp(timestep_embedding(t, self.channels[0]))
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.enc):
            h = block(h, temb)
            if i < len(self.downs):
                skips.append(h)
                h = self.downs[i](h)
        h = self.mid(self.mid_attn(h), temb)
        for block in self.dec:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), temb)
        return self.out(h)


class ResidualDenoiser(Denoiser):
    """:class:`Denoiser` for x0-prediction whose output is a correction of the low-count slice:
    ``x0_hat = I_LC(centre slice, network units) + net(...)``. Residual learning (Zhang et al.,
    DnCNN, IEEE TIP 2017) starts from the identity, so hot lesions keep their values from the first
    step instead of being re-learnt; the diffusion input x_t is unchanged (Eq. 2). The last
    convolution starts at zero, so the untrained network is exactly the identity."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        centre = x[:, 1 + self.context:2 + self.context]
        return centre + super().forward(x, t)


# --------------------------------------------------------------------------------------------
# f_rev: denoising revision (Sec. 2.2.1, Eq. 6)
# --------------------------------------------------------------------------------------------
class DenoisingRevision(nn.Module):
    """``u_HCR = u_HC + relu(u_LC - 1) + g(u_HC, u_LC)`` in the unclipped log domain ``u``.

    ``relu(u_LC - 1)`` is the direct skip from the low-count input (Fig. 2): the part of the input
    above the diffusion cut-off (u = 1 <=> SUV 20), which the clipped diffusion output cannot hold.
    ``g`` is a few convolutions ("consecutive convolutional layers", Sec. 2.2.1) whose last layer
    starts at zero, so an untrained module already returns the diffusion output below the cut-off
    and the input's value above it.
    """

    def __init__(self, hidden: int = 16, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = []
        c_in = 2
        for _ in range(layers - 1):
            mods += [nn.Conv2d(c_in, hidden, 3, padding=1), nn.GroupNorm(4, hidden), nn.SiLU()]
            c_in = hidden
        last = nn.Conv2d(c_in, 1, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        mods.append(last)
        self.body = nn.Sequential(*mods)

    def forward(self, u_hc: torch.Tensor, u_lc: torch.Tensor) -> torch.Tensor:
        skip = F.relu(u_lc - 1.0)
        return u_hc + skip + self.body(torch.cat([u_hc, u_lc], dim=1))


# --------------------------------------------------------------------------------------------
# f_seg: dual-branch segmenter (Sec. 2.2.2, Fig. 3)
# --------------------------------------------------------------------------------------------
def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    groups = max(1, min(8, c_out // 4))
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                         nn.GroupNorm(groups, c_out), nn.SiLU())


class ResConv(nn.Module):
    """Residual 3x3 conv block: the plain-convolution counterpart of :class:`ResMamba`."""

    def __init__(self, channels: int):
        super().__init__()
        self.local = _conv_block(channels, channels)
        self.mix = nn.Sequential(nn.GroupNorm(max(1, min(8, channels // 4)), channels),
                                 nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        x = x + self.local(x)
        return x + self.mix(x)


class ResMamba(nn.Module):
    """Mamba-in-convolution (nnMamba, Gong et al. 2024b, as used in Fig. 3).

    A residual conv block for local patterns; the features are then "augmented across channel and
    spatial dimensions" (Sec. 2.2.2: a squeeze-excitation channel gate and a spatial gate) before a
    state-space (Mamba, pure-PyTorch ``mambapy``) layer scans the flattened slice for long-range
    context; residual connection around it.
    """

    def __init__(self, channels: int, d_state: int = 8):
        super().__init__()
        self.local = _conv_block(channels, channels)
        hid = max(4, channels // 4)
        self.channel_gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hid, 1),
                                          nn.SiLU(), nn.Conv2d(hid, channels, 1), nn.Sigmoid())
        self.spatial_gate = nn.Sequential(nn.Conv2d(channels, 1, 7, padding=3), nn.Sigmoid())
        cfg = MambaConfig(d_model=channels, n_layers=1, d_state=d_state, expand_factor=1)
        self.norm = RMSNorm(channels)
        self.mamba = MambaBlock(cfg)

    def forward(self, x):
        x = x + self.local(x)
        a = x * self.channel_gate(x) * self.spatial_gate(x)
        b, c, h, w = a.shape
        seq = a.flatten(2).transpose(1, 2)                    # B, H*W, C
        y = self.mamba(self.norm(seq)).transpose(1, 2).reshape(b, c, h, w)
        return x + y


class _Decoder(nn.Module):
    """Three up-sampling layers with skips from the shared encoder, then a 1x1 class head."""

    def __init__(self, channels: tuple[int, ...], n_classes: int):
        super().__init__()
        c0, c1, c2, c3 = channels
        self.up = nn.ModuleList([
            _conv_block(c3 + c2, c2), _conv_block(c2 + c1, c1), _conv_block(c1 + c0, c0)])
        self.head = nn.Conv2d(c0, n_classes, 1)

    def forward(self, feats):
        f0, f1, f2, f3 = feats
        x = f3
        for layer, skip in zip(self.up, (f2, f1, f0)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = layer(torch.cat([x, skip], dim=1))
        return self.head(x)


class DualBranchSegmenter(nn.Module):
    """Shared encoder (stem + three stages at 1/2, 1/4, 1/8) -> lesion decoder and organ decoder.

    ``encoder="mamba"`` uses :class:`ResMamba` stages (the paper), ``encoder="conv"`` the residual
    conv stages of about the same parameter count (the paper's "w/o ResMamba" ablation, Table 4).
    Input channels: P_HCR and I_LC (Eq. 8), plus CT (scaled HU) and a CT-present flag when
    ``use_ct`` (this project's addition; zeros when no CT is given).
    """

    def __init__(self, channels: list[int] | tuple[int, ...] = (16, 32, 48, 64),
                 encoder: str = "mamba", n_organ_classes: int = len(ORGAN_CLASSES),
                 n_lesion_classes: int = len(LESION_CLASSES), use_ct: bool = True,
                 d_state: int = 8):
        super().__init__()
        if encoder not in ("mamba", "conv"):
            raise ValueError(f"encoder must be 'mamba' or 'conv', not {encoder!r}")
        channels = tuple(int(c) for c in channels)
        self.encoder_kind = encoder
        self.use_ct = bool(use_ct)
        c_in = 4 if self.use_ct else 2
        self.stem = _conv_block(c_in, channels[0])
        self.down = nn.ModuleList([_conv_block(channels[i], channels[i + 1], stride=2)
                                   for i in range(3)])
        block = (lambda c: ResMamba(c, d_state)) if encoder == "mamba" else ResConv
        self.stages = nn.ModuleList([block(channels[i + 1]) for i in range(3)])
        self.lesion_decoder = _Decoder(channels, n_lesion_classes)
        self.organ_decoder = _Decoder(channels, n_organ_classes)
        self.divisor = 8

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = [self.stem(x)]
        for down, stage in zip(self.down, self.stages):
            f.append(stage(down(f[-1])))
        return self.lesion_decoder(f), self.organ_decoder(f)


def segmenter_input(u_hcr: torch.Tensor, u_lc: torch.Tensor, ct_hu: torch.Tensor | None,
                    use_ct: bool) -> torch.Tensor:
    """Eq. 8's ``P_HCR (c) I_LC`` (+ CT/1000 clipped to [-1, 2] and a presence flag)."""
    parts = [u_hcr, u_lc]
    if use_ct:
        if ct_hu is None:
            parts += [torch.zeros_like(u_lc), torch.zeros_like(u_lc)]
        else:
            parts += [(ct_hu / 1000.0).clamp(-1.0, 2.0), torch.ones_like(u_lc)]
    return torch.cat(parts, dim=1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


NETWORK_CLASSES = {"denoiser": "PETDiffusionLib.methods.amdiff.networks.Denoiser",
                   "revision": "PETDiffusionLib.methods.amdiff.networks.DenoisingRevision",
                   "segmenter": "PETDiffusionLib.methods.amdiff.networks.DualBranchSegmenter"}
"""The model card's class path of each AMDiff network (models.card.build_network builds them)."""


RESIDUAL_DENOISER_CLASS = "PETDiffusionLib.methods.amdiff.networks.ResidualDenoiser"


def network_specs(denoiser: dict, revision: dict, segmenter: dict,
                  residual: bool = False) -> dict[str, dict]:
    """Card specs {name: {"class", "args"}} of the three networks from their constructor args
    (``residual``: f_den is a :class:`ResidualDenoiser`)."""
    args = {"denoiser": denoiser, "revision": revision, "segmenter": segmenter}
    specs = {name: {"class": NETWORK_CLASSES[name], "args": dict(a)} for name, a in args.items()}
    if residual:
        specs["denoiser"]["class"] = RESIDUAL_DENOISER_CLASS
    return specs
