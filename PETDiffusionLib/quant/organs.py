"""Organ statistics: SUVmean, SD, median, max and volume for each label of an organ label map."""
from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.quant.lesions import (_check_grid, _name, check_suv_image, label_array,
                                           percist_threshold, voxel_volume_ml)

log = logging.getLogger(__name__)

#: EANM/EARL acceptable liver SUVmean in a 3 cm VOI (Boellaard et al. 2015, EANM guideline
#: version 2.0, Eur J Nucl Med Mol Imaging 42:328; PHYSICS.md section 2 "EANM check").
EANM_LIVER_SUVMEAN_RANGE = (1.3, 3.0)

ORGAN_COLUMNS = ["organ", "label", "voxels", "volume_ml", "suv_mean", "suv_sd", "suv_median",
                 "suv_max"]


def organ_table(suv_img: sitk.Image, organ_img: sitk.Image, names: dict[int, str] | None) -> list[dict]:
    """One row per named label (in label order): organ, label, voxels, volume_ml, SUV statistics.

    SD is the sample standard deviation (ddof=1). A named label absent from the map gets a row
    with 0 voxels and empty (None) statistics, so a missing organ is visible. Labels present in the
    map but not in ``names`` are reported as ``label_<n>``.
    """
    suv = check_suv_image(suv_img)
    organ_name = _name(organ_img, "organ label map")
    _check_grid(suv_img, organ_img, "the PET", organ_name)
    org = label_array(organ_img, organ_name)
    names = {int(k): str(v) for k, v in (names or {}).items()}
    present = [int(v) for v in np.unique(org) if v != 0]
    for lab in present:
        names.setdefault(lab, f"label_{lab}")
    vox_ml = voxel_volume_ml(suv_img)
    flat_org = org.ravel()
    order = np.argsort(flat_org, kind="stable")
    sorted_labels = flat_org[order]
    flat_suv = suv.ravel()
    rows = []
    for lab in sorted(names):
        lo, hi = np.searchsorted(sorted_labels, [lab, lab + 1])
        values = flat_suv[order[lo:hi]]
        row = {"organ": names[lab], "label": lab, "voxels": int(values.size),
               "volume_ml": float(values.size * vox_ml)}
        if values.size:
            row.update(suv_mean=float(values.mean()),
                       suv_sd=float(values.std(ddof=1)) if values.size > 1 else 0.0,
                       suv_median=float(np.median(values)), suv_max=float(values.max()))
        else:
            log.warning("organ '%s' (label %d) has no voxels in the label map", names[lab], lab)
            row.update(suv_mean=None, suv_sd=None, suv_median=None, suv_max=None)
        rows.append(row)
    return rows


def liver_reference_check(suv_img: sitk.Image, organ_img: sitk.Image,
                          names: dict[int, str] | None) -> dict | None:
    """Liver SUVmean/SD in the PERCIST 3 cm sphere and whether it lies in the EANM range 1.3-3.0.

    None when the organ names hold no liver.
    """
    if not any("liver" in str(v).lower() for v in (names or {}).values()):
        return None
    th = percist_threshold(suv_img, organ_img, names)
    if th["reference"] != "liver":
        return None
    lo, hi = EANM_LIVER_SUVMEAN_RANGE
    return {"suv_mean": th["reference_mean"], "suv_sd": th["reference_sd"],
            "voxels": th["reference_voxels"], "centre_mm": th["reference_centre_mm"],
            "eanm_range": [lo, hi], "within_eanm_range": bool(lo <= th["reference_mean"] <= hi),
            "source": "EANM guideline 2.0 (Boellaard 2015): liver SUVmean 1.3-3.0 in a 3 cm VOI"}
