"""Tissue values per organ label: CT numbers (HU), tracer uptake (SUV) and MR T1 signal.

Sources: PHYSICS.md §5 (FDG SUVs about 60 min p.i., 68Ga-PSMA-11 SUVmax, CT HU ranges) and the
TotalGen Table 1 AutoPET means (liver and kidney SUVmean by sex), which the population realism check
compares against. HU were set inside the PHYSICS.md §5 ranges and then checked against the organ
medians of the real CT in ``shared/data/ct_totalseg_example`` (Testing/test_phantom_realism.py).
"""
from __future__ import annotations

import logging

import numpy as np
from scipy.ndimage import gaussian_filter

from PETDiffusionLib.phantom.anatomy import LABEL_ID, Anatomy, _smooth_noise

log = logging.getLogger(__name__)

L = LABEL_ID

# CT numbers, HU (PHYSICS.md §5): (mean, texture SD). Air -1000; lung -850..-910; fat -50..-100;
# water 0; kidney 20-40; spleen 35-55; liver and blood 45-65; muscle 10-40; cancellous bone ~300;
# cortical bone 700-3000. Unenhanced CT (a PET/CT's low-dose CT has no contrast). Lung is set at
# -825 HU, above PHYSICS.md's parenchyma range, because a 4 mm voxel also holds vessels and the real
# CT's lungs measure -766..-840 HU (median about -790) through TotalSegmentator's lobe labels.
CT_HU: dict[str, tuple[float, float]] = {
    "body": (25.0, 10.0), "fat": (-95.0, 8.0), "muscle": (35.0, 8.0), "lung_left": (-825.0, 25.0),
    "lung_right": (-825.0, 25.0), "liver": (52.0, 6.0), "spleen": (42.0, 6.0),
    "kidney_left": (28.0, 6.0), "kidney_right": (28.0, 6.0), "heart_myocardium": (42.0, 6.0),
    "heart_blood_pool": (42.0, 5.0), "aorta": (45.0, 5.0), "bladder": (8.0, 4.0),
    "stomach": (30.0, 10.0), "vertebrae": (750.0, 80.0), "pelvis": (700.0, 80.0), "ribs": (650.0, 80.0),
    "bone_marrow": (280.0, 50.0), "brain": (35.0, 4.0), "bone_femur": (900.0, 80.0),
    "trachea": (-1000.0, 5.0), "bowel": (20.0, 15.0), "salivary_glands": (30.0, 6.0),
    "skull": (1000.0, 100.0),
}
AIR_HU = -1000.0
CT_NOISE_HU = 12.0  # quantum noise of a low-dose CT at 4 mm voxels (typ. 10-20 HU)
CT_BLUR_MM = 1.5  # CT system blur (sigma), small next to the voxel size

# FDG about 60 min p.i., SUV (PHYSICS.md §5): (mean, between-patient SD).
# Liver and kidneys: TotalGen Table 1 AutoPET SUVmean by sex (liver 2.26 +- 0.42 M / 2.34 +- 0.33 F;
# kidneys 2.50 +- 0.41 / 2.70 +- 0.45); the Table's SD is partly image noise, so 0.8 x SD here.
# Kidney parenchyma is drawn lower (by ~0.4-0.5, measured over 40 phantoms) because the hot collecting
# system adds that much to the whole-kidney mean.
FDG_SUV: dict[str, tuple[float, float]] = {
    "body": (0.7, 0.1), "fat": (0.35, 0.08), "muscle": (0.8, 0.12), "lung_left": (0.6, 0.08),
    "lung_right": (0.6, 0.08), "spleen": (1.9, 0.25), "heart_blood_pool": (1.9, 0.2),
    "aorta": (1.9, 0.2), "bladder": (25.0, 10.0), "stomach": (1.8, 0.4), "vertebrae": (0.5, 0.1),
    "pelvis": (0.5, 0.1), "ribs": (0.5, 0.1), "bone_marrow": (1.0, 0.2), "brain": (8.0, 2.0),
    "bone_femur": (0.5, 0.1), "trachea": (0.0, 0.0), "bowel": (1.4, 0.3),
    "salivary_glands": (1.8, 0.4), "skull": (0.5, 0.1),
}
FDG_SEX = {"liver": {"M": (2.26, 0.34), "F": (2.34, 0.26)},
           "kidney": {"M": (2.10, 0.33), "F": (2.25, 0.36)}}
MYOCARDIUM_FDG_RANGE = (1.0, 10.0)  # PHYSICS.md §5: myocardium variable 1-10 (log-uniform here)
KIDNEY_PELVIS_SUV = (6.0, 15.0)  # urine in the collecting system, below the bladder (10-50)

# 68Ga-PSMA-11 (PHYSICS.md §5 gives SUVmax: kidneys 66 +- 25, salivary glands 24-27, spleen 11 +- 4,
# liver 8 +- 2.5, duodenum 18 +- 9, bladder high). Organ means taken as 0.7 x SUVmax (a typical
# mean/max ratio of a homogeneous organ at PET resolution); background organs low.
PSMA_SUV: dict[str, tuple[float, float]] = {
    "body": (0.5, 0.1), "fat": (0.2, 0.05), "muscle": (0.6, 0.1), "lung_left": (0.3, 0.05),
    "lung_right": (0.3, 0.05), "liver": (5.6, 1.75), "spleen": (7.7, 2.8), "kidney_left": (46.0, 17.0),
    "kidney_right": (46.0, 17.0), "heart_myocardium": (1.5, 0.3), "heart_blood_pool": (1.5, 0.3),
    "aorta": (1.5, 0.3), "bladder": (40.0, 15.0), "stomach": (3.0, 1.0), "vertebrae": (0.5, 0.1),
    "pelvis": (0.5, 0.1), "ribs": (0.5, 0.1), "bone_marrow": (1.2, 0.3), "brain": (0.3, 0.1),
    "bone_femur": (0.5, 0.1), "trachea": (0.0, 0.0), "bowel": (6.0, 3.0),  # duodenum/small bowel
    "salivary_glands": (17.5, 4.0), "skull": (0.5, 0.1),
}
TISSUE_HETEROGENEITY = 0.06  # relative SD of smooth within-organ uptake variation (texture)

# MR T1-weighted signal (arbitrary units, fat = 1): fat and fatty marrow bright, muscle dark,
# liver brighter than spleen, fluid and air and cortical bone dark (standard T1w contrast; relaxation
# times e.g. Stanisz et al. MRM 54:507, 2005).
MR_T1: dict[str, float] = {
    "body": 0.40, "fat": 1.0, "muscle": 0.32, "lung_left": 0.04, "lung_right": 0.04, "liver": 0.55,
    "spleen": 0.38, "kidney_left": 0.42, "kidney_right": 0.42, "heart_myocardium": 0.35,
    "heart_blood_pool": 0.15, "aorta": 0.12, "bladder": 0.10, "stomach": 0.35, "vertebrae": 0.05,
    "pelvis": 0.05, "ribs": 0.05, "bone_marrow": 0.80, "brain": 0.55, "bone_femur": 0.05,
    "trachea": 0.0, "bowel": 0.35, "salivary_glands": 0.5, "skull": 0.05,
}


def _lut(table: dict[str, float], default: float = 0.0) -> np.ndarray:
    lut = np.full(max(L.values()) + 1, default, np.float32)
    for name, v in table.items():
        lut[L[name]] = v
    return lut


def draw_uptake(anat: Anatomy, rng: np.random.Generator, tracer: str = "fdg") -> dict[str, float]:
    """Per-organ mean SUV for this patient."""
    sex = anat.demographics.sex
    table = FDG_SUV if tracer == "fdg" else PSMA_SUV
    # obese patients read higher in SUVbw (PHYSICS.md §5: 25-30 % higher); mild linear BMI effect
    bmi_factor = 1.0 + 0.01 * (anat.demographics.bmi - 26.0) if tracer == "fdg" else 1.0
    out: dict[str, float] = {}
    for name in L:
        if tracer == "fdg" and name in ("liver",):
            m, s = FDG_SEX["liver"][sex]
        elif tracer == "fdg" and name.startswith("kidney"):
            m, s = FDG_SEX["kidney"][sex]
        elif tracer == "fdg" and name == "heart_myocardium":
            lo, hi = MYOCARDIUM_FDG_RANGE
            out[name] = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            continue
        else:
            m, s = table[name]
        out[name] = float(max(0.05 * m, rng.normal(m, s))) * (bmi_factor if name != "trachea" else 1.0)
    if tracer == "fdg":
        out["kidney_right"] = out["kidney_left"] * rng.uniform(0.92, 1.08)
    return out


def suv_map(anat: Anatomy, uptake: dict[str, float], rng: np.random.Generator, tracer: str = "fdg") -> np.ndarray:
    """True activity in SUV: organ means x smooth texture, lesions (heterogeneous, necrotic cores)."""
    org = anat.organs
    lut = np.zeros(max(L.values()) + 1, np.float32)
    for name, v in uptake.items():
        lut[L[name]] = v
    suv = lut[org]
    tex = 1.0 + TISSUE_HETEROGENEITY * _smooth_noise(org.shape, rng, 3.0)
    suv *= np.clip(tex, 0.5, 1.5)
    # kidney collecting system: the medial part of each kidney carries urine activity
    for side in ("kidney_left", "kidney_right"):
        m = org == L[side]
        if m.any():
            idx = np.argwhere(m)
            c = idx.mean(0)
            d = np.linalg.norm((idx - c) * np.array(anat.grid.spacing[::-1]), axis=1)
            core = idx[d < np.quantile(d, 0.06)]
            lo, hi = KIDNEY_PELVIS_SUV if tracer == "fdg" else (60.0, 120.0)
            suv[tuple(core.T)] = rng.uniform(lo, hi)
    # lesions
    for les in anat.lesion_list:
        m = anat.lesions == les.id
        if not m.any():
            continue
        v = np.full(int(m.sum()), les.suv, np.float32)
        if les.heterogeneous:
            v *= np.clip(1.0 + 0.25 * rng.standard_normal(v.size), 0.5, 1.5).astype(np.float32)
        suv[m] = v
    suv[anat.necrotic] = rng.uniform(0.5, 1.2)
    return np.clip(suv, 0, None).astype(np.float32)


def ct_map(anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """CT in HU: tissue values, correlated texture, lung vessels, gas, lesion contrast, blur, noise."""
    org = anat.organs
    mean = _lut({k: v[0] for k, v in CT_HU.items()}, AIR_HU)
    sd = _lut({k: v[1] for k, v in CT_HU.items()}, 0.0)
    field = _smooth_noise(org.shape, rng, 1.5)
    hu = mean[org] + sd[org] * field
    lung = (org == L["lung_left"]) | (org == L["lung_right"])
    # lung vessels: the brightest few percent of a fine random field become vessel-like soft tissue
    v = _smooth_noise(org.shape, rng, 1.2)
    vessel = lung & (v > 2.0)
    hu[vessel] = -400.0 + 150.0 * v[vessel]
    # bowel and stomach gas pockets
    gas = np.isin(org, [L["bowel"], L["stomach"]]) & (_smooth_noise(org.shape, rng, 2.0) > 1.3)
    hu[gas] = -950.0
    # lesions: liver lesions hypodense, lung and node lesions soft tissue, bone lesions lytic or sclerotic
    for les in anat.lesion_list:
        m = anat.lesions == les.id
        if les.site == "liver":
            hu[m] = mean[L["liver"]] - rng.uniform(15, 35)
        elif les.site in ("lung", "node"):
            hu[m] = rng.uniform(25, 45)
        elif les.site == "bone":
            hu[m] = rng.choice([rng.uniform(40, 120), rng.uniform(500, 900)])
    hu[anat.necrotic] = rng.uniform(10, 25)
    sig = [CT_BLUR_MM / s for s in anat.grid.spacing[::-1]]
    hu = gaussian_filter(hu, sig)
    hu += CT_NOISE_HU * rng.standard_normal(hu.shape).astype(np.float32)
    return np.clip(hu, -1024, 3071).astype(np.float32)


def mr_t1_map(anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """MR-like T1-weighted image: tissue contrast, coil bias field, blur, Rician noise (a.u.)."""
    org = anat.organs
    sig = _lut(MR_T1, 0.0)[org]
    sig *= 1.0 + 0.05 * _smooth_noise(org.shape, rng, 2.0)
    les = anat.lesions > 0
    sig[les & (org == L["liver"])] *= 0.6  # metastases are T1-hypointense
    sig[les & (org == L["bone_marrow"])] = 0.3  # marrow replacement
    bias = 1.0 + 0.15 * _smooth_noise(org.shape, rng, 25.0)  # receive-coil bias field
    sig = gaussian_filter(sig * bias, [1.0 / s for s in anat.grid.spacing[::-1]])
    n = 0.02
    re = sig + n * rng.standard_normal(sig.shape).astype(np.float32)
    im = n * rng.standard_normal(sig.shape).astype(np.float32)
    return np.sqrt(re ** 2 + im ** 2).astype(np.float32) * 1000.0
