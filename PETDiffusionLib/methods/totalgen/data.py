"""TotalGen's training data from the simulator: demographics -> clavicle-to-sacrum PET/CT + organs.

One subject is a phantom (``phantom.case.generate_anatomy_and_uptake``, no acquisition: the true SUV
blurred by the simulator's PSF) cropped to the clavicle-to-sacrum region and zero-padded to a fixed
box (TotalGen §2.2: "cropped to the region extending from the clavicle to the sacrum ... zero-padded
to a standardized spatial dimension"). The high-resolution (HR) box is 4 mm; the low-resolution (LR)
volumes are its 4x stratified sub-samplings ``HR[z::4, y::4, x::4]`` (TotalGen §2.2), 64 per subject,
at 16 mm (the paper: 2 mm -> 8 mm; here one octave coarser so that both stages train on this CPU).

Arrays are [z, y, x] with z index 0 at the TOP of the box (the clavicle level); intensities in
network units (:mod:`PETDiffusionLib.methods.totalgen.intensities`).
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt, find_objects, gaussian_filter

from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.methods.totalgen.intensities import ct_to_unit, pet_to_unit
from PETDiffusionLib.phantom.anatomy import LABEL_ID, POPULATION, Demographics
from PETDiffusionLib.phantom.case import PhantomConfig, case_rng, generate_anatomy_and_uptake
from PETDiffusionLib.phantom.tissues import ct_map
from PETDiffusionLib.physics.acquisition import AcquisitionConfig, fwhm_to_sigma_vox

log = logging.getLogger(__name__)

HR_SPACING_MM = 4.0
"""HR voxel (mm): the task's output resolution (issue 17: "one subject at <= 4 mm")."""
FACTOR = 4
"""TotalGen §2.2: each HR volume sub-sampled by 4 along each axis (64 LR volumes per subject)."""
HR_SHAPE = (192, 128, 128)
"""HR box [z, y, x]: 768 mm (TotalGen: 384 x 2 mm) by 512 mm (the simulator's transaxial FOV,
anatomy.FOV_XY_MM; TotalGen: 224 x 2 mm = 448 mm, too narrow for BMI 40 here)."""
LR_SHAPE = tuple(s // FACTOR for s in HR_SHAPE)  # (48, 32, 32) at 16 mm
PHANTOM_SLICES = 200  # 800 mm at 4 mm: the simulator's axial FOV (anatomy.FOV_Z_MM)

REGION_TOP_FRACTION = 0.17
"""Top of the box, fraction of standing height below the vertex: the clavicles (shoulder 0.818 H
above the floor, Winter Fig. 4.1 -> 0.182 H below the vertex) with 1 % H of margin."""
REGION_BOTTOM_FRACTION = 0.50
"""Bottom of the region: below the sacrum (the phantom's pubic rami end at 0.50 H below the vertex,
phantom/anatomy.py), zero-padded beneath (TotalGen §2.2)."""

ORGAN_CHANNELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lungs", ("lung_left", "lung_right")),
    ("liver", ("liver",)),
    ("spleen", ("spleen",)),
    ("kidneys", ("kidney_left", "kidney_right")),
    ("heart", ("heart_myocardium", "heart_blood_pool")),
    ("bladder", ("bladder",)),
)
"""Organ groups generated jointly as extra channels (phantom labels, anatomy.ORGAN_LABELS). The
paper's Table 1 organs (liver, heart, kidneys) and the organs a reader orients by."""
ORGAN_GROUP_ID = {name: k + 1 for k, (name, _) in enumerate(ORGAN_CHANNELS)}

AGE_RANGE = (20.0, 85.0)
BMI_RANGE = (17.0, 40.0)
"""The training population (issue 17): ages 20-85, both sexes, BMI 17-40."""
HEIGHT_SD_CLIP = 2.5
"""Height drawn from TotalGen Table 1's mean and SD by sex (anatomy.POPULATION), clipped at 2.5 SD."""


def sample_population(rng: np.random.Generator) -> Demographics:
    """Sex 1:1, age uniform on AGE_RANGE, height ~ Table 1 by sex, BMI uniform on BMI_RANGE."""
    sex = "M" if rng.random() < 0.5 else "F"
    mean, sd = POPULATION[sex]["height_cm"]
    h = float(np.clip(rng.normal(mean, sd), mean - HEIGHT_SD_CLIP * sd, mean + HEIGHT_SD_CLIP * sd))
    bmi = float(rng.uniform(*BMI_RANGE))
    return Demographics(sex, round(float(rng.uniform(*AGE_RANGE)), 1), round(h, 1),
                        round(bmi * (h / 100.0) ** 2, 1))


ORGAN_ENCODINGS = ("indicator", "sdf")
"""How an organ group is a stage-1 channel: its 0/1 indicator (the shipped 0.1-0.3), or its signed
distance (:func:`organ_sdf_unit`; measured at equal budget, not shipped: README, the card's
ablation_organ_encoding). Both mark the organ where the channel's unit exceeds one half
(synthesis.ORGAN_THRESHOLD)."""
SDF_CLIP_MM = 48.0
"""Signed distances are clipped at +-48 mm, three 16 mm LR voxels: wide enough that the field has a
slope over every LR voxel near an organ (a kidney is about 110 x 60 x 30 mm, Standring, Gray's
Anatomy 41st ed., so no voxel of it is more than about 15 mm inside) and narrow enough that far
voxels saturate."""


def organ_indicators(groups: np.ndarray) -> np.ndarray:
    """Organ group ids [Z, Y, X] -> [n_organs, Z, Y, X] float32 0/1 indicators."""
    return np.stack([groups == k + 1 for k in range(len(ORGAN_CHANNELS))]).astype(np.float32)


def organ_channels(groups: np.ndarray, encoding: str) -> np.ndarray:
    """Organ group ids -> [n_organs, Z, Y, X] float32 channels in [0, 1] of ``encoding``
    (ORGAN_ENCODINGS)."""
    if encoding == "sdf":
        return organ_sdf_unit(groups).astype(np.float32)
    if encoding == "indicator":
        return organ_indicators(groups)
    raise ValueError(f"organ encoding {encoding!r} is not one of {', '.join(ORGAN_ENCODINGS)}")


def organ_sdf_unit(groups: np.ndarray, clip_mm: float = SDF_CLIP_MM) -> np.ndarray:
    """Organ group ids [Z, Y, X] (4 mm HR) -> [n_organs, Z, Y, X] float16 signed distances in [0, 1]:
    ``0.5 + 0.5 * clip(d / clip_mm, -1, 1)``, d in mm positive inside, measured from the voxel faces
    (an inside voxel next to the background +2 mm, its outside neighbour -2 mm), so ``unit > 0.5``
    gives back exactly the organ. Computed on the organ's bounding box plus the clip distance (exact:
    every voxel further away saturates at 0)."""
    n = len(ORGAN_CHANNELS)
    out = np.zeros((n,) + groups.shape, np.float16)
    margin = int(np.ceil(clip_mm / HR_SPACING_MM)) + 1
    half = HR_SPACING_MM / 2.0
    boxes = find_objects(groups.astype(np.int32), max_label=n)
    for k in range(n):
        if boxes[k] is None:
            continue
        sl = tuple(slice(max(0, b.start - margin), min(size, b.stop + margin))
                   for b, size in zip(boxes[k], groups.shape))
        m = groups[sl] == k + 1
        inside = distance_transform_edt(m, sampling=HR_SPACING_MM) - half
        outside = distance_transform_edt(~m, sampling=HR_SPACING_MM) - half
        d = np.where(m, inside, -outside)
        out[(k,) + sl] = (0.5 + 0.5 * np.clip(d / clip_mm, -1.0, 1.0)).astype(np.float16)
    return out


def group_labels(organs: np.ndarray) -> np.ndarray:
    """Phantom organ labels -> ORGAN_CHANNELS group ids (0 = none), uint8."""
    out = np.zeros(organs.shape, np.uint8)
    for name, members in ORGAN_CHANNELS:
        out[np.isin(organs, [LABEL_ID[m] for m in members])] = ORGAN_GROUP_ID[name]
    return out


def crop_box(vol: np.ndarray, top_z_mm: float, height_cm: float, fill: float) -> np.ndarray:
    """Phantom array [z bottom-first] -> HR box [z top-first] from REGION_TOP_FRACTION down,
    ``fill`` beyond the phantom and below REGION_BOTTOM_FRACTION."""
    H = height_cm * 10.0
    n = vol.shape[0]
    # phantom slice k has z = top_z - (n - 1 - k) * s; the box's slice j has z = -0.17 H - j * s
    k_top = int(round(n - 1 - (top_z_mm + REGION_TOP_FRACTION * H) / HR_SPACING_MM))
    j_bottom = int(np.ceil((REGION_BOTTOM_FRACTION - REGION_TOP_FRACTION) * H / HR_SPACING_MM))
    box = np.full((HR_SHAPE[0],) + vol.shape[1:], fill, vol.dtype)
    for j in range(min(HR_SHAPE[0], j_bottom)):
        k = k_top - j
        if 0 <= k < n:
            box[j] = vol[k]
    return box


def simulate_subject(seed: int, index: int, demographics: Demographics | None = None) -> dict:
    """One subject's HR box: ct_hu, suv (PSF-blurred true SUV), groups (organ group ids), info."""
    cfg = PhantomConfig(size=HR_SHAPE[1], slices=PHANTOM_SLICES, images=())
    demo = demographics or sample_population(case_rng(seed, 10_000_000 + index))
    rng, anat, _, suv = generate_anatomy_and_uptake(seed, index, cfg, demographics=demo)
    ct = ct_map(anat, rng)
    psf = AcquisitionConfig().psf_fwhm_mm  # PHYSICS.md §4: the simulator's 5 mm FWHM
    suv = gaussian_filter(suv.astype(np.float32), fwhm_to_sigma_vox(psf, anat.grid.spacing))
    top = anat.params["top_z_mm"]
    h = demo.height_cm
    return {"ct_hu": crop_box(ct.astype(np.float32), top, h, -1000.0),
            "suv": crop_box(suv, top, h, 0.0),
            "groups": crop_box(group_labels(anat.organs), top, h, 0),
            "organs": crop_box(anat.organs.astype(np.uint8), top, h, 0),
            "demographics": demo}


def subject_measures(groups: np.ndarray, suv: np.ndarray, ct_hu: np.ndarray) -> dict:
    """Volume (L), SUVmean, SUVmax, CT mean (HU) of each organ group on the HR box."""
    voxel_l = HR_SPACING_MM ** 3 / 1e6
    out = {}
    for name, gid in ORGAN_GROUP_ID.items():
        m = groups == gid
        out[name] = {"volume_l": float(m.sum() * voxel_l),
                     "suv_mean": float(suv[m].mean()) if m.any() else float("nan"),
                     "suv_max": float(suv[m].max()) if m.any() else float("nan"),
                     "ct_mean_hu": float(ct_hu[m].mean()) if m.any() else float("nan")}
    return out


def write_subject(out_dir: Path, seed: int, index: int) -> Path:
    final = Path(out_dir) / f"subject_{index:04d}.npz"
    if final.is_file():
        return final
    s = simulate_subject(seed, index)
    tmp = final.with_name(f".{final.stem}.partial-{os.getpid()}.npz")
    np.savez_compressed(tmp, ct=ct_to_unit(s["ct_hu"]).astype(np.float16),
                        pet=pet_to_unit(s["suv"]).astype(np.float16), groups=s["groups"])
    info = {"seed": seed, "index": index, "demographics": asdict(s["demographics"]),
            "bmi": round(s["demographics"].bmi, 2),
            "measures": subject_measures(s["groups"], s["suv"], s["ct_hu"])}
    atomic_write_text(final.with_suffix(".json"), json.dumps(info, indent=1))
    os.replace(tmp, final)
    return final


def prepare_cohort(out_dir: str | Path, n: int, seed: int) -> dict:
    """Write ``n`` subjects (skipping those present), ``subjects.csv`` and ``COMPLETE``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for i in range(n):
        write_subject(out_dir, seed, i)
        log.info("subject %d/%d (%.0f s)", i + 1, n, time.monotonic() - t0)
    rows = [json.loads((out_dir / f"subject_{i:04d}.json").read_text()) for i in range(n)]
    with open(out_dir / "subjects.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject", "sex", "age", "height_cm", "weight_kg", "bmi"])
        for r in rows:
            d = r["demographics"]
            w.writerow([f"subject_{r['index']:04d}", d["sex"], d["age"], d["height_cm"],
                        d["weight_kg"], r["bmi"]])
    atomic_write_text(out_dir / "COMPLETE", json.dumps({"n": n, "seed": seed}) + "\n")
    return {"n": n, "seed": seed, "folder": str(out_dir), "seconds": round(time.monotonic() - t0, 1)}


def load_cohort(folder: str | Path) -> tuple[list[dict], list[dict]]:
    """(arrays, infos) of every subject in a prepared folder (arrays: ct, pet float32; groups)."""
    folder = Path(folder)
    paths = sorted(folder.glob("subject_*.npz"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no subject_*.npz (run the prepare stage)")
    arrays, infos = [], []
    for p in paths:
        with np.load(p) as z:
            arrays.append({"ct": z["ct"].astype(np.float32), "pet": z["pet"].astype(np.float32),
                           "groups": z["groups"]})
        infos.append(json.loads(p.with_suffix(".json").read_text()))
    return arrays, infos


def height_range(sex: str) -> tuple[float, float]:
    mean, sd = POPULATION[sex]["height_cm"]
    return mean - HEIGHT_SD_CLIP * sd, mean + HEIGHT_SD_CLIP * sd


def out_of_range(age: float, sex: str, height_cm: float, weight_kg: float) -> list[str]:
    """What lies outside the training population (age, height by sex, BMI), one message each."""
    problems = []
    if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        problems.append(f"age {age:g} y is outside the training range {AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} y")
    lo, hi = height_range(sex)
    if not lo <= height_cm <= hi:
        problems.append(f"height {height_cm:g} cm is outside the training range {lo:g}-{hi:g} cm "
                        f"for sex {sex}")
    bmi = weight_kg / (height_cm / 100.0) ** 2
    if not BMI_RANGE[0] <= bmi <= BMI_RANGE[1]:
        problems.append(f"weight {weight_kg:g} kg gives BMI {bmi:.1f}, outside the training range "
                        f"{BMI_RANGE[0]:g}-{BMI_RANGE[1]:g} kg/m^2")
    return problems
