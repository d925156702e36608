"""TotalGen's intensity scalings and condition channels (seed §2.2), exactly invertible.

- CT: clip to [-500, 500] HU, scale linearly to [0, 1].
- PET: SUV clipped to [0, 25], SUV_log = log(SUV + 1) / log(26).
- Demographics: age/100, sex (0 = female, 1 = male), height/100 (cm), weight/100 (kg), as constant
  channels of the input volume.
- Position (PatchDiffusion, Wang et al. 2023, as TotalGen §2.2): normalised -1..1 x, y, z channels.

The diffusion networks see every unit channel u in [0, 1] as 2u - 1 (data std near EDM's
sigma_data = 0.5, Karras et al. 2022 §5).
"""
from __future__ import annotations

import math

import numpy as np
import torch

CT_HU_MIN, CT_HU_MAX = -500.0, 500.0  # TotalGen §2.2
SUV_MAX = 25.0  # TotalGen §2.2: SUV clipped to [0, 25], normalised by log(26)
LOG26 = math.log(SUV_MAX + 1.0)
DEMOGRAPHIC_SCALE = 100.0  # TotalGen §2.2: "(age, height, weight)/100"


def ct_to_unit(hu):
    return (np.clip(hu, CT_HU_MIN, CT_HU_MAX) - CT_HU_MIN) / (CT_HU_MAX - CT_HU_MIN)


def unit_to_ct(u):
    return np.clip(u, 0.0, 1.0) * (CT_HU_MAX - CT_HU_MIN) + CT_HU_MIN


def pet_to_unit(suv):
    return np.log1p(np.clip(suv, 0.0, SUV_MAX)) / LOG26


def unit_to_pet(u):
    return np.expm1(np.clip(u, 0.0, 1.0) * LOG26)


def demographic_vector(age: float, sex: str, height_cm: float, weight_kg: float) -> list[float]:
    """[age/100, sex (1 male, 0 female), height/100, weight/100] (TotalGen §2.2)."""
    return [age / DEMOGRAPHIC_SCALE, 1.0 if sex.upper().startswith("M") else 0.0,
            height_cm / DEMOGRAPHIC_SCALE, weight_kg / DEMOGRAPHIC_SCALE]


def demographic_channels(demo: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """[B, 4] -> [B, 4, *spatial] constant channels."""
    return demo[(...,) + (None,) * len(spatial)].expand(*demo.shape, *spatial)


def position_channels(full: tuple[int, int, int], start: tuple[int, int, int] = (0, 0, 0),
                      size: tuple[int, int, int] | None = None) -> torch.Tensor:
    """[3, *size] normalised (-1..1) z, y, x coordinates of the voxels ``start:start+size`` of a
    volume of shape ``full`` (PatchDiffusion's patch position encoding)."""
    size = size or full
    axes = [torch.linspace(-1.0, 1.0, n)[s:s + k] for n, s, k in zip(full, start, size)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))
