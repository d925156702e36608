"""Card specs for the MONAI networks every task uses; build them with models.card.build_network.

A spec is JSON: ``{"class": "monai.networks.nets.DiffusionModelUNet", "args": {...}}`` with MONAI's
own constructor argument names, so a model card stores it as is and rebuilds the network from it.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from PETDiffusionLib.models.card import build_network


def diffusion_unet_spec(spatial_dims: int, in_channels: int, out_channels: int = 1,
                        channels: Sequence[int] = (32, 64, 64),
                        attention_levels: Sequence[bool] | None = None, num_res_blocks: int = 1,
                        norm_num_groups: int = 8, num_head_channels: int = 8) -> dict:
    """MONAI DiffusionModelUNet called as net(x, timesteps): the denoiser of DDPM/bridge/EDM."""
    levels = [False] * len(channels) if attention_levels is None else list(attention_levels)
    if len(levels) != len(channels):
        raise ValueError("attention_levels must have one entry per channels entry")
    return {"class": "monai.networks.nets.DiffusionModelUNet",
            "args": {"spatial_dims": spatial_dims, "in_channels": in_channels,
                     "out_channels": out_channels, "channels": list(channels),
                     "attention_levels": levels, "num_res_blocks": num_res_blocks,
                     "norm_num_groups": norm_num_groups, "num_head_channels": num_head_channels}}


def autoencoder_kl_spec(spatial_dims: int, in_channels: int = 1, latent_channels: int = 4,
                        channels: Sequence[int] = (32, 64, 64), num_res_blocks: int = 1,
                        norm_num_groups: int = 16) -> dict:
    """MONAI AutoencoderKL for latent diffusion (downsampling 2^(len(channels)-1))."""
    return {"class": "monai.networks.nets.AutoencoderKL",
            "args": {"spatial_dims": spatial_dims, "in_channels": in_channels,
                     "out_channels": in_channels, "latent_channels": latent_channels,
                     "channels": list(channels), "num_res_blocks": num_res_blocks,
                     "norm_num_groups": norm_num_groups,
                     "attention_levels": [False] * len(channels)}}


def build(spec: dict) -> nn.Module:
    """The network of a spec (remembers its spec for save_model_folder)."""
    return build_network(spec)
