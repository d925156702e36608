"""2.5D PET acquisition simulation and OSEM reconstruction (PHYSICS.md §4).

Forward model (FBSEM; standard): attenuation factors AF = exp(-A mu); expected sinogram
ybar = eps * T * AF * A(G x) + scatter + randoms; y ~ Poisson(ybar), G a Gaussian PSF. Activity x is
in Bq/mL, obtained from SUV with the injected dose decayed to the scan time and the body weight, so
the reconstruction converts back to SUVbw with the same numbers (PHYSICS.md §1). Every slice is a 2D
acquisition; all slices go through the sparse projector at once.

- AC image: OSEM with AF, scatter and randoms in the system model, no PSF modelling (the image keeps
  the scanner's resolution), light Gaussian post-filter.
- NAC image: the same data reconstructed without AF and without scatter correction (randoms only):
  hot skin and lungs, depressed body centre. It is calibrated exactly as the AC image (the same
  sensitivity, frame time and Bq/mL -> SUVbw factor) and never rescaled toward any other image, as a
  scanner's NAC reconstruction in SUV units (PHYSICS.md §4.1): its values are far below the true
  SUV inside the body (about exp(-mu L) of it before the scatter it keeps).
- Low count: binomial thinning of the standard prompts to the count fraction (as in list-mode
  subsampling, the way low-count training data are made from clinical scans).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from PETDiffusionLib.physics.projector import (ProjectorGeometry, columns_to_volume, get_projector,
                                               volume_to_columns)

log = logging.getLogger(__name__)

F18_HALF_LIFE_S = 6586.2  # PHYSICS.md §1 (as in DICOM headers)
GA68_HALF_LIFE_S = 4057.7  # PHYSICS.md §1 (IBSI DRO_5_0)


@dataclass
class AcquisitionConfig:
    n_angles: int = 128  # PHYSICS.md §4: 128 angles at 128^2
    n_subsets: int = 16
    iterations: int = 3  # clinical OSEM is typically 2-4 iterations x 16-24 subsets
    psf_fwhm_mm: float = 5.0  # PHYSICS.md §4: resolution about 4-6 mm FWHM
    postfilter_fwhm_mm: float = 4.0  # a typical clinical post-filter (4-6 mm)
    scatter_fraction: float = 0.35  # PHYSICS.md §4: scatter fraction 30-42 %
    scatter_kernel_mm: float = 60.0  # scatter is smooth: Gaussian sigma across detector bins
    randoms_fraction: float = 0.10  # randoms as a fraction of trues+scatter (flat over the FOV)
    injected_mbq_per_kg: float = 3.5  # EANM FDG guideline v2 order of magnitude (MBq/kg)
    uptake_min: float = 60.0  # PHYSICS.md §5: FDG about 60 min p.i.
    delayed_min: float = 150.0  # PHYSICS.md §5: dual-time-point second scan about 150 min p.i.
    # Detected counts per slice and per (Bq/mL * cm of path * s of frame): calibrated so that the
    # liver of the standard-count AC image has a noise CV of about 10-15 %, as in clinical FDG scans.
    sensitivity: float = 8.0e-4
    frame_s: float = 120.0  # 2 min per bed, clinical whole-body FDG
    half_life_s: float = F18_HALF_LIFE_S
    fractions: tuple[int, ...] = (50, 25, 10, 5)  # percent of standard counts (PHYSICS.md §4: 5-25 %)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Scan:
    """One time point: what the scanner saw (on the CT grid) plus its scaling numbers."""

    suv_per_bq_ml: float  # multiply Bq/mL by this to get SUVbw
    prompts: torch.Tensor  # [rays, slices] counts at standard level
    background: torch.Tensor  # expected scatter + randoms at standard level
    randoms: torch.Tensor
    af: torch.Tensor  # attenuation factors
    counts_total: float
    extra: dict = field(default_factory=dict)


def fwhm_to_sigma_vox(fwhm_mm: float, spacing_xyz: tuple[float, float, float]) -> list[float]:
    s = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # sigma = FWHM / 2.355
    return [s / spacing_xyz[2], s / spacing_xyz[1], s / spacing_xyz[0]]


def decayed_dose_bq(weight_kg: float, minutes: float, cfg: AcquisitionConfig) -> float:
    dose = cfg.injected_mbq_per_kg * weight_kg * 1e6
    return dose * math.exp(-math.log(2) * minutes * 60.0 / cfg.half_life_s)


def simulate_scan(suv: np.ndarray, mu_per_cm: np.ndarray, spacing_xyz: tuple[float, float, float],
                  weight_kg: float, minutes: float, cfg: AcquisitionConfig,
                  rng: np.random.Generator) -> Scan:
    """Project one time point: PSF, attenuation, scatter, randoms, Poisson noise."""
    z, ny, nx = suv.shape
    geom = ProjectorGeometry(nx, spacing_xyz[0], cfg.n_angles, cfg.n_subsets)
    P = get_projector(geom)
    dose = decayed_dose_bq(weight_kg, minutes, cfg)
    bq_ml_per_suv = dose / (weight_kg * 1000.0)  # SUVbw = C * W[g] / D  (PHYSICS.md §1)
    act = gaussian_filter(suv * bq_ml_per_suv, fwhm_to_sigma_vox(cfg.psf_fwhm_mm, spacing_xyz))
    af = torch.exp(-P.forward(volume_to_columns(mu_per_cm)))
    scale = cfg.sensitivity * cfg.frame_s
    trues = scale * af * P.forward(volume_to_columns(act))
    n_b = geom.n
    # scatter: a broad blur of the trues across bins, scaled to the scatter fraction SF of
    # trues+scatter in each slice: S = SF / (1 - SF) * T
    t3 = trues.reshape(cfg.n_angles, n_b, z).numpy()
    sc = gaussian_filter1d(t3, cfg.scatter_kernel_mm / spacing_xyz[0], axis=1, mode="constant")
    sc = gaussian_filter1d(sc, 2.0, axis=0, mode="wrap")
    tsum = t3.sum((0, 1))
    ssum = sc.sum((0, 1))
    sc *= (cfg.scatter_fraction / (1 - cfg.scatter_fraction)) * tsum / np.maximum(ssum, 1e-12)
    scatter = torch.from_numpy(sc.reshape(-1, z).astype(np.float32))
    # randoms: flat over the sinogram of each slice, RF of trues + scatter
    rnd = cfg.randoms_fraction * (tsum + sc.sum((0, 1))) / (cfg.n_angles * n_b)
    randoms = torch.from_numpy(np.broadcast_to(rnd[None, :], (cfg.n_angles * n_b, z)).astype(np.float32).copy())
    ybar = trues + scatter + randoms
    prompts = torch.from_numpy(rng.poisson(ybar.numpy().astype(np.float64)).astype(np.float32))
    return Scan(suv_per_bq_ml=1.0 / bq_ml_per_suv, prompts=prompts, background=scatter + randoms,
                randoms=randoms, af=af, counts_total=float(prompts.sum()),
                extra={"geometry": geom, "scale": scale})


def osem(prompts: torch.Tensor, weights: torch.Tensor, background: torch.Tensor, geom: ProjectorGeometry,
         iterations: int) -> torch.Tensor:
    """OSEM (Hudson & Larkin 1994) for y ~ Poisson(w * A x + b): x <- x / (A_s^T w_s) A_s^T(w_s y_s / (w_s A_s x + b_s)).

    ``weights`` are the per-ray multiplicative factors (sensitivity x frame x attenuation)."""
    P = get_projector(geom)
    # per-subset data, weights, background and inverse sensitivity, gathered once
    ys, ws, bs, inv_sens = [], [], [], []
    total_sens = torch.zeros(geom.n_pixels, prompts.shape[1])
    for s in range(geom.n_subsets):
        r = torch.from_numpy(P.subset_rows(s))
        w = weights[r]
        sens = P.adjoint(w, s)
        total_sens += sens
        ys.append(prompts[r])
        ws.append(w)
        bs.append(background[r].clamp_min(1e-6))  # randoms are > 0 on every ray: no 0/0
        inv_sens.append(torch.where(sens > 0, 1.0 / sens.clamp_min(1e-12), torch.zeros(())))
    # start from a uniform image (per slice) holding the net counts, so early subsets do not overshoot
    net = (prompts - background).sum(0).clamp_min(1.0)
    x = (total_sens > 0).float() * (net / total_sens.sum(0).clamp_min(1e-12))[None, :]
    for _ in range(iterations):
        for s in range(geom.n_subsets):
            w = ws[s]
            ratio = ys[s] / (w * P.forward(x, s) + bs[s])
            x = x * P.adjoint(w * ratio, s) * inv_sens[s]
    return x


def reconstruct(scan: Scan, fraction: float, shape: tuple[int, int, int], spacing_xyz, cfg: AcquisitionConfig,
                rng: np.random.Generator | None, attenuation: bool = True) -> np.ndarray:
    """Reconstruct the scan thinned to ``fraction`` of its counts; returns SUVbw, AC or NAC (the NAC
    with the AC image's calibration: same sensitivity, frame and SUV factor, PHYSICS.md §4.1)."""
    geom: ProjectorGeometry = scan.extra["geometry"]
    y = scan.prompts
    if fraction < 1.0:
        y = torch.from_numpy(rng.binomial(y.numpy().astype(np.int64), fraction).astype(np.float32))
    scale = scan.extra["scale"] * fraction
    if attenuation:
        w = scale * scan.af
        b = scan.background * fraction
    else:
        w = torch.full_like(scan.af, scale)
        b = scan.randoms * fraction
    x = osem(y, w, b, geom, cfg.iterations)
    vol = columns_to_volume(x, shape)
    if cfg.postfilter_fwhm_mm > 0:
        vol = gaussian_filter(vol, fwhm_to_sigma_vox(cfg.postfilter_fwhm_mm, spacing_xyz))
    return (vol * scan.suv_per_bq_ml).astype(np.float32)

