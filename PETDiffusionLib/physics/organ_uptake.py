"""Physiological FDG uptake by organ (adult, about 60 min p.i.): the literature ranges of organ
SUVmean (SUVbw) a synthetic or simulated PET is checked against, which label names form each organ,
and the check itself.

The table, each range's source and how the range was taken from it are in docs/PHYSICS.md §5.1
"Physiological FDG uptake by organ (adult, 60 min p.i.)"; the numbers here are that table.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from scipy.ndimage import distance_transform_edt

log = logging.getLogger(__name__)

# organ -> (lo, hi, source): the plausible SUVmean range (SUVbw) and where it comes from
# (docs/PHYSICS.md §5.1). mean +- 2 SD covers ~95 % of patients.
ORGAN_SUV_RANGES: dict[str, tuple[float, float, str]] = {
    "liver": (1.3, 3.0,
              "EANM FDG PET/CT guideline v2.0 (Boellaard et al., EJNMMI 2015;42:328-354): liver SUVmean "
              "(3 cm VOI, right lobe) expected 1.3-3.0; Boktor et al., J Nucl Med 2013;54:677-682: "
              "2.17 +- 0.44 in 132 patients (mean +- 2 SD 1.29-3.05)"),
    "spleen": (0.95, 2.25,
               "liver mean +- 2 SD of Boktor 2013 (1.29-3.05) divided by the liver/spleen SUV ratio "
               "1.36 measured at 60 min p.i. in 60 patients (EJNMMI Res 2017, doi:10.1186/"
               "s13550-017-0254-7, A. M. Peters' group)"),
    "blood_pool": (0.8, 2.3,
                   "Boktor et al., J Nucl Med 2013;54:677-682: aortic blood-pool SUVmean 1.55 +- 0.38 "
                   "(mean +- 2 SD 0.79-2.31); PERCIST reference region (Wahl et al., J Nucl Med "
                   "2009;50 Suppl 1:122S-150S)"),
    "muscle": (0.4, 1.2,
               "NOT from a study checked in this project: PHYSICS.md §5 resting skeletal muscle "
               "0.6-1.0, widened by 0.2 SUV each side"),
    "fat": (0.1, 0.6,
            "NOT from a study checked in this project: the phantom's subcutaneous fat 0.35 +- 0.08 "
            "(phantom/tissues.py), widened to 0.1-0.6"),
    "lung": (0.1, 1.3,
             "Miyauchi & Wahl, Eur J Nucl Med 1996;23:517-523: normal-lung SUV 50-70 min p.i., highest "
             "in the dependent lower lung (0.80 +- 0.23, 41 % above the other regions, i.e. ~0.57); "
             "0.57 - 2 x 0.23 to 0.80 + 2 x 0.23"),
    "bone_marrow": (0.85, 2.0,
                    "healthy men (CAMONA, PubMed 29550840): vertebral SUVmean lumbar 1.41 +- 0.28, "
                    "thoracic 1.46 +- 0.27 (mean +- 2 SD 0.85-2.0; measured 180 min p.i.)"),
    "brain": (3.6, 12.4,
              "Wang et al., Mol Imaging Biol 2007;9:83-90 (98 patients): cerebellum SUVmean 8.0 +- 2.2 "
              "(mean +- 2 SD; grey-matter cortex is usually at or above the cerebellum)"),
    "myocardium": (0.8, 10.0,
                   "variable with the fasting state: after a long fast it falls to blood-pool level "
                   "(lower bound = blood pool's), unsuppressed it is high (PHYSICS.md §5: 1-10); "
                   "TotalGen Table 1 AutoPET whole-heart SUVmean 2.48 +- 1.03 (M) / 3.07 +- 1.39 (F)"),
    "kidneys": (1.7, 3.6,
                "TotalGen Table 1 (AutoPET, 200 patients): kidney SUVmean 2.50 +- 0.41 (M), "
                "2.70 +- 0.45 (F); men's mean - 2 SD to women's mean + 2 SD (urinary excretion: "
                "a hot collecting system can exceed it)"),
    "bladder": (2.0, 34.4,
                "J Nucl Med 2015;56 Suppl 3:1434 (76 patients): bladder SUVmean 13.8 +- 10.3 before "
                "voiding (mean + 2 SD = 34.4), 2.0 +- 0.8 after a diuretic (the emptied bladder)"),
}

# Organs whose uptake follows excretion or diet, not a physiological equilibrium: reported, never
# counted as a failure (docs/PHYSICS.md §5.1).
NOT_PHYSIOLOGICAL_TARGETS = frozenset({"myocardium", "kidneys", "bladder"})

# TotalSegmentator v2 "total" class names (../shared/data/ct_totalseg_example/
# totalsegmentator_total_class_map.json) forming each organ; "fat" comes from its "tissue_types"
# task (subcutaneous_fat). TotalSegmentator has no myocardium class: "heart" (chambers included,
# so blood dilutes it) stands in.
TOTALSEG_GROUPS: dict[str, tuple[str, ...]] = {
    "liver": ("liver",),
    "spleen": ("spleen",),
    "blood_pool": ("aorta",),
    "muscle": ("iliopsoas_left", "iliopsoas_right", "autochthon_left", "autochthon_right"),
    "fat": ("subcutaneous_fat",),
    "lung": ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
             "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "bone_marrow": tuple(f"vertebrae_{v}" for v in
                         [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)]
                         + [f"L{i}" for i in range(1, 6)] + ["S1"]),
    "brain": ("brain",),
    "myocardium": ("heart",),
    "kidneys": ("kidney_left", "kidney_right"),
    "bladder": ("urinary_bladder",),
}

# The simulator's organ names (case.json "organ_labels", phantom/anatomy.py) forming each organ.
PHANTOM_GROUPS: dict[str, tuple[str, ...]] = {
    "liver": ("liver",), "spleen": ("spleen",), "blood_pool": ("aorta",), "muscle": ("muscle",),
    "fat": ("fat",), "lung": ("lung_left", "lung_right"), "bone_marrow": ("bone_marrow",),
    "brain": ("brain",), "myocardium": ("heart_myocardium",),
    "kidneys": ("kidney_left", "kidney_right"), "bladder": ("bladder",),
}

# Mean over the core of these organs only (mm of erosion): PERCIST measures the blood pool in a
# 1 cm cylinder inside the descending aorta (Wahl 2009; PHYSICS.md §2), away from the wall, where a
# PET at 4-6 mm FWHM (PHYSICS.md §4) does not mix in the surrounding tissue; the vertebral
# cortex is thin, so its labels hold mostly marrow once their surface voxels are removed.
CORE_EROSION_MM: dict[str, float] = {"blood_pool": 3.0, "bone_marrow": 3.0}
MIN_VOXELS = 5  # fewer voxels than this: the organ is not measured (as in the ct-to-pet evaluation)


def groups_for_names(names: Mapping[int, str]) -> dict[str, tuple[str, ...]]:
    """The organ grouping matching a label-name map: TotalSegmentator's when any of its own class
    names (e.g. iliopsoas_left) appears, else the simulator's."""
    values = set(names.values())
    own_totalseg = {"iliopsoas_left", "autochthon_left", "urinary_bladder", "lung_upper_lobe_left"}
    return TOTALSEG_GROUPS if values & own_totalseg else PHANTOM_GROUPS


def _core(mask: np.ndarray, erosion_mm: float, spacing_zyx: tuple[float, float, float] | None
          ) -> np.ndarray:
    """The voxels deeper than ``erosion_mm`` inside ``mask`` (physical distance to its surface); the
    whole mask when the core would be smaller than MIN_VOXELS."""
    if not erosion_mm or spacing_zyx is None:
        return mask
    core = distance_transform_edt(mask, sampling=spacing_zyx) > erosion_mm
    return core if core.sum() >= MIN_VOXELS else mask


def check_organ_uptake(suv_arr: np.ndarray, labels_arr: np.ndarray, names: Mapping[int, str],
                       groups: Mapping[str, tuple[str, ...]] | None = None,
                       spacing_zyx: tuple[float, float, float] | None = None) -> list[dict]:
    """Per organ present in ``labels_arr`` (at least MIN_VOXELS voxels): SUVmean of ``suv_arr`` and
    whether it lies inside the literature range of ORGAN_SUV_RANGES.

    ``names`` maps label value -> class name; ``groups`` (default: groups_for_names(names)) maps organ
    -> class names. With ``spacing_zyx`` (mm, array order) the organs of CORE_EROSION_MM are measured
    in their core. Returns one dict per organ: organ, labels, voxels, suv_mean, lo, hi, inside,
    physiological_target (False for myocardium, kidneys, bladder: reported, not judged), source.
    """
    if suv_arr.shape != labels_arr.shape:
        raise ValueError(f"SUV array {suv_arr.shape} and label array {labels_arr.shape} differ in shape")
    groups = groups if groups is not None else groups_for_names(names)
    by_name: dict[str, list[int]] = {}
    for value, name in names.items():
        by_name.setdefault(str(name), []).append(int(value))
    rows = []
    for organ, class_names in groups.items():
        if organ not in ORGAN_SUV_RANGES:
            raise KeyError(f"organ {organ!r} has no literature range in ORGAN_SUV_RANGES")
        values = [v for n in class_names for v in by_name.get(n, [])]
        if not values:
            continue
        mask = np.isin(labels_arr, values)
        if mask.sum() < MIN_VOXELS:
            continue
        mask = _core(mask, CORE_EROSION_MM.get(organ, 0.0), spacing_zyx)
        lo, hi, source = ORGAN_SUV_RANGES[organ]
        mean = float(suv_arr[mask].mean())
        rows.append({"organ": organ, "labels": sorted(values), "voxels": int(mask.sum()),
                     "suv_mean": mean, "lo": lo, "hi": hi, "inside": bool(lo <= mean <= hi),
                     "physiological_target": organ not in NOT_PHYSIOLOGICAL_TARGETS,
                     "source": source})
    return rows


def outside_targets(rows: list[dict]) -> list[str]:
    """One line per physiological organ outside its range (the warnings of a run)."""
    return [f"{r['organ']} SUVmean {r['suv_mean']:.2f} outside the FDG range {r['lo']}-{r['hi']}"
            for r in rows if r["physiological_target"] and not r["inside"]]


def format_uptake_table(rows: list[dict]) -> str:
    """A plain-text table of check_organ_uptake's rows."""
    lines = [f"{'organ':12s} {'voxels':>7s} {'SUVmean':>8s} {'range':>11s}  verdict"]
    for r in rows:
        verdict = ("inside" if r["inside"] else "OUTSIDE") + ("" if r["physiological_target"]
                                                             else " (not a physiological target)")
        lines.append(f"{r['organ']:12s} {r['voxels']:7d} {r['suv_mean']:8.2f} "
                     f"{r['lo']:5.2f}-{r['hi']:<5.2f}  {verdict}")
    return "\n".join(lines)
