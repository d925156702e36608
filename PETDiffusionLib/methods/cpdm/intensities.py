"""CPDM's intensity units and condition maps (used by the ct-to-pet pipeline, its recipe and tests).

- CT: HU / 1000 after clipping to the 12-bit CT range [-1024, 3071] HU (CPDM §3 normalises CT by its
  12-bit maximum 2^11 - 1; dividing HU by 1000 keeps air at -1 and water at 0).
- PET: p = 2 log(1 + SUV) / log(1 + SUV_REF) - 1, inverted exactly by SUV = exp((p + 1) log(1 +
  SUV_REF) / 2) - 1. Logarithmic, so SUV 40 maps to about 2.1 and nothing is clipped at the top
  (log(1+SUV) scaling as TotalGen does). SUV_REF = 10 puts the usual FDG range (0-10 SUV,
  PHYSICS.md §5) on [-1, 1]. Negative SUVs (reconstruction noise only) are floored at 0 before
  scaling, since log(1 + SUV) is undefined below -1 and SUV is non-negative physically.
- M_mu: exp(-mu) with mu from HU by Abella 2012 (CPDM §4.2, PHYSICS.md §3), fed to the denoiser
  as a fixed affine rescale.
- Tissue classes of the non-learned floor (the evaluation's baseline).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import binary_fill_holes

from PETDiffusionLib.physics.attenuation import BODY_HU, attenuation_map

CT_HU_MIN, CT_HU_MAX = -1024.0, 3071.0  # 12-bit CT (CPDM §3: CT stored with max 2^11 - 1 offsets)
CT_HU_SCALE = 1000.0                    # HU -> water 0, air -1
PET_SUV_REF = 10.0                      # SUV that maps to +1 (PHYSICS.md §5: FDG organs 0.5-10)
_PET_LOG_REF = math.log1p(PET_SUV_REF)

MU_MAP_CENTRE, MU_MAP_GAIN = 0.95, 20.0
"""M_mu = exp(-mu) spans only ~0.87 (bone) .. 1.0 (air) (PHYSICS.md §3 at 120 kVp); the denoiser is
fed the fixed affine rescale (M_mu - 0.95) * 20 so its range matches the latents'. This is a
change of units only; M_mu itself is what the task writes to attenuation_map.nii.gz."""

TISSUE_CLASSES = ("outside_body", "lung", "fat", "soft_tissue", "bone")
TISSUE_HU_EDGES = (-500.0, -30.0, 180.0)
"""Lung < -500 HU <= fat < -30 HU <= soft tissue < 180 HU <= bone: mid-points between the tissue
ranges of PHYSICS.md §5 (lung -850..-910, fat -50..-100, water 0, liver 45-65, cancellous bone ~300)."""


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


def net_to_suv(p: torch.Tensor) -> torch.Tensor:
    """Decoder output -> SUV, floored at 0 (SUV is non-negative)."""
    return net_to_pet(p).clamp_min(0.0)


def attenuation_condition(ct_hu: np.ndarray, kvp: float) -> np.ndarray:
    """The denoiser's M_mu channel: (exp(-mu) - 0.95) * 20, mu by Abella 2012 (CPDM §4.2)."""
    return ((attenuation_map(ct_hu, kvp, method="abella") - MU_MAP_CENTRE) * MU_MAP_GAIN).astype(np.float32)


def body_mask(ct_hu: np.ndarray) -> np.ndarray:
    """CT above BODY_HU with enclosed holes (the lungs) filled, slice by slice for a volume."""
    m = ct_hu > BODY_HU
    return np.stack([binary_fill_holes(s) for s in m]) if m.ndim == 3 else binary_fill_holes(m)


def body_slices(ct_hu: np.ndarray, min_fraction: float = 0.02) -> np.ndarray:
    """Indices of the slices whose area is more than ``min_fraction`` body (CT above BODY_HU), so
    that training crops hold anatomy."""
    return np.where((ct_hu > BODY_HU).reshape(len(ct_hu), -1).mean(1) > min_fraction)[0]


def tissue_classes(ct_hu: np.ndarray) -> np.ndarray:
    """Index into TISSUE_CLASSES per voxel (0 outside the body)."""
    cls = 1 + np.digitize(ct_hu, TISSUE_HU_EDGES)
    cls[~body_mask(ct_hu)] = 0
    return cls.astype(np.int64)


def tissue_floor(ct_hu: np.ndarray, floor_suv: dict[str, float]) -> np.ndarray:
    """The non-learned floor: each voxel gets the training-set mean SUV of its CT tissue class."""
    values = np.array([floor_suv[c] for c in TISSUE_CLASSES], np.float32)
    return values[tissue_classes(ct_hu)]


def attention_target(pet_suv, threshold: float):
    """CPDM §4.2: the ground-truth attention mask is PET above a threshold, here in SUV."""
    return pet_suv > threshold
