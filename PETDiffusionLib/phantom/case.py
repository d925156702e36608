"""One simulated PET/CT/MR case, and cohorts of them, written in the layout the trainers read.

``DIR/case_XXXX/``: ct.nii.gz (HU), suv_true.nii.gz, pet_ac.nii.gz, pet_low_<pct>.nii.gz, pet_nac.nii.gz,
pet_delayed_ac.nii.gz, pet_delayed_nac.nii.gz, mr_t1.nii.gz, organs.nii.gz, lesions.nii.gz, case.json.
Every image is on the CT grid; every PET image is in SUVbw; all are marked synthetic. A case folder
is written under a hidden temporary name and renamed when complete, so a half-written case is never
visible; a cohort writes ``COMPLETE`` when all its cases exist.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import shift as nd_shift

from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.io.images import write_image
from PETDiffusionLib.phantom.anatomy import (LABEL_ID, ORGAN_LABELS, Anatomy, Demographics, Grid,
                                             build_anatomy, sample_demographics)
from PETDiffusionLib.phantom.tissues import ct_map, draw_uptake, mr_t1_map, suv_map
from PETDiffusionLib.phantom.motion import apply_motion, draw_motion
from PETDiffusionLib.physics.acquisition import (GA68_HALF_LIFE_S, AcquisitionConfig, reconstruct,
                                                 simulate_scan)
from PETDiffusionLib.physics.attenuation import hu_to_mu

log = logging.getLogger(__name__)

IMAGE_GROUPS = ("ac", "low", "nac", "delayed", "mr")
CT_KVP = 120  # low-dose CT of a PET/CT; HU -> mu with Carney 2006 at 120 kVp (PHYSICS.md §3)

# Dual-time-point changes from ~60 to ~150 min (PHYSICS.md §5): malignant lesions +15 +- 13 %,
# liver and blood pool -5 to -20 %, myocardium rising, bladder variable (voiding).
DELAYED_LESION_CHANGE = (0.15, 0.13)
DELAYED_LIVER_BLOOD_CHANGE = (-0.20, -0.05)
DELAYED_MYOCARDIUM_CHANGE = (0.0, 0.30)
DELAYED_BLADDER_FACTOR = (0.4, 1.6)
# Shift-only repositioning of the first simulator (max |shift| x, y, z mm): no longer applied, but
# still drawn so that the images made after the delayed ones (mr_t1) keep their random stream.
LEGACY_DELAYED_SHIFT_MM = (6.0, 6.0, 10.0)


@dataclass
class PhantomConfig:
    size: int = 128
    slices: int = 160
    tracer: str = "fdg"  # fdg or psma
    include_head: bool = False
    images: tuple[str, ...] = IMAGE_GROUPS
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)


@dataclass
class SimulatedCase:
    anatomy: Anatomy
    images: dict[str, np.ndarray]  # name (file stem) -> [z, y, x] array
    info: dict


def case_rng(seed: int, index: int) -> np.random.Generator:
    """Case ``index`` of a cohort with ``seed``: the same pair always gives the same case."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def generate_anatomy_and_uptake(seed: int, index: int, cfg: PhantomConfig,
                                demographics: Demographics | None = None):
    rng = case_rng(seed, index)
    demo = demographics or sample_demographics(rng)
    anat = build_anatomy(demo, Grid(cfg.size, cfg.slices), rng, include_head=cfg.include_head)
    uptake = draw_uptake(anat, rng, cfg.tracer)
    suv = suv_map(anat, uptake, rng, cfg.tracer)
    return rng, anat, uptake, suv


def delayed_truth(anat: Anatomy, suv: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    org = anat.organs
    out = suv.copy()
    liver_f = 1.0 + rng.uniform(*DELAYED_LIVER_BLOOD_CHANGE)
    blood_f = 1.0 + rng.uniform(*DELAYED_LIVER_BLOOD_CHANGE)
    myo_f = 1.0 + rng.uniform(*DELAYED_MYOCARDIUM_CHANGE)
    bladder_f = rng.uniform(*DELAYED_BLADDER_FACTOR)
    lesion_f = {}
    for name, f in (("liver", liver_f), ("heart_blood_pool", blood_f), ("aorta", blood_f),
                    ("heart_myocardium", myo_f), ("bladder", bladder_f)):
        out[(org == LABEL_ID[name]) & (anat.lesions == 0)] *= f
    for les in anat.lesion_list:
        f = 1.0 + rng.normal(*DELAYED_LESION_CHANGE)
        lesion_f[les.id] = round(float(f), 3)
        out[anat.lesions == les.id] *= f
    return out, {"liver_factor": round(liver_f, 3), "blood_pool_factor": round(blood_f, 3),
                 "myocardium_factor": round(myo_f, 3), "bladder_factor": round(bladder_f, 3),
                 "lesion_factors": lesion_f}


def simulate_case(seed: int, index: int, cfg: PhantomConfig) -> SimulatedCase:
    """Phantom + every derived image for one case (deterministic in ``seed``, ``index``)."""
    t0 = time.perf_counter()
    rng, anat, uptake, suv = generate_anatomy_and_uptake(seed, index, cfg)
    ct = ct_map(anat, rng)
    images: dict[str, np.ndarray] = {"ct": ct, "suv_true": suv}
    acq = cfg.acquisition
    if cfg.tracer == "psma":
        acq = AcquisitionConfig(**{**acq.to_dict(), "half_life_s": GA68_HALF_LIFE_S})
    sp = anat.grid.spacing
    shape = anat.grid.shape
    info: dict = {}
    t_phantom = time.perf_counter() - t0
    if any(g in cfg.images for g in ("ac", "low", "nac")):
        mu = hu_to_mu(ct, CT_KVP, "carney")
        scan = simulate_scan(suv, mu, sp, anat.demographics.weight_kg, acq.uptake_min, acq, rng)
        info["standard_counts"] = scan.counts_total
        if "ac" in cfg.images:
            images["pet_ac"] = reconstruct(scan, 1.0, shape, sp, acq, rng, attenuation=True)
        if "low" in cfg.images:
            for pct in acq.fractions:
                images[f"pet_low_{pct}"] = reconstruct(scan, pct / 100.0, shape, sp, acq, rng, attenuation=True)
        if "nac" in cfg.images:
            # calibrated as the AC image (same sensitivity and SUV factor), never rescaled (§4.1)
            images["pet_nac"] = reconstruct(scan, 1.0, shape, sp, acq, rng, attenuation=False)
    if "delayed" in cfg.images:
        suv_d, changes = delayed_truth(anat, suv, rng)
        legacy_shift_mm = rng.uniform(-1, 1, 3) * np.array(LEGACY_DELAYED_SHIFT_MM)
        # the delayed scan draws its motion and counts from its own stream (PHYSICS.md §4.1)
        rng_d = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 2]))
        motion = draw_motion(rng_d)
        suv_moved = apply_motion(suv_d, motion, sp, order=1, cval=0.0)
        ct_d = apply_motion(ct, motion, sp, order=1, cval=-1000.0)  # the patient as the second scan sees it
        mu_d = hu_to_mu(ct_d, CT_KVP, "carney")
        scan_d = simulate_scan(suv_moved, mu_d, sp, anat.demographics.weight_kg, acq.delayed_min, acq, rng_d)
        images["pet_delayed_ac"] = reconstruct(scan_d, 1.0, shape, sp, acq, rng_d, attenuation=True)
        # NAC: the same counts, sensitivity and SUV factor as the AC image; no rescaling (§4.1)
        images["pet_delayed_nac"] = reconstruct(scan_d, 1.0, shape, sp, acq, rng_d, attenuation=False)
        if "mr" in cfg.images:
            _advance_like_shift_only_simulator(rng, suv_d, ct, legacy_shift_mm, anat, acq)
        info["delayed"] = {**changes, "minutes_pi": acq.delayed_min, "motion": motion.to_dict(),
                           "shift_mm_xyz": [round(float(s), 2) for s in motion.shift_mm_xyz],
                           "counts": scan_d.counts_total}
    if "mr" in cfg.images:
        images["mr_t1"] = mr_t1_map(anat, rng)
    info["seconds"] = {"phantom": round(t_phantom, 2), "total": round(time.perf_counter() - t0, 2)}
    info["uptake_suv"] = {k: round(v, 3) for k, v in uptake.items()}
    return SimulatedCase(anat, images, info)


def _advance_like_shift_only_simulator(rng, suv_d, ct, shift_mm, anat: Anatomy, acq) -> None:
    """Consume ``rng`` exactly as the shift-only delayed scan of the first simulator did (its Poisson
    draw depends on the expected counts), so that mr_t1, made next, is unchanged for every cohort
    and the demo. The drawn counts are discarded."""
    sp = anat.grid.spacing
    shift_vox = [shift_mm[2] / sp[2], shift_mm[1] / sp[1], shift_mm[0] / sp[0]]
    suv_old = nd_shift(suv_d, shift_vox, order=1, mode="constant", cval=0.0)
    ct_old = nd_shift(ct, shift_vox, order=1, mode="constant", cval=-1000.0)
    simulate_scan(suv_old, hu_to_mu(ct_old, CT_KVP, "carney"), sp, anat.demographics.weight_kg,
                  acq.delayed_min, acq, rng)


def _reference_image(anat: Anatomy) -> sitk.Image:
    ref = sitk.Image(anat.grid.size, anat.grid.size, anat.grid.slices, sitk.sitkUInt8)
    ref.SetSpacing(anat.grid.spacing)
    ref.SetOrigin(anat.origin)
    return ref


UNITS = {"ct": "HU", "suv_true": "SUVbw", "mr_t1": "a.u."}


def write_case(case: SimulatedCase, out_dir: Path, seed: int, index: int, cfg: PhantomConfig) -> Path:
    """Write one case folder atomically (hidden temporary folder renamed at the end)."""
    out_dir = Path(out_dir)
    final = out_dir / f"case_{index:04d}"
    tmp = out_dir / f".case_{index:04d}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        ref = _reference_image(case.anatomy)
        for name, arr in case.images.items():
            img = sitk.GetImageFromArray(arr.astype(np.int16) if name == "ct" else arr.astype(np.float32))
            img.CopyInformation(ref)
            units = UNITS.get(name, "SUVbw")
            write_image(img, tmp / f"{name}.nii.gz", units=units, synthetic=True)
        for name, arr in (("organs", case.anatomy.organs), ("lesions", case.anatomy.lesions)):
            img = sitk.GetImageFromArray(arr.astype(np.uint16))
            img.CopyInformation(ref)
            write_image(img, tmp / f"{name}.nii.gz", units="label", synthetic=True)
        (tmp / "case.json").write_text(json.dumps(case_json(case, seed, index, cfg), indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def case_json(case: SimulatedCase, seed: int, index: int, cfg: PhantomConfig) -> dict:
    anat = case.anatomy
    acq = cfg.acquisition
    return {
        "synthetic": True,
        "generator": "PETDiffusionLib.phantom (issue 4)",
        "seed": seed, "index": index,
        "tracer": cfg.tracer,
        "demographics": {**asdict(anat.demographics), "bmi": round(anat.demographics.bmi, 2)},
        "grid": {"note": "all images share the CT grid", "size_xyz": [anat.grid.size, anat.grid.size,
                                                                       anat.grid.slices],
                 "spacing_mm_xyz": list(anat.grid.spacing), "origin_mm_xyz": list(anat.origin),
                 "orientation": "LPS, identity direction; z increases superior"},
        "units": {"pet": "SUVbw", "ct": "HU", "mr_t1": "arbitrary", "organs": "label", "lesions": "instance label"},
        "organ_labels": {str(k): v for k, v in ORGAN_LABELS.items()},
        "lesions": [asdict(les) for les in anat.lesion_list],
        "count_levels_percent": [100] + [int(f) for f in acq.fractions],
        "images": sorted(case.images) + ["organs", "lesions"],
        "simulation": {"acquisition": acq.to_dict(), "ct_kvp": CT_KVP, "hu_to_mu": "carney",
                       "include_head": cfg.include_head,
                       "nac_normalisation": "none: NAC reconstructed with the AC image's sensitivity and SUV "
                                            "factor, no attenuation or scatter correction (PHYSICS.md 4.1)",
                       "low_count": "binomial thinning of the standard prompts",
                       **case.info},
    }


def generate_cohort(out_dir: Path, n: int, seed: int, cfg: PhantomConfig, progress=None,
                    start: int = 0) -> list[Path]:
    """Write ``n`` cases (skipping those already complete) and the ``COMPLETE`` marker."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, index in enumerate(range(start, start + n)):
        final = out_dir / f"case_{index:04d}"
        if not (final / "case.json").exists():
            t = time.perf_counter()
            case = simulate_case(seed, index, cfg)
            write_case(case, out_dir, seed, index, cfg)
            log.info("case %d written in %.1f s", index, time.perf_counter() - t)
        paths.append(final)
        if progress is not None:
            progress.update("phantom", (k + 1) / n, f"case {k + 1}/{n}")
    atomic_write_text(out_dir / "COMPLETE", json.dumps({"n": n, "seed": seed, "start": start,
                                                        "cases": [p.name for p in paths]}) + "\n")
    return paths
