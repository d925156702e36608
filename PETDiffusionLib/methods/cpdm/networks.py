"""CPDM's three networks, all 2D over axial slices of the model's working grid (2.5D: neighbouring
CT slices are extra channels or extra condition latents):

- the latent autoencoder, MONAI ``AutoencoderKL`` shared by CT and PET slices (CPDM §4.1 uses one
  pre-trained VQGAN as encoder/decoder for both modalities; a small KL autoencoder stands in here);
- the attention-map U-Net M_sigma, MONAI ``BasicUNet`` on 2.5D CT stacks, trained with Dice loss on
  SUV-threshold masks (CPDM §4.2, "Attention Map");
- :class:`BridgeUNet`, the bridge denoiser eps_theta(concat(x_t, M_sigma, M_mu), t) on the latent
  grid (CPDM eq. 3, Algorithm 1). MONAI's ``DiffusionModelUNet`` is not used because its middle block
  always builds a self-attention layer that needs ``einops``, which is not a project dependency.
  The same class, called with t = 0 and without x_t, is the plain U-Net regression baseline.

The model card stores each network as ``{"class": dotted path, "args": {...}}`` (the ``*_spec``
functions below); ``models.card.build_network`` rebuilds them, with its class allow-list.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from PETDiffusionLib.networks.blocks import TimeResBlock, timestep_embedding

AUTOENCODER_CLASS = "monai.networks.nets.AutoencoderKL"
ATTENTION_CLASS = "monai.networks.nets.BasicUNet"
BRIDGE_CLASS = "PETDiffusionLib.methods.cpdm.networks.BridgeUNet"


def autoencoder_spec(channels=(16, 32, 64), latent_channels: int = 4) -> dict:
    """A small 2D KL autoencoder, downsampling by 2^(len(channels)-1) = 4 (latent 32x32 for 128x128)."""
    return {"class": AUTOENCODER_CLASS, "args": dict(
        spatial_dims=2, in_channels=1, out_channels=1, channels=list(channels),
        latent_channels=int(latent_channels), num_res_blocks=[1] * len(channels),
        attention_levels=[False] * len(channels), norm_num_groups=8,
        with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)}


def attention_unet_spec(context: int = 1, features=(8, 16, 32, 64, 64, 8)) -> dict:
    """BasicUNet on 2*context+1 CT slices -> one logit channel (sigmoid = M_sigma)."""
    return {"class": ATTENTION_CLASS, "args": dict(
        spatial_dims=2, in_channels=2 * int(context) + 1, out_channels=1, features=list(features))}


def bridge_unet_spec(latent_channels: int = 4, context: int = 1, use_sigma: bool = True,
                     use_mu: bool = True, channels=(16, 32, 64)) -> dict:
    """Input channels: x_t (or, for the regression baseline, the CT latent y) + 2*context CT context
    latents + [M_sigma] + [M_mu]; so the bridge denoiser and the regression U-Net have one size."""
    n_in = latent_channels + 2 * int(context) * latent_channels
    n_in += int(bool(use_sigma)) + int(bool(use_mu))
    return {"class": BRIDGE_CLASS, "args": dict(in_channels=n_in, out_channels=int(latent_channels),
                                                channels=list(channels))}


def latent_factor(autoencoder_channels) -> int:
    """Downsampling of the autoencoder: 2 per level after the first (MONAI AutoencoderKL)."""
    return 2 ** (len(autoencoder_channels) - 1)


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
