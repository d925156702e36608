"""Network intensities and body contours of STMDiff (docs/PHYSICS.md §4.1, §7).

PET (AC, SUVbw) and CT (HU) use CPDM's scalings (``methods.cpdm.intensities``: log scaling that
inverts exactly; HU / 1000). A NAC image in SUV units (PHYSICS.md §4.1: calibrated as the AC image,
never rescaled) sits far below the true SUV inside the body; it is multiplied by ``NAC_GAIN`` before
the same log scaling so that both PET inputs of the networks span a similar range.

Body contours (STMDiff §2.1, "opening, closing and threshold segmentation"): threshold, binary
opening (removes noise specks and the bed), closing and hole filling (lungs) per axial slice.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_closing, binary_fill_holes, binary_opening

from PETDiffusionLib.methods.cpdm.intensities import ct_to_net, net_to_pet, pet_to_net
from PETDiffusionLib.physics.attenuation import BODY_HU

__all__ = ["ct_to_net", "net_to_pet", "pet_to_net", "nac_to_net", "body_contours", "NAC_GAIN"]

NAC_GAIN = 8.0
"""Scale of a NAC image (SUV units) before the log scaling: the body-mean NAC/AC ratio is 0.11-0.13
on the simulated cohort (cohorts/stmdiff_train cases 0-2; of the order of the mean transmission
exp(-mu L) through a trunk, mu = 0.096 /cm, PHYSICS.md §3, raised by the scatter the NAC keeps), so
8 x NAC is of the order of the AC SUV."""

NAC_BODY_FRACTION = 0.15
"""Body threshold of a PET slice: this fraction of the slice's 99th percentile (the skin and
subcutaneous fat of a NAC image are its brightest soft tissue, PHYSICS.md §4)."""


def nac_to_net(nac_suv):
    return pet_to_net(np.asarray(nac_suv, np.float32) * NAC_GAIN)


def _clean(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    st = np.ones((3, 3), bool)
    for k in range(len(mask)):
        m = binary_opening(mask[k], st)
        m = binary_closing(m, st, iterations=2)
        out[k] = binary_fill_holes(m)
    return out


def body_contours(vol: np.ndarray, modality: str) -> np.ndarray:
    """Body mask per axial slice of a [z, y, x] volume: ``modality`` "ct" (HU > BODY_HU) or "pet"
    (above NAC_BODY_FRACTION of each slice's 99th percentile); then opening, closing, hole filling."""
    vol = np.asarray(vol, np.float32)
    if modality == "ct":
        raw = vol > BODY_HU
    elif modality == "pet":
        p99 = np.percentile(vol.reshape(len(vol), -1), 99, axis=1)
        raw = vol > (NAC_BODY_FRACTION * np.maximum(p99, 1e-6))[:, None, None]
    else:
        raise ValueError(f"modality must be ct or pet, not {modality!r}")
    return _clean(raw)
