"""`petdiffusion demo` step for ct-to-pet: the task on a simulated phantom CT and the shipped model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.io.images import read_image
from PETDiffusionLib.phantom.case import PhantomConfig, generate_cohort
from PETDiffusionLib.tasks.runner import run_task

TITLE = "CT -> synthetic PET (ct-to-pet, CPDM latent Brownian bridge, simulated phantom CT)"
DEMO_SEED = 424243   # not used by any cohort (train 1000, held-out 90000)


def demo(out_dir) -> list[str]:
    """`make demo`: the task on a simulated phantom CT (with its organ labels) and the shipped model.

    The phantom also has a simulated standard-count PET, so the demo prints the synthetic liver
    SUVmean beside the simulated one (a sanity figure, not an evaluation: see `evaluate`).
    """
    out_dir = Path(out_dir)
    # a seed no training or held-out cohort uses (train 1000, held-out 90000); 64x64x80 keeps it quick
    (case,) = generate_cohort(out_dir / "phantom", 1, DEMO_SEED, PhantomConfig(size=64, slices=80, images=("ac",)))
    manifest = run_task("ct-to-pet", {"ct": str(case / "ct.nii.gz"), "organs": str(case / "organs.nii.gz")},
                        {"samples": 2}, out_dir / "result")
    man = json.loads(manifest.read_text())
    pet = sitk.GetArrayFromImage(read_image(out_dir / "result" / "pet_synthetic.nii.gz"))
    ref = sitk.GetArrayFromImage(read_image(case / "pet_ac.nii.gz"))
    std = sitk.GetArrayFromImage(read_image(out_dir / "result" / "uncertainty.nii.gz"))
    organs = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "organs.nii.gz")))
    names = {int(k): v for k, v in json.loads((case / "case.json").read_text())["organ_labels"].items()}
    liver = np.isin(organs, [k for k, v in names.items() if v == "liver"])
    body = organs > 0
    return [f"phantom CT: {case / 'ct.nii.gz'} (seed {DEMO_SEED})",
            f"model {man['model_id']} {man['model_version']}, {man['parameters']['steps']} bridge steps, "
            f"{man['seconds']} s",
            f"SYNTHETIC PET (SUVbw) written: {out_dir / 'result' / 'pet_synthetic.nii.gz'}",
            f"liver SUVmean: synthetic {pet[liver].mean():.2f} vs simulated PET {ref[liver].mean():.2f}; "
            f"mean 2-sample SD in body {std[body].mean():.3f}",
            f"organ table and report: {out_dir / 'result' / 'organs.csv'}, {out_dir / 'result' / 'report.pdf'}"]
