"""Out-of-distribution flag of ct-to-pet (issue 14): how far an input CT is from the CTs the model
was trained on, in the few ways a CT-to-PET model is known to be sensitive to.

Measured on every input (on the model's 4 x 4 x 5 mm working grid, body = CT > -500 HU with holes
filled, as everywhere in this task):
- axial field of view (mm) and in-plane field of view (mm, the smaller of x and y);
- tube voltage: the kVp the caller knows (the parameter, or DICOM KVP (0018,0060) kept by the
  reader); unknown when neither exists (then it is reported, not flagged);
- iodinated contrast: the volume of homogeneous soft structures at 150-500 HU (connected regions
  at >= 150 HU with a median at most 500 HU, an SD below 50 HU and < 2 % of their voxels above
  700 HU). Unenhanced blood and solid organs are 30-65 HU (PHYSICS.md §5), so a contrast-filled
  aorta, heart or enhanced kidney (150-400 HU) is such a region; its lumen is as homogeneous as
  the CT noise (10-20 HU at 4 mm: phantom/tissues.py CT_NOISE_HU). Cancellous bone reaches the same HU but not that homogeneity:
  on the real TotalSegmentator CT (unenhanced) its vertebrae form one region of SD 104 HU and its
  ribs regions of SD 62-68 HU, with almost no voxel above 700 HU (osteopenic cortex at 3 mm);
- the HU histogram of the body: Jensen-Shannon distance (base 2, 0 = same, 1 = disjoint) to the
  nearest training CT's histogram (nearest, not the mean: the phantoms' fat/muscle/lung proportions
  differ so much that one phantom is 0.34 from the mean of the others, while every phantom is
  within 0.10 of another one; real CTs are 0.30-0.51 from the nearest). Thresholds and measurements: docs/PHYSICS.md §5.1..

The training reference (ood_reference.TRAINING_REFERENCE) was computed from the CTs of ``cohorts/train`` (the
cohort of the shipped cpdm-phantom-2p5d, card training.data) by ``training_reference`` with
``petdiffusion evaluate ct-to-pet --mode ood-reference --cohort cohorts/train``.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import label as connected_components
from scipy.spatial.distance import jensenshannon

from PETDiffusionLib.io.images import read_image, to_working_grid
from PETDiffusionLib.methods.cpdm.intensities import CT_HU_MIN, body_mask
from PETDiffusionLib.phantom.cohort import list_cases
from PETDiffusionLib.tasks.ct_to_pet.ood_reference import TRAINING_REFERENCE

log = logging.getLogger(__name__)

OOD_SPACING_MM = (4.0, 4.0, 5.0)  # the shipped model's working grid (card preprocessing.working_spacing_mm)
HU_EDGES = np.arange(-1000.0, 1525.0, 25.0)  # 100 bins of 25 HU over air .. dense cortical bone
# iodinated contrast (see the module docstring; HU values PHYSICS.md §5)
CONTRAST_HU_MIN, CONTRAST_HU_MEDIAN_MAX, CORTICAL_HU = 150.0, 500.0, 700.0
CONTRAST_MAX_CORTICAL_FRACTION = 0.02
CONTRAST_MAX_SD_HU = 50.0  # homogeneity of a contrast-filled lumen (see the module docstring)
CONTRAST_MIN_REGION_ML = 2.0  # smaller regions (calcifications, partial-volume rims) are ignored
CONTRAST_FLAG_ML = 10.0  # a 2 cm aorta over 3 cm holds ~10 mL
# The training augmentation crops the field of view by up to 20 % (card training.augmentation
# fov_crop_max 0.2): a view shorter than 0.8 x the shortest training CT was never seen. A view more
# than 1.5 x the longest shows anatomy the phantom lacks (legs, arms above the head).
FOV_MIN_FACTOR, FOV_MAX_FACTOR = 0.8, 1.5
KVP_TOLERANCE = 5.0  # kV: scanners offer 70/80/100/120/140 kVp steps
# A histogram is flagged beyond JS_FACTOR x the largest distance of a training CT to its nearest
# other training CT (leave-one-out): the training set's own spread, with a margin for the
# augmentation (HU scale 3 %, offset 15 HU, noise up to 25 HU: card training.augmentation).
JS_FACTOR = 2.0


@dataclass
class OODResult:
    """The verdict: ``reasons`` is empty when the CT is in distribution."""
    reasons: list[str]
    measured: dict
    thresholds: dict = field(default_factory=dict)

    @property
    def out_of_distribution(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict:
        return {"out_of_distribution": self.out_of_distribution, **asdict(self)}


def hu_histogram(ct_hu: np.ndarray, body: np.ndarray | None = None) -> np.ndarray:
    """Normalised histogram of the body voxels over HU_EDGES (values beyond clipped to the ends)."""
    body = body_mask(ct_hu) if body is None else body
    vals = np.clip(ct_hu[body], HU_EDGES[0], HU_EDGES[-1] - 1e-3)
    h = np.histogram(vals, HU_EDGES)[0].astype(np.float64)
    return h / max(h.sum(), 1.0)


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2 (in [0, 1])."""
    return float(jensenshannon(np.asarray(p, float), np.asarray(q, float), base=2))


def contrast_volume_ml(ct_hu: np.ndarray, spacing_zyx: tuple[float, float, float],
                       body: np.ndarray | None = None) -> float:
    """Volume (mL) of connected >= 150 HU regions that look like contrast, not bone (module doc)."""
    body = body_mask(ct_hu) if body is None else body
    lab, n = connected_components(body & (ct_hu >= CONTRAST_HU_MIN))
    if n == 0:
        return 0.0
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    idx = lab.ravel()
    hu = ct_hu.ravel().astype(np.float64)
    sizes = np.bincount(idx, minlength=n + 1)
    dense = np.bincount(idx, weights=(hu > CORTICAL_HU).astype(float), minlength=n + 1)
    mean = np.bincount(idx, weights=hu, minlength=n + 1) / np.maximum(sizes, 1)
    sd = np.sqrt(np.maximum(np.bincount(idx, weights=hu * hu, minlength=n + 1)
                            / np.maximum(sizes, 1) - mean ** 2, 0.0))
    total = 0.0
    for k in np.nonzero(sizes * voxel_ml >= CONTRAST_MIN_REGION_ML)[0]:
        if k == 0 or dense[k] / sizes[k] >= CONTRAST_MAX_CORTICAL_FRACTION or sd[k] >= CONTRAST_MAX_SD_HU:
            continue
        if float(np.median(hu[idx == k])) <= CONTRAST_HU_MEDIAN_MAX:
            total += sizes[k] * voxel_ml
    return total


def measure(ct_img: sitk.Image, kvp: float | None = None) -> dict:
    """The OOD measurements of one CT (HU), without a verdict."""
    size, sp = ct_img.GetSize(), ct_img.GetSpacing()
    fov = [float(n * s) for n, s in zip(size, sp)]
    work = to_working_grid(ct_img, OOD_SPACING_MM, default_value=CT_HU_MIN)
    ct = sitk.GetArrayFromImage(work).astype(np.float32)
    body = body_mask(ct)
    spacing_zyx = tuple(float(s) for s in reversed(work.GetSpacing()))
    return {"axial_fov_mm": fov[2], "inplane_fov_mm": min(fov[0], fov[1]),
            "kvp": None if kvp is None else float(kvp),
            "contrast_ml": contrast_volume_ml(ct, spacing_zyx, body),
            "body_fraction": float(body.mean()),
            "hu_histogram": hu_histogram(ct, body)}


def nearest_js(hist: np.ndarray, histograms: list, exclude: int | None = None) -> float:
    """Jensen-Shannon distance of ``hist`` to the nearest of ``histograms`` (one may be excluded)."""
    return min(js_distance(hist, h) for i, h in enumerate(histograms) if i != exclude)


def training_reference(cohort: str | Path, kvp: float = 120.0) -> dict:
    """The training reference from the ct.nii.gz of a cohort's cases (kvp: the simulator's,
    phantom/case.py CT_KVP)."""
    cases = list_cases(Path(cohort), require=("ct.nii.gz",))
    rows = [measure(read_image(c / "ct.nii.gz"), kvp) for c in cases]
    if not rows:
        raise ValueError(f"no case with ct.nii.gz in {cohort}")
    hists = [r["hu_histogram"] for r in rows]
    loo = [nearest_js(h, hists, i) for i, h in enumerate(hists)]
    return {"cohort": str(cohort), "cases": [c.name for c in cases],
            "axial_fov_mm": [min(r["axial_fov_mm"] for r in rows), max(r["axial_fov_mm"] for r in rows)],
            "inplane_fov_mm": [min(r["inplane_fov_mm"] for r in rows), max(r["inplane_fov_mm"] for r in rows)],
            "kvp": [float(kvp)], "contrast_ml_max": float(max(r["contrast_ml"] for r in rows)),
            "hu_js_nearest_loo_max": float(max(loo)),
            "hu_edges": [float(HU_EDGES[0]), float(HU_EDGES[-1]), float(HU_EDGES[1] - HU_EDGES[0])],
            "hu_histograms": [[round(float(v), 5) for v in h] for h in hists]}


def write_reference_module(reference: dict, path: str | Path) -> Path:
    """Write ``reference`` as the Python module ood_reference.py (data only, with its command)."""
    lines = ['"""Training reference of the ct-to-pet OOD flag (ood.py), generated; do not edit by hand.',
             "", f"Made from {reference['cohort']} ({len(reference['cases'])} CTs) by",
             f"    petdiffusion evaluate ct-to-pet --mode ood-reference --cohort {reference['cohort']}",
             "(tasks/ct_to_pet/ood.py training_reference; histograms on ood.HU_EDGES).", '"""', "",
             "TRAINING_REFERENCE = {"]
    for k, v in reference.items():
        if k == "hu_histograms":
            lines.append('    "hu_histograms": [')
            lines += [f"        {h!r}," for h in v]
            lines.append("    ],")
        else:
            lines.append(f"    {k!r}: {v!r},")
    lines.append("}")
    p = Path(path)
    p.write_text("\n".join(lines) + "\n")
    return p


def thresholds(reference: dict) -> dict:
    """The limits a CT is judged by, from a training reference."""
    ax, ip = reference["axial_fov_mm"], reference["inplane_fov_mm"]
    return {"axial_fov_mm": [FOV_MIN_FACTOR * ax[0], FOV_MAX_FACTOR * ax[1]],
            "inplane_fov_mm": [FOV_MIN_FACTOR * ip[0], FOV_MAX_FACTOR * ip[1]],
            "kvp": list(reference["kvp"]), "kvp_tolerance": KVP_TOLERANCE,
            "contrast_ml_max": max(CONTRAST_FLAG_ML, 2.0 * reference["contrast_ml_max"]),
            "hu_js_max": JS_FACTOR * reference["hu_js_nearest_loo_max"]}


def ood_check(ct_img: sitk.Image, kvp: float | None = None, reference: dict | None = None) -> OODResult:
    """Compare a CT with the training CTs; reasons (empty when in distribution) and the numbers."""
    reference = reference or TRAINING_REFERENCE
    m = measure(ct_img, kvp)
    m["hu_js_distance"] = nearest_js(m.pop("hu_histogram"), [np.asarray(h) for h in reference["hu_histograms"]])
    lim = thresholds(reference)
    reasons = []
    for key, what in (("axial_fov_mm", "axial field of view"), ("inplane_fov_mm", "in-plane field of view")):
        lo, hi = lim[key]
        if not lo <= m[key] <= hi:
            reasons.append(f"{what} {m[key]:.0f} mm outside the training range {lo:.0f}-{hi:.0f} mm "
                           f"(training CTs {reference[key][0]:.0f}-{reference[key][1]:.0f} mm)")
    if m["kvp"] is not None and min(abs(m["kvp"] - k) for k in lim["kvp"]) > KVP_TOLERANCE:
        reasons.append(f"tube voltage {m['kvp']:.0f} kVp; the model was trained on "
                       f"{', '.join(f'{k:.0f}' for k in lim['kvp'])} kVp CTs")
    if m["contrast_ml"] > lim["contrast_ml_max"]:
        reasons.append(f"contrast-enhanced CT suspected: {m['contrast_ml']:.0f} mL of homogeneous 150-500 HU soft "
                       f"structures without cortical bone: vessels or organs with iodine (training CTs are unenhanced)")
    if m["hu_js_distance"] > lim["hu_js_max"]:
        reasons.append(f"HU histogram of the body far from the training CTs' (Jensen-Shannon distance "
                       f"{m['hu_js_distance']:.3f} to the nearest, > {lim['hu_js_max']:.3f})")
    m["kvp_known"] = m["kvp"] is not None
    for r in reasons:
        log.warning("ct-to-pet input out of distribution: %s", r)
    return OODResult(reasons, m, lim)
