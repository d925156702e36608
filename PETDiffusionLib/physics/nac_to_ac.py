"""Attenuation correction of a reconstructed NAC PET with a registered CT, in image space.

dual-timepoint-ac's physics stage (issue 16) and its classical baseline: the delayed NAC is all that
is left of the delayed scan's data, and the first scan's CT, once moved onto it, gives the
attenuation the scanner would have used.

1. Registration (:func:`register_ct_to_nac`): a rigid translation of the CT maximising Mattes mutual
   information (Mattes et al., IEEE TMI 22:120, 2003; SimpleITK) inside the NAC's body, on a grid of
   at least :data:`REGISTRATION_SPACING_MM`. Rotations are not estimated: on the 8 real sarcoma crops
   of ``petdiffusion evaluate dual-timepoint-ac --real-crops`` a 6-parameter rigid fit drifted to
   7-30 degrees in most cases (the true motion has 3), while translation alone recovered the
   couch shift; the residual rotation (a few degrees) moves the skin by millimetres.
2. Reprojection (:func:`reprojection_ac`): a NAC reconstruction fits its data with no attenuation in
   the system model, so its forward projection A x_nac is, up to noise, the data it was made from
   with the randoms removed: AF * A(f) + S (AF = exp(-A mu), S the scatter a NAC keeps,
   PHYSICS.md §4). S is estimated by convolution of those data (Bailey & Meikle, Eur J Nucl Med
   21:1994; the convolution-subtraction family) scaled to the scatter fraction
   :data:`SCATTER_FRACTION`; OSEM with AF in the system model and S as background then gives f.
   The NAC's own resolution and noise carry over: no working grid, no network.

Research method: the image is synthetic (an estimate of the AC image, not a reconstruction of data).
"""
from __future__ import annotations

import logging
import math

import numpy as np
import SimpleITK as sitk
import torch
from scipy.ndimage import binary_dilation, gaussian_filter1d

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.physics.acquisition import osem
from PETDiffusionLib.physics.lowcount import angles_for
from PETDiffusionLib.physics.projector import (ProjectorGeometry, columns_to_volume, get_projector,
                                               volume_to_columns)

log = logging.getLogger(__name__)

SCATTER_FRACTION = 0.35
"""Scatter / (trues + scatter) of a whole-body 3D PET scan: PHYSICS.md §4 gives 30-42 %; the middle
of that range (the simulator's ``AcquisitionConfig.scatter_fraction`` is the same value)."""
SCATTER_KERNEL_MM = 60.0
"""Gaussian sigma of the scatter distribution across detector bins: scatter is broad, tens of cm
(PHYSICS.md §4; the simulator's ``AcquisitionConfig.scatter_kernel_mm``)."""
OSEM_ITERATIONS = 3
OSEM_SUBSETS = 16
"""Clinical OSEM: 2-4 iterations x 16-24 subsets (``AcquisitionConfig``, PHYSICS.md §4)."""
REGISTRATION_SPACING_MM = 4.0
"""Registration grid: NAC and CT resampled to at least 4 mm (a clinical PET voxel, PHYSICS.md §4),
which keeps the mutual information fast on a 256^2 x 250 study and is finer than the PET's
resolution (4-6 mm FWHM)."""
MAX_PLAUSIBLE_SHIFT_MM = 60.0
"""A translation beyond this is reported as implausible: patients move by centimetres between the
scans of a dual-time-point study (PHYSICS.md §4.1: at most 25 mm simulated; issue 16: about 2 cm)."""
REGISTRATION_STARTS_Z_MM = (-30.0, 0.0, 30.0)
"""Starting couch offsets of the translation search (three registrations) against local optima of
the mutual information; the lowest (best) value wins, but a plausible shift
(:data:`MAX_PLAUSIBLE_SHIFT_MM`) always wins over an implausible one."""
END_TRIM_MM = 30.0
"""Body slices this close to either axial end of the CT are left out of the registration metric: a
patient moves by up to 25 mm along the couch between the scans (PHYSICS.md §4.1), and samples that
leave the CT's field bias mutual information toward shifts that shrink the overlap (the crops,
15-25 cm long, drifted to 56-93 mm without it)."""
BODY_MARGIN_MM = 50.0
"""Air kept around the body for the reprojection: the NAC's scatter haze lies there. On the
whole-body PET petwb_sts001 a 30 mm box and the whole 60 cm field gave the same body NRMSE
(0.0042) and body mean (-8.6 % / -8.2 %); 50 mm keeps a margin over that."""


def _resampled(img: sitk.Image, spacing_mm: float, default: float) -> sitk.Image:
    sp = [max(s, spacing_mm) for s in img.GetSpacing()]
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(img.GetSize(), img.GetSpacing(), sp)]
    return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), sp,
                         img.GetDirection(), default, sitk.sitkFloat32)


def axial_range(img: sitk.Image) -> tuple[float, float]:
    """(lowest, highest) physical z in mm of the image's voxel centres."""
    size = img.GetSize()
    zs = [img.TransformIndexToPhysicalPoint((i, j, k))[2] for i in (0, size[0] - 1)
          for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    return min(zs), max(zs)


def register_ct_to_nac(nac: sitk.Image, ct: sitk.Image, body: np.ndarray) -> tuple[sitk.Transform, dict]:
    """The translation (NAC physical point -> CT physical point) that best aligns the CT with the
    NAC inside ``body`` (a mask on the NAC's [z, y, x] grid, z axial), and {"shift_mm", "plausible",
    "metric"}. The mutual information is taken over the body away from the CT's axial ends
    (:data:`END_TRIM_MM`), so that a couch shift does not move the sampled body out of the CT."""
    body = body.copy()
    c0, c1 = axial_range(ct)
    z = np.array([nac.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(body.shape[0])])
    keep = (z >= c0 + END_TRIM_MM) & (z <= c1 - END_TRIM_MM)
    if keep.sum() >= max(3, body.shape[0] // 4):   # a short CT keeps its whole range
        body[~keep] = False
    mask = sitk.GetImageFromArray(binary_dilation(body, iterations=2).astype(np.uint8))
    mask.CopyInformation(nac)
    fixed = _resampled(sitk.Cast(nac, sitk.sitkFloat32), REGISTRATION_SPACING_MM, 0.0)
    moving = _resampled(sitk.Cast(ct, sitk.sitkFloat32), REGISTRATION_SPACING_MM, -1000.0)
    mask = sitk.Resample(mask, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    best = None
    for start in REGISTRATION_STARTS_Z_MM:
        tx = sitk.TranslationTransform(3, (0.0, 0.0, float(start)))
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(32)
        reg.SetMetricFixedMask(mask)
        reg.SetMetricSamplingStrategy(reg.NONE)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 300, relaxationFactor=0.7)
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([8.0, 4.0, 1.0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        reg.SetInitialTransform(tx, inPlace=True)
        try:
            reg.Execute(fixed, moving)
        except RuntimeError as e:  # e.g. no overlap left inside the mask
            log.info("registration from z %+.0f mm failed: %s", start, e)
            continue
        value = float(reg.GetMetricValue())
        plausible = math.dist(tx.GetOffset(), (0.0, 0.0, 0.0)) <= MAX_PLAUSIBLE_SHIFT_MM
        # a plausible optimum beats any implausible one; among equals the higher MI wins
        if best is None or (plausible, -value) > (best[2], -best[0]):
            best = (value, tx, plausible)
    if best is None:
        raise InputError("the CT could not be registered to the delayed NAC from any start; check that "
                         "both show the same body region", "--ct")
    value, tx, _ = best
    shift = [float(v) for v in tx.GetOffset()]
    norm = math.sqrt(sum(v * v for v in shift))
    return tx, {"shift_mm": [round(v, 1) for v in shift], "shift_norm_mm": round(norm, 1),
                "plausible": norm <= MAX_PLAUSIBLE_SHIFT_MM, "metric": round(value, 4)}


def body_box(body: np.ndarray, spacing_xyz, margin_mm: float = BODY_MARGIN_MM) -> tuple[slice, slice]:
    """(y, x) slices of the body's in-plane bounding box over all slices plus ``margin_mm``."""
    ys, xs = np.nonzero(body.any(0))
    if not len(ys):
        return slice(0, body.shape[1]), slice(0, body.shape[2])
    my, mx = (int(math.ceil(margin_mm / float(s))) for s in (spacing_xyz[1], spacing_xyz[0]))
    return (slice(max(0, ys.min() - my), min(body.shape[1], ys.max() + my + 1)),
            slice(max(0, xs.min() - mx), min(body.shape[2], xs.max() + mx + 1)))


def reprojection_ac(nac: np.ndarray, mu_per_cm: np.ndarray, spacing_xyz, body: np.ndarray | None = None,
                    scatter_fraction: float = SCATTER_FRACTION, iterations: int = OSEM_ITERATIONS
                    ) -> np.ndarray:
    """The AC image of a NAC image ([z, y, x], SUV units) given the attenuation map on its grid.
    With ``body`` (a mask) only its bounding box plus :data:`BODY_MARGIN_MM` is projected (the
    projector's memory grows as the cube of the box side), else the whole field; outside it the
    result is 0.

    Measured (a short script calling this function with ``realdata.simulate_delayed``'s "mu"; the
    test of the real crop STS_015 checks the same within 5 %): with the attenuation the delayed
    scan saw, body mean -6.6 % on the whole-body PET petwb_sts001 and -4 to -6 % on two crops at
    this scatter fraction (0 % at 0.30): the reprojection of a post-filtered NAC keeps less scatter
    than its data had. The fraction is left at the literature value, not tuned to the simulator."""
    sx, sy = float(spacing_xyz[0]), float(spacing_xyz[1])
    if abs(sx - sy) > 1e-3 * sx:
        raise InputError(f"the NAC's in-plane spacing must be square for the reprojection, got {sx} x {sy} mm")
    if not 0.0 <= scatter_fraction < 0.9:
        raise InputError(f"scatter fraction {scatter_fraction} outside 0..0.9")
    ys, xs = (slice(None), slice(None)) if body is None else body_box(body, spacing_xyz)
    sub = np.clip(nac[:, ys, xs], 0, None).astype(np.float32)
    mu = np.clip(mu_per_cm[:, ys, xs], 0, None).astype(np.float32)
    z, ny, nx = sub.shape
    n = int(math.ceil(math.hypot(ny, nx))) + 2
    n += n % 2
    py, px = (n - ny) // 2, (n - nx) // 2
    pad = ((0, 0), (py, n - ny - py), (px, n - nx - px))
    sub_p, mu_p = np.pad(sub, pad), np.pad(mu, pad)
    angles = angles_for(n, OSEM_SUBSETS)   # about one view per bin pair, as the low-count simulator
    geom = ProjectorGeometry(n, sx, angles, OSEM_SUBSETS)
    proj = get_projector(geom)
    af = torch.exp(-proj.forward(volume_to_columns(mu_p)))
    data = proj.forward(volume_to_columns(sub_p)).clamp_min(0.0)
    blur = gaussian_filter1d(data.reshape(angles, n, z).numpy(), SCATTER_KERNEL_MM / sx, axis=1,
                             mode="constant").reshape(-1, z)
    blur = torch.from_numpy(np.ascontiguousarray(blur, np.float32))
    scatter = scatter_fraction * data.sum(0) * blur / blur.sum(0).clamp_min(1e-12)
    x = osem(data, af, scatter.clamp_min(1e-6), geom, iterations)
    out = np.zeros(nac.shape, np.float32)
    out[:, ys, xs] = columns_to_volume(x, sub_p.shape)[:, py:py + ny, px:px + nx]
    return out
