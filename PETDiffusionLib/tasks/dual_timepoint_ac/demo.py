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

TITLE = ("Delayed NAC PET + first CT -> delayed AC PET (dual-timepoint-ac: STMDiff matching + physics "
         "AC, and the STMDiff diffusion; simulated phantom)")
DEMO_SEED = 424244   # not used by any cohort (train 1000, held-out 90000)


def demo(out_dir) -> list[str]:
    out_dir = Path(out_dir)
    (case,) = generate_cohort(out_dir / "phantom", 1, DEMO_SEED,
                              PhantomConfig(size=64, slices=80, images=("ac", "delayed")))
    inputs = {"nac": str(case / "pet_delayed_nac.nii.gz"), "ct": str(case / "ct.nii.gz"),
              "first_pet": str(case / "pet_ac.nii.gz")}
    man = json.loads(run_task("dual-timepoint-ac", inputs, {}, out_dir / "result").read_text())
    net = json.loads(run_task("dual-timepoint-ac", inputs, {"method": "stmdiff", "samples": 2},
                              out_dir / "result_stmdiff").read_text())
    info = json.loads((case / "case.json").read_text())
    motion = RigidMotion.from_dict(info["simulation"]["delayed"]["motion"])
    organs = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "organs.nii.gz")))
    moved = apply_motion(organs, motion, read_image(case / "ct.nii.gz").GetSpacing(), order=0)
    names = {int(k): v for k, v in info["organ_labels"].items()}
    liver = np.isin(moved, [k for k, v in names.items() if v == "liver"])
    pet = sitk.GetArrayFromImage(read_image(out_dir / "result" / "pet_ac.nii.gz"))
    pet_net = sitk.GetArrayFromImage(read_image(out_dir / "result_stmdiff" / "pet_ac.nii.gz"))
    ref = sitk.GetArrayFromImage(read_image(case / "pet_delayed_ac.nii.gz"))
    nac = sitk.GetArrayFromImage(read_image(case / "pet_delayed_nac.nii.gz"))
    return [f"phantom: {case} (seed {DEMO_SEED}); motion {motion.to_dict()}",
            f"physics (default): CT registered by {man['registration']['shift_mm']} mm (simulated motion "
            f"{[round(-v, 1) for v in motion.shift_mm_xyz]} mm back), {man['seconds']} s; STMDiff matching's "
            f"axial shift {man['estimated_axial_shift_mm']} mm",
            f"stmdiff: model {net['model_id']} {net['model_version']}, k = {net['k']}, "
            f"{net['parameters']['steps']} DDIM steps, 2 samples, {net['seconds']} s",
            f"SYNTHETIC delayed AC PET (SUVbw) written: {out_dir / 'result' / 'pet_ac.nii.gz'}",
            f"liver SUVmean: physics {pet[liver].mean():.2f}, STMDiff {pet_net[liver].mean():.2f}, "
            f"simulated delayed AC {ref[liver].mean():.2f}, NAC {nac[liver].mean():.2f}",
            f"retention-index table: {out_dir / 'result' / 'retention_index.csv'} "
            f"({man.get('retention_regions', 0)} regions)"]
