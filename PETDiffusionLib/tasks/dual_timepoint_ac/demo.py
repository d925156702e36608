"""`petdiffusion demo` step for dual-timepoint-ac: the task on a simulated dual-time-point phantom
(delayed NAC with patient motion, first CT, first AC PET) and the shipped model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.io.images import read_image
from PETDiffusionLib.phantom.case import PhantomConfig, generate_cohort
from PETDiffusionLib.phantom.motion import RigidMotion, apply_motion
from PETDiffusionLib.tasks.runner import run_task

TITLE = "Delayed NAC PET + first CT -> delayed AC PET (dual-timepoint-ac, STMDiff, simulated phantom)"
DEMO_SEED = 424244   # not used by any cohort (train 1000, held-out 90000)


def demo(out_dir) -> list[str]:
    out_dir = Path(out_dir)
    (case,) = generate_cohort(out_dir / "phantom", 1, DEMO_SEED,
                              PhantomConfig(size=64, slices=80, images=("ac", "delayed")))
    manifest = run_task("dual-timepoint-ac", {"nac": str(case / "pet_delayed_nac.nii.gz"),
                                              "ct": str(case / "ct.nii.gz"),
                                              "first_pet": str(case / "pet_ac.nii.gz")},
                        {"samples": 2}, out_dir / "result")
    man = json.loads(manifest.read_text())
    info = json.loads((case / "case.json").read_text())
    motion = RigidMotion.from_dict(info["simulation"]["delayed"]["motion"])
    organs = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "organs.nii.gz")))
    moved = apply_motion(organs, motion, read_image(case / "ct.nii.gz").GetSpacing(), order=0)
    names = {int(k): v for k, v in info["organ_labels"].items()}
    liver = np.isin(moved, [k for k, v in names.items() if v == "liver"])
    pet = sitk.GetArrayFromImage(read_image(out_dir / "result" / "pet_ac.nii.gz"))
    ref = sitk.GetArrayFromImage(read_image(case / "pet_delayed_ac.nii.gz"))
    nac = sitk.GetArrayFromImage(read_image(case / "pet_delayed_nac.nii.gz"))
    return [f"phantom: {case} (seed {DEMO_SEED}); motion {motion.to_dict()}",
            f"model {man['model_id']} {man['model_version']}, k = {man['k']}, "
            f"{man['parameters']['steps']} DDIM steps, {man['seconds']} s; estimated axial shift "
            f"{man['estimated_axial_shift_mm']} mm (simulated {motion.shift_mm_xyz[2]:.1f} mm)",
            f"SYNTHETIC delayed AC PET (SUVbw) written: {out_dir / 'result' / 'pet_ac.nii.gz'}",
            f"liver SUVmean: STMDiff {pet[liver].mean():.2f}, simulated delayed AC {ref[liver].mean():.2f}, "
            f"NAC {nac[liver].mean():.2f}",
            f"retention-index table: {out_dir / 'result' / 'retention_index.csv'} "
            f"({man.get('retention_regions', 0)} regions)"]
