"""Lesion quantification: connected components, rule-based segmentation, and the per-lesion table
(SUVmax, SUVmean, SUVpeak, MTV, TLG). Definitions follow ``docs/PHYSICS.md`` section 2.

Sources of the constants used here:

- 18-connectivity for lesion components: autoPET challenge evaluation (Gatidis et al. 2022,
  ``autoPET`` ``metrics`` script uses ``cc3d`` with connectivity 18).
- SUVpeak: PERCIST 1.0 (Wahl et al., J Nucl Med 2009;50:122S), "1 cm3 spherical VOI" whose centre
  lies in the lesion; radius 6.20 mm for 1.000 cm3 ((3 * 1000 / (4 pi)) ** (1/3) = 6.2035 mm), in
  physical units, the sphere may extend past the lesion (Lodge et al., J Nucl Med 2012;53:1041).
- Fixed threshold SUV >= 2.5 (>= 4.0 in lymphoma), relative 41 % of each lesion's SUVmax (EANM
  guideline Boellaard et al. 2015, Eur J Nucl Med Mol Imaging 42:328), PERCIST liver threshold
  1.5 x liver mean + 2 x SD in a 3 cm sphere, blood-pool fallback 2.0 x mean + 2 x SD in a
  1 cm x 2 cm cylinder in the descending aorta (Wahl 2009, PERCIST 1.0 appendix).
- MTV [mL] = voxels x voxel volume [mm3] / 1000; TLG = SUVmean x MTV (PHYSICS.md section 2;
  PET-IndiC code DCM 126033).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.images import same_grid

log = logging.getLogger(__name__)

#: radius [mm] of a 1.000 cm3 sphere, (3 * 1000 mm3 / (4 pi)) ** (1/3); PERCIST (Wahl 2009).
SUVPEAK_RADIUS_MM = (3.0 * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
#: fixed SUV threshold for lesion segmentation (EANM, Boellaard 2015; PHYSICS.md section 2).
FIXED_THRESHOLD_SUV = 2.5
#: fraction of each lesion's SUVmax for the relative threshold (EANM, Boellaard 2015).
RELATIVE_THRESHOLD = 0.41
#: PERCIST 1.0 liver reference: 1.5 x mean + 2 x SD in a 3 cm diameter sphere (Wahl 2009).
PERCIST_LIVER_FACTOR = 1.5
PERCIST_SD_FACTOR = 2.0
PERCIST_LIVER_SPHERE_DIAMETER_MM = 30.0
#: PERCIST 1.0 blood-pool fallback: 2.0 x mean + 2 x SD in a 1 cm x 2 cm (diameter x length)
#: cylinder in the descending thoracic aorta (Wahl 2009).
PERCIST_BLOOD_FACTOR = 2.0
PERCIST_BLOOD_CYLINDER_DIAMETER_MM = 10.0
PERCIST_BLOOD_CYLINDER_LENGTH_MM = 20.0
#: 18-connectivity (faces + edges) as in the autoPET evaluation.
CONNECTIVITY_18 = ndimage.generate_binary_structure(3, 2)
#: sub-samples per voxel edge when computing the fraction of each voxel inside the SUVpeak sphere.
_SUBSAMPLES = 7
#: SUV-like units accepted for quantification (PETDiffusion.units metadata).
SUV_UNITS = ("SUVbw", "SUVlbm", "SUVbsa", "SUVibw", "SUV", "SUL", "GML", "g/ml", "g/mL")

LESION_COLUMNS = ["lesion_id", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "voxels",
                  "volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg"]


@dataclass(frozen=True)
class LesionTotals:
    tmtv_ml: float
    ttlg: float
    lesion_count: int

    def as_dict(self) -> dict:
        return {"tmtv_ml": self.tmtv_ml, "ttlg": self.ttlg, "lesion_count": self.lesion_count}


# --------------------------------------------------------------------------------------------
# checks shared by every quantity
# --------------------------------------------------------------------------------------------
SOURCE_KEY = "PETDiffusion.source"  # file an image was read from; set by the CLI for messages


def _name(img: sitk.Image, default: str) -> str:
    for key in (SOURCE_KEY,):
        if img.HasMetaDataKey(key) and img.GetMetaData(key):
            return img.GetMetaData(key)
    return default


def check_suv_image(suv_img: sitk.Image, name: str | None = None) -> np.ndarray:
    """Return the SUV array (z, y, x) as float64 after checking it is usable.

    Raises InputError for a non-3D image, NaN/inf voxels, or units that are not SUV.
    """
    if not isinstance(suv_img, sitk.Image):
        raise InputError(f"expected a SimpleITK image, got {type(suv_img).__name__}", name or "PET")
    name = name or _name(suv_img, "PET")
    if suv_img.GetDimension() != 3:
        raise InputError(f"expected a 3D PET image, got {suv_img.GetDimension()}D", name)
    units = suv_img.GetMetaData("PETDiffusion.units") if suv_img.HasMetaDataKey("PETDiffusion.units") else None
    if units is not None and units not in SUV_UNITS:
        raise InputError(f"PET is in '{units}', not SUV; convert it to SUV first "
                         "(petdiffusion suv)", name)
    arr = sitk.GetArrayViewFromImage(suv_img)
    finite = np.isfinite(arr)
    if not finite.all():
        n_bad = int(arr.size - np.count_nonzero(finite))
        raise InputError(f"PET holds {n_bad} NaN or infinite voxel(s); SUV statistics would be "
                         "undefined", name)
    return arr.astype(np.float64, copy=False)


def _check_grid(ref: sitk.Image, other: sitk.Image, ref_name: str, other_name: str) -> None:
    if not same_grid(ref, other):
        raise InputError(
            f"not on the grid of {ref_name}: size {other.GetSize()} vs {ref.GetSize()}, spacing "
            f"{tuple(round(s, 4) for s in other.GetSpacing())} vs "
            f"{tuple(round(s, 4) for s in ref.GetSpacing())} mm, origin "
            f"{tuple(round(o, 2) for o in other.GetOrigin())} vs "
            f"{tuple(round(o, 2) for o in ref.GetOrigin())}; resample it onto the PET grid "
            "(nearest neighbour) first", other_name)


def label_array(img: sitk.Image | np.ndarray, name: str = "mask") -> np.ndarray:
    """Integer label array of a mask/label image; refuses non-integer or negative values."""
    arr = sitk.GetArrayViewFromImage(img) if isinstance(img, sitk.Image) else np.asarray(img)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError("mask holds NaN or infinite values", name)
        frac = arr != np.round(arr)
        if frac.any():
            example = float(arr[frac].flat[0])
            raise InputError(f"mask is not a binary mask or label map: it holds non-integer values "
                             f"(e.g. {example:.4g}); threshold a probability map first", name)
    if arr.size and arr.min() < 0:
        raise InputError("mask holds negative values", name)
    return arr.astype(np.int64, copy=False)


def binary_array(img: sitk.Image | np.ndarray, name: str = "mask") -> np.ndarray:
    """Boolean array of a mask that must be binary (values 0 and 1 only)."""
    arr = label_array(img, name)
    values = np.unique(arr)
    extra = [int(v) for v in values if v not in (0, 1)]
    if extra:
        raise InputError(f"expected a binary mask (0 and 1), found label value(s) "
                         f"{extra[:5]}{'...' if len(extra) > 5 else ''}", name)
    return arr.astype(bool)


def voxel_volume_ml(img: sitk.Image) -> float:
    """Voxel volume in mL (mm3 / 1000)."""
    sx, sy, sz = img.GetSpacing()
    return sx * sy * sz / 1000.0


# --------------------------------------------------------------------------------------------
# components and segmentation
# --------------------------------------------------------------------------------------------
def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a binary mask at 18-connectivity (autoPET); labels 1..n."""
    labels, n = ndimage.label(np.asarray(mask) > 0, structure=CONNECTIVITY_18)
    return labels.astype(np.int32, copy=False), int(n)


def _lesion_labels(lesion_img: sitk.Image, name: str) -> np.ndarray:
    """A binary mask becomes 18-connected components; a label map (values > 1) keeps its labels."""
    arr = label_array(lesion_img, name)
    if arr.size and arr.max() > 1:
        return arr.astype(np.int32, copy=False)
    labels, _ = label_lesions(arr)
    return labels


def _sphere_mask_mm(shape: tuple[int, int, int], spacing_zyx: np.ndarray, centre_zyx: np.ndarray,
                    radius_mm: float) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    d2 = sum(((g - c) * sp) ** 2 for g, c, sp in zip(grids, centre_zyx, spacing_zyx))
    return d2 <= radius_mm ** 2


def _voi_kernel(spacing_zyx: np.ndarray, radius_mm: float, half_length_mm: float | None) -> np.ndarray:
    """Voxel-centre mask of a sphere (half_length None) or of a cylinder along the slice axis."""
    ext = radius_mm if half_length_mm is None else max(radius_mm, half_length_mm)
    half = np.floor(np.array([ext, radius_mm, radius_mm]) / spacing_zyx).astype(int)
    half[0] = int(np.floor((radius_mm if half_length_mm is None else half_length_mm) / spacing_zyx[0]))
    g = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    zz, yy, xx = (gi * sp for gi, sp in zip(g, spacing_zyx))
    if half_length_mm is None:
        return zz ** 2 + yy ** 2 + xx ** 2 <= radius_mm ** 2
    return (yy ** 2 + xx ** 2 <= radius_mm ** 2) & (np.abs(zz) <= half_length_mm)


def _best_voi_centre(region: np.ndarray, kernel: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Region voxel where the VOI holds the most region voxels; ties go to the deepest voxel.

    Keeps the reference VOI whole inside the organ when it fits (PERCIST places the liver sphere
    inside the right lobe, the blood-pool cylinder inside the aorta).
    """
    from scipy.signal import fftconvolve
    idx = np.argwhere(region)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    crop = region[tuple(slice(a, b) for a, b in zip(lo, hi))]
    counts = fftconvolve(crop.astype(np.float32), kernel[::-1, ::-1, ::-1].astype(np.float32),
                         mode="same")
    counts = np.where(crop, np.round(counts), -1)
    best = counts >= counts.max()
    depth = ndimage.distance_transform_edt(np.pad(crop, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    pick = np.unravel_index(int(np.argmax(np.where(best, depth, -1))), crop.shape)
    return np.array(pick) + lo


def percist_threshold(suv_img: sitk.Image, organs: sitk.Image, organ_names: dict[int, str] | None,
                      suv: np.ndarray | None = None) -> dict:
    """PERCIST 1.0 threshold from the liver (1.5 x mean + 2 x SD in a 3 cm sphere).

    The sphere is centred at the liver voxel deepest inside the liver (largest distance to its
    border, in mm) - the right lobe in a normal liver - and clipped to the liver. Without a label
    named 'liver', falls back to the blood pool: 2.0 x mean + 2 x SD in a 1 cm x 2 cm cylinder
    (axis along the slices' normal) centred at the deepest voxel of a label named 'aorta'.
    SD is the sample standard deviation (ddof=1).
    """
    suv = check_suv_image(suv_img) if suv is None else suv
    organ_name = _name(organs, "organ label map")
    _check_grid(suv_img, organs, "the PET", organ_name)
    org = label_array(organs, organ_name)
    names = {int(k): str(v).lower() for k, v in (organ_names or {}).items()}
    spacing_zyx = np.array(suv_img.GetSpacing()[::-1], float)

    def find(word: str) -> int | None:
        hits = [k for k, v in names.items() if word in v]
        return min(hits) if hits else None

    liver, aorta = find("liver"), find("aorta")
    if liver is not None and np.any(org == liver):
        region = org == liver
        reference, factor = "liver", PERCIST_LIVER_FACTOR
    elif aorta is not None and np.any(org == aorta):
        region = org == aorta
        reference, factor = "blood_pool", PERCIST_BLOOD_FACTOR
    else:
        raise InputError("PERCIST threshold needs a label named 'liver' (or 'aorta' for the "
                         f"blood-pool fallback) in the organ names; found {sorted(names.values())}",
                         "organ label map")
    if reference == "liver":
        kernel = _voi_kernel(spacing_zyx, PERCIST_LIVER_SPHERE_DIAMETER_MM / 2.0, None)
    else:
        kernel = _voi_kernel(spacing_zyx, PERCIST_BLOOD_CYLINDER_DIAMETER_MM / 2.0,
                             PERCIST_BLOOD_CYLINDER_LENGTH_MM / 2.0)
    centre = _best_voi_centre(region, kernel, spacing_zyx)
    voi = np.zeros(region.shape, bool)
    half = np.array(kernel.shape) // 2
    lo = centre - half
    src = tuple(slice(max(0, -l), k - max(0, l + k - n)) for l, k, n in zip(lo, kernel.shape, region.shape))
    dst = tuple(slice(max(0, l), min(n, l + k)) for l, k, n in zip(lo, kernel.shape, region.shape))
    voi[dst] = kernel[src]
    voi &= region
    values = suv[voi]
    if values.size < 2:
        raise InputError(f"the {reference} reference region holds {values.size} voxel(s); too small "
                         "for a mean and SD", "organ label map")
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    centre_mm = suv_img.TransformIndexToPhysicalPoint(tuple(int(c) for c in centre[::-1]))
    return {"rule": "percist", "reference": reference, "reference_mean": mean, "reference_sd": sd,
            "reference_voxels": int(values.size), "reference_centre_mm": list(centre_mm),
            "threshold_suv": factor * mean + PERCIST_SD_FACTOR * sd,
            "formula": f"{factor} x mean + {PERCIST_SD_FACTOR} x SD (PERCIST 1.0, Wahl 2009)"}


def segment_lesions(suv_img: sitk.Image, rule: str = "2.5", region: sitk.Image | None = None,
                    organs: sitk.Image | None = None,
                    organ_names: dict[int, str] | None = None) -> tuple[sitk.Image, dict]:
    """Segment lesions by a rule; returns (label image of 18-connected lesions, thresholds used).

    ``rule``: a number ("2.5", "4.0") for a fixed SUV threshold; "41%" (any "NN%") for a relative
    threshold of each lesion's SUVmax; "percist" for the PERCIST liver threshold (needs ``organs``
    and ``organ_names`` with a liver or aorta label).

    ``region`` (binary, optional) restricts the search. For a relative threshold, each connected
    component of ``region`` is one lesion's VOI; without a region the VOIs are the connected
    components of SUV >= 2.5 (so a relative threshold below 2.5 cannot grow past them).
    """
    suv = check_suv_image(suv_img)
    if region is not None:
        region_name = _name(region, "region mask")
        _check_grid(suv_img, region, "the PET", region_name)
        allowed = binary_array(region, region_name)
        if not allowed.any():
            raise InputError("region mask is empty (no voxel is 1)", region_name)
    else:
        allowed = np.ones(suv.shape, bool)
    rule_s = str(rule).strip().lower()
    thresholds: dict
    if rule_s == "percist":
        if organs is None:
            raise InputError("PERCIST threshold needs an organ label map with a liver", "--organs")
        thresholds = percist_threshold(suv_img, organs, organ_names, suv)
        mask = (suv >= thresholds["threshold_suv"]) & allowed
    elif rule_s.endswith("%"):
        try:
            fraction = float(rule_s[:-1]) / 100.0
        except ValueError:
            raise InputError(f"bad threshold '{rule}' (use 2.5, 41% or percist)", "--threshold") from None
        if not 0.0 < fraction < 1.0:
            raise InputError(f"relative threshold '{rule}' must lie between 0 and 100 %", "--threshold")
        if region is not None:
            vois, n_voi = label_lesions(allowed)
            seed = "connected components of the region mask"
        else:
            vois, n_voi = label_lesions(suv >= FIXED_THRESHOLD_SUV)
            seed = f"connected components of SUV >= {FIXED_THRESHOLD_SUV}"
        mask = np.zeros(suv.shape, bool)
        per_voi = []
        if n_voi:
            maxima = ndimage.maximum(suv, vois, index=np.arange(1, n_voi + 1))
            cut = np.zeros(n_voi + 1)
            cut[1:] = fraction * np.asarray(maxima)
            mask = (vois > 0) & (suv >= cut[vois])
            per_voi = [float(c) for c in cut[1:]]
        thresholds = {"rule": f"{fraction * 100:g}%", "fraction_of_suvmax": fraction,
                      "vois": seed, "threshold_suv_per_voi": per_voi,
                      "source": "relative threshold of each lesion's SUVmax (EANM, Boellaard 2015)"}
    else:
        try:
            value = float(rule_s)
        except ValueError:
            raise InputError(f"bad threshold '{rule}' (use 2.5, 41% or percist)", "--threshold") from None
        mask = (suv >= value) & allowed
        thresholds = {"rule": f"SUV>={value:g}", "threshold_suv": value,
                      "source": "fixed SUV threshold (EANM, Boellaard 2015)"}
    labels, n = label_lesions(mask)
    thresholds["lesion_count"] = n
    out = sitk.GetImageFromArray(labels.astype(np.uint16 if n < 65535 else np.uint32))
    out.CopyInformation(suv_img)
    out.SetMetaData("PETDiffusion.units", "label")
    log.info("segmented %d lesion(s) with rule %s", n, thresholds["rule"])
    return out, thresholds


# --------------------------------------------------------------------------------------------
# SUVpeak kernel and lesion table
# --------------------------------------------------------------------------------------------
def suvpeak_kernel(spacing_xyz: tuple[float, float, float],
                   radius_mm: float = SUVPEAK_RADIUS_MM) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (K, 3) in z, y, x voxels and weights (K,) of a sphere in physical units.

    Each weight is the fraction of that voxel inside the sphere (sampled on a 7x7x7 grid per
    voxel), so that sum(weights) x voxel volume is close to the sphere's volume even on coarse,
    anisotropic grids.
    """
    sp = np.array(spacing_xyz[::-1], float)  # z, y, x
    half = np.ceil(radius_mm / sp + 0.5).astype(int)
    sub = (np.arange(_SUBSAMPLES) + 0.5) / _SUBSAMPLES - 0.5  # sub-voxel centres in voxel units
    rng = [np.arange(-h, h + 1) for h in half]
    oz, oy, ox = np.meshgrid(*rng, indexing="ij")
    # coordinates of every sub-sample of every voxel, in mm, relative to the centre voxel's centre
    pz = (oz[..., None, None, None] + sub[:, None, None]) * sp[0]
    py = (oy[..., None, None, None] + sub[None, :, None]) * sp[1]
    px = (ox[..., None, None, None] + sub[None, None, :]) * sp[2]
    inside = (pz ** 2 + py ** 2 + px ** 2) <= radius_mm ** 2
    frac = inside.reshape(oz.shape + (-1,)).mean(axis=-1)
    keep = frac > 0
    offs = np.stack([oz[keep], oy[keep], ox[keep]], axis=1)
    weights = frac[keep]
    return offs.astype(np.int64), weights.astype(np.float64)


def _suvpeak_at(suv: np.ndarray, coords: np.ndarray, spacing_xyz) -> np.ndarray:
    """Mean SUV in the 1 cm3 sphere centred at each voxel of ``coords`` (N, 3 z,y,x).

    Parts of the sphere outside the image are left out of the mean (weights renormalised).
    """
    offs, weights = suvpeak_kernel(spacing_xyz)
    half = np.abs(offs).max(axis=0)
    padded = np.pad(suv.astype(np.float32, copy=False), [(h, h) for h in half],
                    constant_values=np.nan)
    strides = np.array([padded.shape[1] * padded.shape[2], padded.shape[2], 1], np.int64)
    base = (coords + half) @ strides
    flat = padded.ravel()
    acc = np.zeros(len(coords))
    wsum = np.zeros(len(coords))
    for off, w in zip(offs @ strides, weights):
        vals = flat[base + off]
        ok = ~np.isnan(vals)
        acc += w * np.where(ok, vals, 0.0)
        wsum += w * ok
    return acc / wsum


def lesion_table(suv_img: sitk.Image, lesion_img: sitk.Image) -> list[dict]:
    """One row per lesion: id, centroid (mm), voxels, MTV (mL), SUVmax, SUVmean, SUVpeak, TLG.

    ``lesion_img``: a binary mask (split into 18-connected components, numbered in scan order) or
    a label map whose non-zero values are lesion ids. The centroid is the unweighted mean of the
    lesion's voxel centres in physical (LPS, mm) coordinates. An empty mask gives an empty table.
    """
    suv = check_suv_image(suv_img)
    mask_name = _name(lesion_img, "lesion mask")
    _check_grid(suv_img, lesion_img, "the PET", mask_name)
    labels = _lesion_labels(lesion_img, mask_name)
    coords = np.argwhere(labels > 0)
    if len(coords) == 0:
        log.warning("lesion mask is empty: no lesions to quantify")
        return []
    lab = labels[coords[:, 0], coords[:, 1], coords[:, 2]]
    ids = np.unique(lab)
    index = np.searchsorted(ids, lab)
    vals = suv[coords[:, 0], coords[:, 1], coords[:, 2]]
    count = np.bincount(index, minlength=len(ids))
    total = np.bincount(index, weights=vals, minlength=len(ids))
    vmax = np.full(len(ids), -np.inf)
    np.maximum.at(vmax, index, vals)
    peak_all = _suvpeak_at(suv, coords, suv_img.GetSpacing())
    peak = np.full(len(ids), -np.inf)
    np.maximum.at(peak, index, peak_all)
    cen = np.stack([np.bincount(index, weights=coords[:, a], minlength=len(ids)) for a in range(3)],
                   axis=1) / count[:, None]
    vox_ml = voxel_volume_ml(suv_img)
    rows = []
    for i, lid in enumerate(ids):
        x, y, z = suv_img.TransformContinuousIndexToPhysicalPoint(
            (float(cen[i, 2]), float(cen[i, 1]), float(cen[i, 0])))
        volume = float(count[i]) * vox_ml
        mean = float(total[i] / count[i])
        rows.append({"lesion_id": int(lid), "centroid_x_mm": x, "centroid_y_mm": y,
                     "centroid_z_mm": z, "voxels": int(count[i]), "volume_ml": volume,
                     "suv_max": float(vmax[i]), "suv_mean": mean, "suv_peak": float(peak[i]),
                     "tlg": mean * volume})
    return rows


def lesion_totals(rows: list[dict]) -> LesionTotals:
    """TMTV (mL), TTLG and the lesion count of a lesion table."""
    return LesionTotals(tmtv_ml=float(sum(r["volume_ml"] for r in rows)),
                        ttlg=float(sum(r["tlg"] for r in rows)), lesion_count=len(rows))
