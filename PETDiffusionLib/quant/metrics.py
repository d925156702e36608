"""Image and segmentation metrics for evaluating tasks against references.

Every image metric takes ``reference`` and ``test`` (numpy arrays or SimpleITK images on the same
grid) and an optional binary ``mask``: when given, the metric is computed over the voxels inside
the mask only (the per-class versions of AMDiff, Table 2).

Data range: PSNR and NRMSE use ``data_range = max(reference) - min(reference)`` over the voxels
evaluated (inside the mask when one is given) unless ``data_range`` is passed. NRMSE is RMSE
divided by that range: "normalized by the range of observed data" (AMDiff, section 3.x, evaluation).
NMSE is sum((test - ref)^2) / sum(ref^2).
"""
from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.quant.lesions import CONNECTIVITY_18, binary_array


def _arr(x, name: str) -> np.ndarray:
    a = sitk.GetArrayViewFromImage(x) if isinstance(x, sitk.Image) else np.asarray(x)
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise InputError("image holds NaN or infinite values", name)
    return a


def _pair(reference, test, mask=None) -> tuple[np.ndarray, np.ndarray]:
    ref, tst = _arr(reference, "reference"), _arr(test, "test image")
    if ref.shape != tst.shape:
        raise InputError(f"shape {tst.shape} differs from the reference's {ref.shape}", "test image")
    if mask is None:
        return ref.ravel(), tst.ravel()
    m = binary_array(mask, "metric mask")
    if m.shape != ref.shape:
        raise InputError(f"shape {m.shape} differs from the images' {ref.shape}", "metric mask")
    if not m.any():
        raise InputError("mask is empty: no voxel to evaluate", "metric mask")
    return ref[m], tst[m]


def _range(ref: np.ndarray, data_range: float | None) -> float:
    r = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    if r <= 0:
        raise InputError("data range is zero (constant reference); pass data_range", "reference")
    return r


def mae(reference, test, mask=None) -> float:
    ref, tst = _pair(reference, test, mask)
    return float(np.mean(np.abs(tst - ref)))


def rmse(reference, test, mask=None) -> float:
    ref, tst = _pair(reference, test, mask)
    return float(np.sqrt(np.mean((tst - ref) ** 2)))


def nmse(reference, test, mask=None) -> float:
    """sum((test - reference)^2) / sum(reference^2)."""
    ref, tst = _pair(reference, test, mask)
    den = float(np.sum(ref ** 2))
    if den == 0:
        raise InputError("reference is all zero: NMSE undefined", "reference")
    return float(np.sum((tst - ref) ** 2) / den)


_RAISE = object()


def nrmse(reference, test, mask=None, data_range: float | None = None,
          undefined=_RAISE) -> float | None:
    """RMSE / data range (AMDiff: normalised by the range of the observed reference data).

    ``undefined``: returned instead of raising InputError when the metric is undefined (an empty
    mask, a constant reference), e.g. None for per-class tables where a class may be absent.
    """
    if undefined is not _RAISE:
        try:
            return nrmse(reference, test, mask, data_range)
        except InputError:
            return undefined
    ref, tst = _pair(reference, test, mask)
    return float(np.sqrt(np.mean((tst - ref) ** 2)) / _range(ref, data_range))


def psnr(reference, test, mask=None, data_range: float | None = None) -> float:
    """10 log10(data_range^2 / MSE) in dB; data_range = reference max - min unless given."""
    ref, tst = _pair(reference, test, mask)
    mse = float(np.mean((tst - ref) ** 2))
    if mse == 0:
        return math.inf
    return float(10.0 * np.log10(_range(ref, data_range) ** 2 / mse))


def ssim3d(reference, test, data_range: float | None = None, mask=None) -> float:
    """Mean 3D SSIM (Wang et al. 2004; skimage, 7x7x7 uniform window, K1=0.01, K2=0.03).

    With a mask, the mean of the local SSIM map over the masked voxels.
    """
    from skimage.metrics import structural_similarity
    ref, tst = _arr(reference, "reference"), _arr(test, "test image")
    if ref.shape != tst.shape:
        raise InputError(f"shape {tst.shape} differs from the reference's {ref.shape}", "test image")
    if min(ref.shape) < 7:
        raise InputError(f"image {ref.shape} is smaller than the 7-voxel SSIM window", "reference")
    rng = _range(ref if mask is None else ref[binary_array(mask, "metric mask")], data_range)
    value, smap = structural_similarity(ref, tst, data_range=rng, full=True)
    if mask is None:
        return float(value)
    return float(smap[binary_array(mask, "metric mask")].mean())


def dice(a, b, empty: float | None = 1.0) -> float | None:
    """2|A and B| / (|A| + |B|) of two binary masks; ``empty`` (1.0: they agree) when both are empty.

    Tables that average Dice over cases pass ``empty=None`` to leave such cases out.
    """
    ma, mb = binary_array(a, "first mask"), binary_array(b, "second mask")
    if ma.shape != mb.shape:
        raise InputError(f"shape {mb.shape} differs from {ma.shape}", "second mask")
    den = int(ma.sum()) + int(mb.sum())
    return empty if den == 0 else float(2.0 * np.count_nonzero(ma & mb) / den)


def autopet_fp_fn_volumes(prediction, ground_truth,
                          spacing_xyz: tuple[float, float, float] | None = None) -> tuple[float, float]:
    """autoPET false-positive and false-negative volumes in mL.

    FP: voxels of predicted 18-connected components that touch no ground-truth voxel.
    FN: voxels of ground-truth components that no predicted voxel touches (autoPET challenge
    evaluation, Gatidis et al. 2022). Voxel volume from the images' spacing (SimpleITK input) or
    ``spacing_xyz`` in mm.
    """
    if spacing_xyz is None:
        if isinstance(ground_truth, sitk.Image):
            spacing_xyz = ground_truth.GetSpacing()
        elif isinstance(prediction, sitk.Image):
            spacing_xyz = prediction.GetSpacing()
        else:
            raise InputError("numpy masks need spacing_xyz (mm) for volumes in mL", "spacing_xyz")
    pred, gt = binary_array(prediction, "predicted mask"), binary_array(ground_truth, "ground-truth mask")
    if pred.shape != gt.shape:
        raise InputError(f"shape {pred.shape} differs from the ground truth's {gt.shape}",
                         "predicted mask")
    vox_ml = float(np.prod(spacing_xyz)) / 1000.0
    fp = _untouched_voxels(pred, gt)
    fn = _untouched_voxels(gt, pred)
    return fp * vox_ml, fn * vox_ml


def _untouched_voxels(a: np.ndarray, b: np.ndarray) -> int:
    """Voxels of the components of ``a`` that overlap no voxel of ``b``."""
    labels, n = ndimage.label(a, structure=CONNECTIVITY_18)
    if n == 0:
        return 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    touched = np.zeros(n + 1, bool)
    touched[np.unique(labels[b])] = True
    touched[0] = True
    return int(sizes[~touched].sum())


def false_positive_volume_ml(pred, truth, spacing_xyz) -> float:
    """autoPET false-positive volume (mL): the predicted connected components (18-connectivity,
    the same components as :func:`autopet_fp_fn_volumes`) that overlap no ground-truth voxel
    (Gatidis et al., autoPET, Sci Data 2022; the challenge's ``false_pos_pix``)."""
    return autopet_fp_fn_volumes(pred, truth, spacing_xyz)[0]


def false_negative_volume_ml(pred, truth, spacing_xyz) -> float:
    """autoPET false-negative volume (mL): the ground-truth components that no predicted voxel
    overlaps (Gatidis et al. 2022; the challenge's ``false_neg_pix``)."""
    return autopet_fp_fn_volumes(pred, truth, spacing_xyz)[1]
