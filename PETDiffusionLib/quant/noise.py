"""A noise index of a PET image: how noisy it is relative to its signal, in Poisson units.

Reconstructed PET noise has a variance that grows about linearly with the local mean (Poisson counts
through a linear-ish reconstruction; Riddell et al., J Nucl Med 2001), so the residual between a
noisy image and a smooth estimate of it, divided by the square root of that estimate, has a roughly
constant spread over the body. Its robust standard deviation (1.4826 x median absolute deviation,
Huber 1981) is the noise index, in sqrt(SUV). For one scanner and reconstruction it scales as
1 / sqrt(count level): half the counts, about 1.41 times the index.

The denoise-segment model card stores the range of this index over its training data
(``inference.noise_index_range``); an input far outside it is a count level the model never saw.
"""
from __future__ import annotations

import numpy as np

MIN_SIGNAL_SUV = 0.2   # voxels whose smooth estimate is below this SUV (air, cold edges) are left out
MAD_TO_SD = 1.4826     # Gaussian consistency factor of the median absolute deviation (Huber 1981)


def noise_index(noisy: np.ndarray, smooth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Robust SD of (noisy - smooth) / sqrt(smooth) over ``mask`` voxels with smooth >= 0.2 SUV.

    Returns NaN when fewer than 100 voxels qualify (too little signal to say)."""
    noisy = np.asarray(noisy, np.float64)
    smooth = np.asarray(smooth, np.float64)
    sel = smooth >= MIN_SIGNAL_SUV
    if mask is not None:
        sel &= np.asarray(mask, bool)
    if int(sel.sum()) < 100:
        return float("nan")
    r = (noisy[sel] - smooth[sel]) / np.sqrt(smooth[sel])
    return float(MAD_TO_SD * np.median(np.abs(r - np.median(r))))
