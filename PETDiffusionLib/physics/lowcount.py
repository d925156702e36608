"""Low-count versions of a real PET, at the image's own voxel size (PHYSICS.md §4, §4.2).

How clinical low-count training data are made (Schaefferkoetter et al., EJNMMI Res 2019; Xia et al.
AMDiff Sec. 3.1): the standard acquisition is sub-sampled and re-reconstructed. Without list-mode data,
the reconstructed standard image stands in for the activity: it is forward-projected with attenuation,
scatter and randoms (:func:`PETDiffusionLib.physics.acquisition.simulate_scan`), Poisson counts at
``fraction`` of the simulator's standard level are drawn, and the sinogram is reconstructed again with
OSEM. The reference the low-count image is compared with is the standard image itself (its own noise
grain included), as in the independent checks of issue 13.

Everything a scanner site varies is a :class:`ReconSettings` field: OSEM iterations and subsets (MLEM
is one subset), a resolution (PSF) blur in the forward model and its modelling in the reconstruction,
and the Gaussian post-filter. The count level is continuous.

- Counts scale with the slice thickness (a thicker slice collects more coincidences): the standard
  level is the simulator's one at its calibration slice of :data:`CALIBRATION_SLICE_MM`.
- The image is zero-padded to a square whose inscribed circle (the projector's field of view) holds
  the whole image, so no corner of a crop is lost.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.physics.acquisition import (AcquisitionConfig, fwhm_to_sigma_vox, simulate_scan)
from PETDiffusionLib.physics.projector import ProjectorGeometry, columns_to_volume, get_projector

CALIBRATION_SLICE_MM = 5.0   # PHYSICS.md §4: the standard count level is calibrated on 5 mm slices
BODY_SUV = 0.05              # SUV above which a voxel of a PET without CT is body (training/real_sts.py)
SOFT_TISSUE_MU_PER_CM = 0.096  # PHYSICS.md §3: water/soft tissue at 511 keV
WEIGHT_KG = 75.0             # any weight: the dose is per kg, so counts per SUV do not depend on it


@dataclass(frozen=True)
class ReconSettings:
    """One site's acquisition and reconstruction (PHYSICS.md §4.2)."""

    iterations: int = 3            # clinical OSEM: 2-4 iterations (PHYSICS.md §4)
    subsets: int = 16              # 1 = MLEM
    psf_fwhm_mm: float = 0.0       # extra blur in the forward model (0: the image already has the
                                   # scanner's resolution, as a reconstructed clinical image does)
    psf_recon: bool = False        # model that blur in the reconstruction (resolution recovery)
    postfilter_fwhm_mm: float = 4.0  # clinical Gaussian post-filter, 0-6 mm (PHYSICS.md §4)

    def to_dict(self) -> dict:
        return asdict(self)


VALIDATION_SETTINGS = ReconSettings()
"""The fixed settings of the real validation split (a typical clinical OSEM 3 x 16, 4 mm filter)."""


def body_outline(suv: np.ndarray, spacing_xyz) -> np.ndarray:
    """The body of a PET without CT: SUV above :data:`BODY_SUV` after a 4 mm smoothing."""
    smooth = gaussian_filter(np.clip(suv, 0, None), fwhm_to_sigma_vox(4.0, spacing_xyz))
    return smooth > BODY_SUV


def pad_square(arrs: list[np.ndarray]) -> tuple[list[np.ndarray], tuple[slice, slice]]:
    """Zero-pad [Z,Y,X] arrays to an even n x n whose inscribed circle holds the whole image."""
    _, ny, nx = arrs[0].shape
    n = int(math.ceil(math.hypot(ny, nx))) + 2
    n += n % 2
    py, px = n - ny, n - nx
    pads = ((0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2))
    crop = (slice(py // 2, py // 2 + ny), slice(px // 2, px // 2 + nx))
    return [np.pad(a, pads) for a in arrs], crop


def angles_for(n: int, subsets: int) -> int:
    """Views over 180 degrees: about one per detector bin pair (n/2, at least 96), a multiple of the
    subsets and of 16 (so the shared projector cache is reused across subset choices)."""
    step = math.lcm(16, subsets)
    return max(96, int(math.ceil(n / 2 / step)) * step)


def _blur_columns(cols: torch.Tensor, n: int, sigma_pix: float) -> torch.Tensor:
    """2D Gaussian blur of every slice of a [n*n, z] column matrix (the PSF; symmetric: G^T = G)."""
    if sigma_pix <= 0:
        return cols
    z = cols.shape[1]
    vol = cols.T.reshape(z, n, n).numpy()
    out = gaussian_filter(vol, (0, sigma_pix, sigma_pix), mode="constant")
    return torch.from_numpy(np.ascontiguousarray(out.reshape(z, -1).T, dtype=np.float32))


def _osem(prompts, weights, background, geom: ProjectorGeometry, iterations: int,
          psf_sigma_pix: float) -> torch.Tensor:
    """OSEM (Hudson & Larkin 1994) for y ~ Poisson(w A G x + b), G the PSF (identity when 0):
    x <- x / (G A_s^T w_s) * G A_s^T (w_s y_s / (w_s A_s G x + b_s))."""
    P = get_projector(geom)
    n = geom.n
    subsets = []
    total_sens = torch.zeros(geom.n_pixels, prompts.shape[1])
    for s in range(geom.n_subsets):
        r = torch.from_numpy(P.subset_rows(s))
        w = weights[r]
        sens = _blur_columns(P.adjoint(w, s), n, psf_sigma_pix)
        total_sens += sens
        inv = torch.where(sens > 1e-9, 1.0 / sens.clamp_min(1e-12), torch.zeros(()))
        subsets.append((prompts[r], w, background[r].clamp_min(1e-6), inv))
    net = (prompts - background).sum(0).clamp_min(1.0)
    x = (total_sens > 0).float() * (net / total_sens.sum(0).clamp_min(1e-12))[None, :]
    for _ in range(iterations):
        for s, (y, w, b, inv) in enumerate(subsets):
            ratio = y / (w * P.forward(_blur_columns(x, n, psf_sigma_pix), s) + b)
            x = x * _blur_columns(P.adjoint(w * ratio, s), n, psf_sigma_pix) * inv
    return x


def simulate_low_count(suv: np.ndarray, spacing_xyz, fraction: float, settings: ReconSettings,
                       seed: int, mu_per_cm: np.ndarray | None = None) -> np.ndarray:
    """A ``fraction`` (0-1] count version of the real PET ``suv`` ([Z,Y,X] SUVbw), same grid.

    ``mu_per_cm``: the attenuation map on the same grid (from the CT); None: soft tissue inside
    :func:`body_outline`. Deterministic for a given ``seed``.
    """
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"count fraction must be in (0, 1], got {fraction}")
    sx, sy, sz = (float(s) for s in spacing_xyz)
    if abs(sx - sy) > 1e-3 * max(sx, sy):
        raise InputError(f"in-plane voxels must be square, got {sx} x {sy} mm")
    suv = np.clip(np.asarray(suv, np.float32), 0, None)
    if mu_per_cm is None:
        mu_per_cm = np.where(body_outline(suv, spacing_xyz), SOFT_TISSUE_MU_PER_CM, 0.0)
    (s_pad, m_pad), crop = pad_square([suv, np.asarray(mu_per_cm, np.float32)])
    n = s_pad.shape[1]
    cfg = AcquisitionConfig(n_angles=angles_for(n, settings.subsets), n_subsets=settings.subsets,
                            iterations=settings.iterations, psf_fwhm_mm=settings.psf_fwhm_mm,
                            postfilter_fwhm_mm=settings.postfilter_fwhm_mm)
    # counts per slice grow with the slice thickness (module docstring)
    cfg = replace(cfg, sensitivity=cfg.sensitivity * sz / CALIBRATION_SLICE_MM)
    rng = np.random.default_rng(seed)
    scan = simulate_scan(s_pad, m_pad, (sx, sy, sz), WEIGHT_KG, cfg.uptake_min, cfg, rng)
    geom: ProjectorGeometry = scan.extra["geometry"]
    y = scan.prompts
    if fraction < 1.0:
        y = torch.from_numpy(rng.binomial(y.numpy().astype(np.int64), fraction).astype(np.float32))
    w = scan.extra["scale"] * fraction * scan.af
    b = scan.background * fraction
    psf_sigma = fwhm_to_sigma_vox(settings.psf_fwhm_mm, (sx, sy, sz))[2] if settings.psf_recon else 0.0
    x = _osem(y, w, b, geom, settings.iterations, psf_sigma)
    vol = columns_to_volume(x, s_pad.shape)
    if settings.postfilter_fwhm_mm > 0:
        vol = gaussian_filter(vol, fwhm_to_sigma_vox(settings.postfilter_fwhm_mm, (sx, sy, sz)))
    out = np.clip(vol * scan.suv_per_bq_ml, 0, None)[:, crop[0], crop[1]]
    return np.ascontiguousarray(out, dtype=np.float32)

