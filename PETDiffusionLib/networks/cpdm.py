"""CPDM (Nguyen et al. 2024, arXiv:2410.21932) networks and the intensity scalings they work in.

Three networks, all 2D over axial slices of the model's working grid (2.5D: neighbouring CT slices
are extra channels or extra condition latents):

- the latent autoencoder, MONAI ``AutoencoderKL`` shared by CT and PET slices (CPDM §4.1 uses one
  pre-trained VQGAN as encoder/decoder for both modalities; a small KL autoencoder stands in here);
- the attention-map U-Net M_sigma, MONAI ``BasicUNet`` on 2.5D CT stacks, trained with Dice loss on
  SUV-threshold masks (CPDM §4.2, "Attention Map");
- :class:`BridgeUNet`, the bridge denoiser eps_theta(concat(x_t, M_sigma, M_mu), t) on the latent
  grid (CPDM eq. 3, Algorithm 1). MONAI's ``DiffusionModelUNet`` is not used because its middle block
  always builds a self-attention layer that needs ``einops``, which is not a project dependency.
  The same class, called with t = 0 and without x_t, is the plain U-Net regression baseline.

Intensity scalings (used by the task, the training recipe and the tests):

- CT: HU / 1000 after clipping to the 12-bit CT range [-1024, 3071] HU (CPDM §3 normalises CT by its
  12-bit maximum 2^11 - 1; dividing HU by 1000 keeps air at -1 and water at 0).
- PET: p = 2 log(1 + SUV) / log(1 + SUV_REF) - 1, inverted exactly by SUV = exp((p + 1) log(1 +
  SUV_REF) / 2) - 1. Logarithmic, so SUV 40 maps to about 2.1 and nothing is clipped at the top
  (the issue's requirement; log(1+SUV) scaling as TotalGen does). SUV_REF = 10 puts the usual FDG
  range (0-10 SUV, PHYSICS.md §5) on [-1, 1]. Negative SUVs (reconstruction noise only) are floored
  at 0 before scaling, since log(1 + SUV) is undefined below -1 and SUV is non-negative physically.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from PETDiffusionLib.networks.blocks import TimeResBlock, timestep_embedding

CT_HU_MIN, CT_HU_MAX = -1024.0, 3071.0  # 12-bit CT (CPDM §3: CT stored with max 2^11 - 1 offsets)
CT_HU_SCALE = 1000.0                    # HU -> water 0, air -1
PET_SUV_REF = 10.0                      # SUV that maps to +1 (PHYSICS.md §5: FDG organs 0.5-10)
_PET_LOG_REF = math.log1p(PET_SUV_REF)


def ct_to_net(hu):
    """HU -> network units (HU / 1000 after clipping to the 12-bit CT range)."""
    if isinstance(hu, torch.Tensor):
        return hu.clamp(CT_HU_MIN, CT_HU_MAX) / CT_HU_SCALE
    return (np.clip(hu, CT_HU_MIN, CT_HU_MAX) / CT_HU_SCALE).astype(np.float32)


def pet_to_net(suv):
    """SUV -> network units, 2 log(1 + SUV) / log(1 + 10) - 1; no upper clip (SUV 40 -> 2.09)."""
    if isinstance(suv, torch.Tensor):
        return 2.0 * torch.log1p(suv.clamp_min(0.0)) / _PET_LOG_REF - 1.0
    suv = np.maximum(np.asarray(suv, dtype=np.float64), 0.0)
    return (2.0 * np.log1p(suv) / _PET_LOG_REF - 1.0).astype(np.float32)


def net_to_pet(p):
    """Exact inverse of :func:`pet_to_net` (for SUV >= 0)."""
    if isinstance(p, torch.Tensor):
        return torch.expm1((p + 1.0) * (_PET_LOG_REF / 2.0))
    p = np.asarray(p, dtype=np.float64)
    return np.expm1((p + 1.0) * (_PET_LOG_REF / 2.0)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# builders (the card stores the class path and these keyword arguments; models.load rebuilds them)

AUTOENCODER_CLASS = "monai.networks.nets.AutoencoderKL"
ATTENTION_CLASS = "monai.networks.nets.BasicUNet"
BRIDGE_CLASS = "PETDiffusionLib.networks.cpdm.BridgeUNet"


def autoencoder_args(channels=(16, 32, 64), latent_channels: int = 4) -> dict:
    """A small 2D KL autoencoder, downsampling by 2^(len(channels)-1) = 4 (latent 32x32 for 128x128)."""
    return dict(spatial_dims=2, in_channels=1, out_channels=1, channels=list(channels),
                latent_channels=int(latent_channels), num_res_blocks=[1] * len(channels),
                attention_levels=[False] * len(channels), norm_num_groups=8,
                with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)


def attention_unet_args(context: int = 1, features=(8, 16, 32, 64, 64, 8)) -> dict:
    """BasicUNet on 2*context+1 CT slices -> one logit channel (sigmoid = M_sigma)."""
    return dict(spatial_dims=2, in_channels=2 * int(context) + 1, out_channels=1,
                features=list(features))


def bridge_unet_args(latent_channels: int = 4, context: int = 1, use_sigma: bool = True,
                     use_mu: bool = True, channels=(16, 32, 64)) -> dict:
    """Input channels: x_t (or, for the regression baseline, the CT latent y) + 2*context CT context
    latents + [M_sigma] + [M_mu]; so the bridge denoiser and the regression U-Net have one size."""
    n_in = latent_channels + 2 * int(context) * latent_channels
    n_in += int(bool(use_sigma)) + int(bool(use_mu))
    return dict(in_channels=n_in, out_channels=int(latent_channels), channels=list(channels))


def build(class_path: str, args: dict) -> nn.Module:
    import importlib
    mod, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(mod), name)(**args)


# ------------------------------------------------------------------------------------------------
# the bridge denoiser

class BridgeUNet(nn.Module):
    """A small time-conditioned 2D U-Net: one residual block per level, strided-conv downsampling.

    ``forward(x, t)``: x [B, in_channels, H, W] with H, W divisible by 2^(len(channels)-1); t [B]
    integer timesteps (0 for the regression baseline).
    """

    def __init__(self, in_channels: int, out_channels: int, channels=(16, 32, 64)):
        super().__init__()
        channels = list(channels)
        t_dim = channels[0] * 4
        self.t_in = channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        c_prev = channels[0]
        for i, c in enumerate(channels):
            self.down_blocks.append(TimeResBlock(c_prev, c, t_dim))
            c_prev = c
            if i + 1 < len(channels):
                self.downsamples.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = TimeResBlock(c_prev, c_prev, t_dim)
        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i in reversed(range(len(channels))):
            c_skip = channels[i]
            self.up_blocks.append(TimeResBlock(c_prev + c_skip, c_skip, t_dim))
            c_prev = c_skip
            if i > 0:
                self.upsamples.append(nn.Conv2d(c_skip, channels[i - 1], 3, padding=1))
                c_prev = channels[i - 1]
        self.norm_out = nn.GroupNorm(min(8, channels[0]), channels[0])
        self.conv_out = nn.Conv2d(channels[0], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.t_in))
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h, temb)
            skips.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
        h = self.mid(h, temb)
        for i, block in enumerate(self.up_blocks):
            h = block(torch.cat([h, skips.pop()], 1), temb)
            if i < len(self.upsamples):
                h = self.upsamples[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def downsample_map(m: torch.Tensor, factor: int) -> torch.Tensor:
    """A condition map [B, 1, H, W] -> the latent grid by average pooling (CPDM Fig. 2 'Downsampling')."""
    return F.avg_pool2d(m, factor) if factor > 1 else m


# ------------------------------------------------------------------------------------------------
# the working grid, condition maps and the tissue classes of the non-learned floor

MU_MAP_CENTRE, MU_MAP_GAIN = 0.95, 20.0
"""M_mu = exp(-mu) spans only ~0.87 (bone) .. 1.0 (air) (PHYSICS.md §3 at 120 kVp); the denoiser is
fed the fixed affine rescale (M_mu - 0.95) * 20 so its range matches the latents'. This is a
change of units only; M_mu itself is what the task writes to attenuation_map.nii.gz."""

TISSUE_CLASSES = ("outside_body", "lung", "fat", "soft_tissue", "bone")
TISSUE_HU_EDGES = (-500.0, -30.0, 180.0)
"""Lung < -500 HU <= fat < -30 HU <= soft tissue < 180 HU <= bone: mid-points between the tissue
ranges of PHYSICS.md §5 (lung -850..-910, fat -50..-100, water 0, liver 45-65, cancellous bone ~300)."""
BODY_HU = -500.0  # body = CT above -500 HU with enclosed holes (lungs) filled, slice by slice


def to_working_array(img, spacing, is_label: bool = False, default: float = 0.0) -> np.ndarray:
    """A SimpleITK image -> z,y,x array of axial slices on the model's working grid.

    The image is first reoriented to LPS by axis permutation/flips only (no interpolation), then
    resampled to ``spacing`` over the same field of view (linear; nearest for labels).
    """
    return sitk_array(working_image(img, spacing, is_label, default))


def working_image(img, spacing, is_label: bool = False, default: float = 0.0):
    import SimpleITK as sitk
    from PETDiffusionLib.io.images import resample_to_spacing
    oriented = sitk.DICOMOrient(img, "LPS")
    return resample_to_spacing(oriented, tuple(float(s) for s in spacing), is_label, default)


def sitk_array(img) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(img).astype(np.float32)


def crop_or_pad(vol: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Centre-crop or pad the last two axes of a z,y,x array to size x size."""
    out = np.full(vol.shape[:-2] + (size, size), fill, np.float32)
    h, w = vol.shape[-2:]
    sy, sx = max((h - size) // 2, 0), max((w - size) // 2, 0)
    dy, dx = max((size - h) // 2, 0), max((size - w) // 2, 0)
    ch, cw = min(h, size), min(w, size)
    out[..., dy:dy + ch, dx:dx + cw] = vol[..., sy:sy + ch, sx:sx + cw]
    return out


def pad_to_multiple(vol: np.ndarray, multiple: int, fill: float) -> tuple[np.ndarray, tuple]:
    """Pad the last two axes up to a multiple of ``multiple``; returns (array, (y0, x0, h, w))."""
    h, w = vol.shape[-2:]
    H, W = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    y0, x0 = (H - h) // 2, (W - w) // 2
    out = np.full(vol.shape[:-2] + (H, W), fill, np.float32)
    out[..., y0:y0 + h, x0:x0 + w] = vol
    return out, (y0, x0, h, w)


def body_mask(ct_hu: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_fill_holes
    m = ct_hu > BODY_HU
    return np.stack([binary_fill_holes(s) for s in m]) if m.ndim == 3 else binary_fill_holes(m)


def tissue_classes(ct_hu: np.ndarray) -> np.ndarray:
    """Index into TISSUE_CLASSES per voxel (0 outside the body)."""
    cls = 1 + np.digitize(ct_hu, TISSUE_HU_EDGES)
    cls[~body_mask(ct_hu)] = 0
    return cls.astype(np.int64)


def attenuation_condition(ct_hu: np.ndarray, kvp: float) -> np.ndarray:
    """The denoiser's M_mu channel: (exp(-mu) - 0.95) * 20, mu by Abella 2012 (CPDM §4.2)."""
    from PETDiffusionLib.physics.attenuation import attenuation_map
    return ((attenuation_map(ct_hu, kvp, method="abella") - MU_MAP_CENTRE) * MU_MAP_GAIN).astype(np.float32)


def stacks_25d(ct_net: np.ndarray, case_idx: np.ndarray, context: int) -> np.ndarray:
    """(N,S,S) -> (N, 2c+1, S, S): each slice with its neighbours in the same case (edge repeated)."""
    n = len(ct_net)
    out = np.empty((n, 2 * context + 1) + ct_net.shape[1:], np.float32)
    for off in range(-context, context + 1):
        j = np.clip(np.arange(n) + off, 0, n - 1)
        j = np.where(case_idx[j] == case_idx, j, np.arange(n))  # do not cross into another case
        # repeat the edge slice when a neighbour is out of the case (walk back towards the centre)
        for _ in range(context):
            bad = case_idx[j] != case_idx
            j[bad] = np.arange(n)[bad]
        out[:, off + context] = ct_net[j]
    return out
