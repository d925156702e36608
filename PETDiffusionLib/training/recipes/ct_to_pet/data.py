"""The recipe's data stages: cohort cases (and optional real PET/CT pairs) on the working grid.

``prepare`` caches every training case as axial slices cropped or padded to ``slice_size``
(CT in HU, PET in SUV; one npz per case in ``run_dir/prepare/``) and computes the tissue-class
floor; ``prepare_real`` does the same for real sarcoma PET/CT crops (config ``real_pairs``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.io.images import array_and_image, read_image, resample_to, to_working_grid
from PETDiffusionLib.methods.cpdm.intensities import CT_HU_MIN, TISSUE_CLASSES, tissue_classes
from PETDiffusionLib.methods.cpdm.transforms import crop_or_pad
from PETDiffusionLib.phantom.cohort import list_cases

log = logging.getLogger(__name__)


def working_array(img: sitk.Image, spacing, default: float = 0.0) -> np.ndarray:
    """z,y,x float32 array of the image on the working grid (LPS, ``spacing`` mm)."""
    return sitk.GetArrayFromImage(to_working_grid(img, spacing, default_value=default)).astype(np.float32)


def prepare(cfg: dict, out: Path) -> dict:
    """Cache every training case on the working grid (one npz per case) and the tissue floor."""
    spacing = tuple(cfg["working_spacing_mm"])
    size = int(cfg["slice_size"])
    cases = list_cases(Path(cfg["cohort"]), require=("ct.nii.gz",))[:int(cfg.get("max_cases", 10 ** 6))]
    for case in cases:
        dst = out / f"{case.name}.npz"
        if dst.is_file():
            continue
        ct = working_array(read_image(case / "ct.nii.gz"), spacing, CT_HU_MIN)
        pet = working_array(read_image(case / cfg.get("target", "pet_ac.nii.gz")), spacing)
        ct, pet = crop_or_pad(ct, size, CT_HU_MIN), crop_or_pad(pet, size, 0.0)
        np.savez(dst, ct=ct.astype(np.float32), pet=np.maximum(pet, 0).astype(np.float32))
        log.info("prepared %s: %s slices", case.name, ct.shape[0])
    floor = tissue_floor_means(sorted(out.glob("*.npz")))
    (out / "floor.json").write_text(json.dumps(floor, indent=2))
    log.info("tissue-class floor (training mean SUV): %s", floor)
    return {"cases": [c.name for c in cases], "tissue_floor_suv": floor}


def tissue_floor_means(files: list[Path]) -> dict[str, float]:
    """The non-learned floor (issue 7 "Evaluation"): training-set mean SUV per CT tissue class."""
    sums, counts = np.zeros(len(TISSUE_CLASSES)), np.zeros(len(TISSUE_CLASSES))
    for f in files:
        d = np.load(f)
        cls = tissue_classes(d["ct"])
        for k in range(len(TISSUE_CLASSES)):
            m = cls == k
            sums[k] += d["pet"][m].sum()
            counts[k] += m.sum()
    return {name: float(sums[k] / max(counts[k], 1)) for k, name in enumerate(TISSUE_CLASSES)}


def load_slices(prepared: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All prepared slices: CT (N,S,S) HU, PET (N,S,S) SUV, and the case index of each slice."""
    cts, pets, idx = [], [], []
    for i, f in enumerate(sorted(Path(prepared).glob("*.npz"))):
        d = np.load(f)
        cts.append(d["ct"]), pets.append(d["pet"]), idx.append(np.full(len(d["ct"]), i))
    return np.concatenate(cts), np.concatenate(pets), np.concatenate(idx)


def real_pair_arrays(case_dir: Path, spacing, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A real PET/CT crop (IBSI STS layout: CT_image HU, PET_image SUVbw) on the working grid.

    The PET is resampled onto the CT; CT voxels outside the PET's extent become air, so that the
    pair never shows tissue without a PET value."""
    ct = read_image(case_dir / "CT_image.nii.gz")
    pet_img = read_image(case_dir / "PET_image.nii.gz")
    pet = resample_to(pet_img, ct, default_value=0.0)
    ones = sitk.Image(pet_img.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(pet_img)
    inside = sitk.GetArrayFromImage(resample_to(ones, ct, is_label=True)) > 0.5
    ct_a = np.where(inside, sitk.GetArrayFromImage(ct).astype(np.float32), CT_HU_MIN)
    ct = array_and_image(ct_a.astype(np.float32), ct)
    ct_w = working_array(ct, spacing, CT_HU_MIN)
    pet_w = working_array(pet, spacing)
    return crop_or_pad(ct_w, size, CT_HU_MIN), np.maximum(crop_or_pad(pet_w, size, 0.0), 0.0)


def prepare_real(cfg: dict, out: Path) -> dict:
    """Optional real paired PET/CT crops (cfg['real_pairs']: root, train_cases) -> prepare_real/."""
    rp = cfg["real_pairs"]
    for cid in rp["train_cases"]:
        dst = out / f"{cid}.npz"
        if not dst.is_file():
            ct, pet = real_pair_arrays(Path(rp["root"]) / cid, tuple(cfg["working_spacing_mm"]),
                                       int(cfg["slice_size"]))
            np.savez(dst, ct=ct, pet=pet.astype(np.float32))
            log.info("prepared real pair %s: %s slices", cid, ct.shape[0])
    return {"cases": list(rp["train_cases"])}
