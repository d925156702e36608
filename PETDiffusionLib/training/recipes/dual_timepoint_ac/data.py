"""The recipe's data stage: every cohort case on the working grid, at network scale.

One npz per case in ``run_dir/prepare/``: the first scan's CT, NAC and AC (aligned: the pairs the
matching network trains on, STMDiff §2.1 "D_pre"), the delayed NAC and AC (the patient moved:
the pairs of the attenuation-correction network), the body contours of the CT and of both NACs
(threshold, opening, closing: STMDiff §2.1), and the retrieval ground truth of the delayed slices
from the simulated motion (evaluation only; the matching network never sees it).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from PETDiffusionLib.io.images import read_image, to_working_grid
from PETDiffusionLib.methods.cpdm.transforms import crop_or_pad
from PETDiffusionLib.methods.stmdiff.intensities import body_contours, ct_to_net, nac_to_net, pet_to_net
from PETDiffusionLib.phantom.cohort import case_info, list_cases
from PETDiffusionLib.phantom.motion import RigidMotion, matching_first_slices

import SimpleITK as sitk

log = logging.getLogger(__name__)

CT_AIR = -1000.0
FILES = ("ct", "pet_nac", "pet_ac", "pet_delayed_nac", "pet_delayed_ac")


def working_array(img: sitk.Image, spacing, default: float = 0.0) -> np.ndarray:
    return sitk.GetArrayFromImage(to_working_grid(img, spacing, default_value=default)).astype(np.float32)


def prepare(cfg: dict, out: Path) -> dict:
    spacing = tuple(cfg["working_spacing_mm"])
    size = int(cfg["slice_size"])
    cases = list_cases(Path(cfg["cohort"]), require=tuple(f"{f}.nii.gz" for f in FILES))
    cases = cases[:int(cfg.get("max_cases", 10 ** 6))]
    for case in cases:
        dst = out / f"{case.name}.npz"
        if dst.is_file():
            continue
        arr = {f: working_array(read_image(case / f"{f}.nii.gz"), spacing, CT_AIR if f == "ct" else 0.0)
               for f in FILES}
        arr = {f: crop_or_pad(a, size, CT_AIR if f == "ct" else 0.0) for f, a in arr.items()}
        motion = RigidMotion.from_dict(case_info(case)["simulation"]["delayed"]["motion"])
        truth = matching_first_slices(motion, len(arr["ct"]), spacing)
        np.savez(dst, ct=ct_to_net(arr["ct"]), nac=nac_to_net(arr["pet_nac"]), ac=pet_to_net(arr["pet_ac"]),
                 dnac=nac_to_net(arr["pet_delayed_nac"]), dac=pet_to_net(arr["pet_delayed_ac"]),
                 body_ct=body_contours(arr["ct"], "ct"), body_nac=body_contours(arr["pet_nac"], "pet"),
                 body_dnac=body_contours(arr["pet_delayed_nac"], "pet"), truth=truth,
                 motion_mm=np.float32(motion.magnitude_mm))
        log.info("prepared %s: %d slices", case.name, len(arr["ct"]))
    return {"cases": [c.name for c in cases]}


def load_cases(folder: Path) -> list[dict]:
    return [dict(np.load(f)) | {"name": f.stem} for f in sorted(Path(folder).glob("case_*.npz"))]


def body_slices(case: dict, key: str = "body_ct", min_pixels: int = 20) -> np.ndarray:
    """Indices of the slices that show the body (the ones worth training on)."""
    return np.nonzero(case[key].reshape(len(case[key]), -1).sum(1) >= min_pixels)[0]
