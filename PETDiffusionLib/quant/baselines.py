"""Classical denoisers of PET in SUV: the baselines a learned denoiser must beat (issue 13).

- :func:`gaussian`: an isotropic 3D Gaussian post-filter given as FWHM in mm (the clinical filter).
- :func:`nlm`: non-local means (Buades, Coll & Morel, "A non-local algorithm for image denoising",
  CVPR 2005), scikit-image's ``denoise_nl_means`` in 3D (its fast, blockwise variant: Darbon et al.
  2008), after a variance-stabilising transform.
- :func:`bm4d_vst`: BM4D (Maggioni, Katkovnik, Egiazarian & Foi, "Nonlocal transform-domain filter
  for volumetric data denoising and reconstruction", IEEE TIP 22(1), 2013), the ``bm4d`` package,
  after the same transform.

Variance stabilisation. Reconstructed PET noise has a variance that grows about linearly with the
local mean (Poisson counts through a nearly linear reconstruction; Riddell et al., J Nucl Med 2001;
:mod:`PETDiffusionLib.quant.noise`), i.e. the image behaves like ``gain`` x Poisson counts. NLM and
BM4D assume noise of one level everywhere, so the image is first put through the Anscombe transform
(Anscombe, "The transformation of Poisson, binomial and negative-binomial data", Biometrika 35, 1948)
of those counts: ``y = 2 sqrt(suv / gain + 3/8)``, whose noise SD is about 1. The gain (SUV per
count, variance / mean) is estimated from the image itself: the square of its noise index
(:func:`PETDiffusionLib.quant.noise.noise_index`, the robust SD of (noisy - smooth) / sqrt(smooth)).
The parameters ``h`` (NLM) and ``sigma`` (BM4D) are therefore in units of that noise SD; because
reconstructed noise is correlated (the voxel SD understates what a white-noise filter must remove),
both are tuned, as is the Gaussian's width (:func:`tune`). The denoised ``y`` goes back through
Anscombe's asymptotically unbiased inverse ``gain ((y/2)^2 - 1/8)`` (same paper; the exact algebraic
inverse, minus 3/8, is biased low for a smoothed y).

NLM and BM4D run inside the body's bounding box (plus a margin); outside it the input is kept (air).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Sequence

import bm4d
import numpy as np
from bm4d.profiles import BM4DProfile, BM4DProfileLC
from scipy.ndimage import gaussian_filter
from skimage.restoration import denoise_nl_means

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.physics.acquisition import fwhm_to_sigma_vox
from PETDiffusionLib.physics.lowcount import body_outline
from PETDiffusionLib.quant.metrics import nrmse
from PETDiffusionLib.quant.noise import noise_index

log = logging.getLogger(__name__)

ANSCOMBE_OFFSET = 3.0 / 8.0       # Anscombe 1948: 2 sqrt(x + 3/8) has variance ~1 for Poisson x
ANSCOMBE_UNBIASED = 1.0 / 8.0     # Anscombe 1948: E[y] -> (y/2)^2 - 1/8 is the asymptotically unbiased inverse
GAIN_SMOOTH_FWHM_MM = 10.0        # the smooth estimate behind the noise index: ~2 PET resolutions
                                  # (PHYSICS.md §4: resolution 4-6 mm FWHM), so it keeps organs but not grain
BOX_MARGIN_VOX = 4                # voxels around the body kept in the box (> NLM / BM4D search radius)
NLM_PATCH_SIZE = 3                # voxels; 3^3 patches, search radius 3: a 2.2 M-voxel volume in
NLM_PATCH_DISTANCE = 3            # ~10 s on one core (measured: 5^3 / radius 4 took 20 s, NRMSE -1 %)


def gaussian(suv: np.ndarray, spacing_xyz, fwhm_mm: float) -> np.ndarray:
    """3D Gaussian filter of FWHM ``fwhm_mm`` (mm -> voxels per axis); 0 returns the input."""
    suv = np.asarray(suv, np.float32)
    if fwhm_mm < 0:
        raise InputError(f"Gaussian FWHM must be >= 0 mm, got {fwhm_mm}")
    if fwhm_mm == 0:
        return suv.copy()
    return gaussian_filter(suv, fwhm_to_sigma_vox(fwhm_mm, tuple(spacing_xyz))).astype(np.float32)


def noise_gain(suv: np.ndarray, spacing_xyz, body: np.ndarray | None = None) -> float:
    """SUV per Poisson count (variance / mean) of a reconstructed PET: the noise index squared."""
    suv = np.clip(np.asarray(suv, np.float32), 0, None)
    body = body_outline(suv, spacing_xyz) if body is None else np.asarray(body, bool)
    ni = noise_index(suv, gaussian(suv, spacing_xyz, GAIN_SMOOTH_FWHM_MM), body)
    if not np.isfinite(ni) or ni <= 0:
        raise InputError("too little signal in the body to estimate the noise level "
                         "(needs 100 voxels above 0.2 SUV): give the gain explicitly")
    return float(ni) ** 2


def vst(suv: np.ndarray, gain: float) -> np.ndarray:
    """Anscombe transform of ``suv / gain`` counts: 2 sqrt(suv / gain + 3/8) (negatives -> 0)."""
    if gain <= 0:
        raise InputError(f"VST gain must be > 0 SUV per count, got {gain}")
    return 2.0 * np.sqrt(np.clip(np.asarray(suv, np.float64), 0, None) / gain + ANSCOMBE_OFFSET)


def inverse_vst(y: np.ndarray, gain: float, unbiased: bool = False) -> np.ndarray:
    """Back to SUV: exact algebraic inverse of :func:`vst`, or (``unbiased``) Anscombe's
    asymptotically unbiased one for a denoised ``y``; clipped at 0 SUV."""
    offset = ANSCOMBE_UNBIASED if unbiased else ANSCOMBE_OFFSET
    y = np.asarray(y, np.float64)
    return np.clip(gain * ((y / 2.0) ** 2 - offset), 0, None).astype(np.float32)


def _body_box(body: np.ndarray) -> tuple[slice, ...]:
    idx = np.nonzero(body)
    if len(idx[0]) == 0:
        return tuple(slice(0, n) for n in body.shape)
    return tuple(slice(max(0, int(i.min()) - BOX_MARGIN_VOX), min(n, int(i.max()) + BOX_MARGIN_VOX + 1))
                 for i, n in zip(idx, body.shape))


def _in_vst_domain(suv, spacing_xyz, gain, denoise: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """VST, ``denoise`` inside the body box, unbiased inverse; the input outside the box."""
    suv = np.clip(np.asarray(suv, np.float32), 0, None)
    body = body_outline(suv, spacing_xyz)
    gain = noise_gain(suv, spacing_xyz, body) if gain is None else float(gain)
    box = _body_box(body)
    out = suv.copy()
    out[box] = inverse_vst(denoise(vst(suv[box], gain)), gain, unbiased=True)
    return out


def nlm(suv: np.ndarray, spacing_xyz, h: float, patch_size: int = NLM_PATCH_SIZE,
        patch_distance: int = NLM_PATCH_DISTANCE, gain: float | None = None) -> np.ndarray:
    """Non-local means (Buades et al. 2005) in 3D after the VST; ``h`` in noise SDs of the VST image.

    ``gain`` (SUV per count): None estimates it (:func:`noise_gain`); scikit-image's ``sigma`` is the
    nominal VST noise SD 1 (its fast mode subtracts 2 sigma^2 from the patch distances)."""
    if h <= 0:
        raise InputError(f"NLM h must be > 0, got {h}")
    return _in_vst_domain(suv, spacing_xyz, gain, lambda y: denoise_nl_means(
        y, patch_size=patch_size, patch_distance=patch_distance, h=float(h), sigma=1.0,
        fast_mode=True, preserve_range=True, channel_axis=None))


def fast_profile() -> BM4DProfile:
    """The package's low-complexity profile ('lc': 4-voxel search half-width) with reference blocks
    every 4 voxels (not 3) and a 3-voxel search half-width: half the time of 'lc' at the same body
    NRMSE (measured on crop STS_051 at 10 % counts: 3.3 s vs 7.0 s on one core, NRMSE 0.00835 both)."""
    prof = BM4DProfileLC()
    prof.step_ht = prof.step_wiener = (4, 4, 4)
    prof.search_window_ht = prof.search_window_wiener = (3, 3, 3)
    return prof


def bm4d_vst(suv: np.ndarray, sigma: float, spacing_xyz, gain: float | None = None,
             profile: str | BM4DProfile = "fast") -> np.ndarray:
    """BM4D (Maggioni et al. 2013) after the VST; ``sigma`` is the noise SD it assumes, in noise SDs
    of the VST image. ``profile``: "fast" (:func:`fast_profile`), "lc", "np" (the package's
    normal profile, several times slower) or a BM4DProfile."""
    if sigma <= 0:
        raise InputError(f"BM4D sigma must be > 0, got {sigma}")
    prof = {"fast": fast_profile, "lc": BM4DProfileLC}.get(profile, lambda: profile)() \
        if isinstance(profile, str) else profile
    return _in_vst_domain(suv, spacing_xyz, gain,
                          lambda y: np.asarray(bm4d.bm4d(y.astype(np.float32), float(sigma),
                                                         profile=prof), np.float64))


BASELINES: dict[str, Callable[[np.ndarray, Sequence[float], float], np.ndarray]] = {
    "gaussian": lambda low, sp, p: gaussian(low, sp, p),
    "nlm": lambda low, sp, p: nlm(low, sp, p),
    "bm4d": lambda low, sp, p: bm4d_vst(low, p, sp),
}
"""name -> f(low, spacing_xyz, parameter): the tuned parameter is the Gaussian's FWHM (mm), NLM's h
and BM4D's sigma (both in VST noise SDs)."""


def apply(name: str, low: np.ndarray, spacing_xyz, param: float) -> np.ndarray:
    if name not in BASELINES:
        raise InputError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return BASELINES[name](low, spacing_xyz, param)


def tune_scores(name: str, pairs: Iterable[tuple], grid: Sequence[float]) -> dict[float, float]:
    """Mean body NRMSE (:func:`PETDiffusionLib.quant.metrics.nrmse` inside each body mask) of
    baseline ``name`` at each ``grid`` value over ``pairs`` of (low, reference, body mask,
    spacing_xyz): the spacing travels with each pair because real crops differ in voxel size."""
    pairs = list(pairs)
    if not pairs or not grid:
        raise InputError(f"tuning {name!r} needs at least one pair and one grid value")
    scores = {}
    for p in grid:
        vals = [nrmse(ref, apply(name, low, sp, p), body) for low, ref, body, sp in pairs]
        scores[float(p)] = float(np.mean(vals))
    return scores


def tune(name: str, pairs: Iterable[tuple], grid: Sequence[float]) -> float:
    """The ``grid`` value of baseline ``name`` with the lowest mean body NRMSE over ``pairs``."""
    pairs = list(pairs)
    scores = tune_scores(name, pairs, grid)
    best = min(scores, key=scores.get)
    log.info("%s tuned on %d pair(s): body NRMSE by parameter %s -> %g", name, len(pairs),
             {k: round(v, 5) for k, v in scores.items()}, best)
    if best in (min(grid), max(grid)) and len(grid) > 2 and not math.isclose(best, 0.0):
        log.warning("%s: the best parameter %g is at the edge of the grid %s", name, best, list(grid))
    return best
