"""``petdiffusion bench restore``: a 256x256x250 low-dose PET with its CT (on the CT's own, finer
grid) end to end through run_task with the shipped model and default settings (issue 15: at most
3 minutes on the 2-core CPU), its network evaluations, and MFdiff's own sampler cost."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.batch.measure import time_task_runs
from PETDiffusionLib.device import choose_device
from PETDiffusionLib.io.images import write_image
from PETDiffusionLib.tasks.restore.spec import CT_MODEL_ID, SPEC

PET_SHAPE_ZYX = (250, 256, 256)
PET_SPACING_XYZ = (2.73, 2.73, 3.27)   # a 700 mm field of view, 817 mm axial (a whole-body PET)
CT_SHAPE_ZYX = (250, 384, 384)
CT_SPACING_XYZ = (1.37, 1.37, 3.27)    # the CT: 526 mm field of view, its own grid
TITLE = ("restore: a 256x256x250 low-dose PET at 2.73x2.73x3.27 mm with its 384x384x250 CT at "
         "1.37 mm in-plane, end to end, the shipped default for a CT guide (mfdiff-native-2p5d, on "
         "the PET's own grid), default settings (target < 3 min)")
# MFdiff's own sampler (seed Sec. 4.1.3): T = 1000 DDPM steps from noise per 192 x 192 slice.
PAPER_STEPS = 1000


def bench_images() -> tuple[sitk.Image, sitk.Image]:
    """A noisy body-shaped low-dose SUV volume and the CT of the same body on a finer grid."""
    rng = np.random.default_rng(0)

    def body_coords(shape, spacing):
        z, y, x = np.mgrid[tuple(slice(0, n) for n in shape)].astype(np.float32)
        return (z * spacing[2], (y - shape[1] / 2) * spacing[1], (x - shape[2] / 2) * spacing[0])
    zz, yy, xx = body_coords(PET_SHAPE_ZYX, PET_SPACING_XYZ)
    body = (yy / 120) ** 2 + (xx / 170) ** 2 < 1
    suv = np.where(body, 1.0, 0.0).astype(np.float32)
    suv[body & ((yy / 40) ** 2 + ((xx - 60) / 50) ** 2 + ((zz - 500) / 80) ** 2 < 1)] = 2.2
    for cz, cy, cx, r, s in ((300, -20, 40, 12, 8.0), (600, 30, -50, 9, 6.0)):
        suv[(zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = s
    noisy = np.clip(suv + rng.normal(0, 0.5, suv.shape).astype(np.float32) * np.sqrt(suv), 0, None)
    pet = sitk.GetImageFromArray(noisy.astype(np.float32))
    pet.SetSpacing(PET_SPACING_XYZ)
    pet.SetOrigin((-PET_SHAPE_ZYX[2] / 2 * PET_SPACING_XYZ[0], -PET_SHAPE_ZYX[1] / 2 * PET_SPACING_XYZ[1], 0.0))
    zz, yy, xx = body_coords(CT_SHAPE_ZYX, CT_SPACING_XYZ)
    ct = np.full(CT_SHAPE_ZYX, -1000.0, np.float32)
    ct[(yy / 120) ** 2 + (xx / 170) ** 2 < 1] = 40.0
    ct[(yy / 40) ** 2 + ((xx - 60) / 50) ** 2 + ((zz - 500) / 80) ** 2 < 1] = 55.0
    ct += rng.normal(0, 10, ct.shape).astype(np.float32)
    ct_img = sitk.GetImageFromArray(ct.astype(np.int16))
    ct_img.SetSpacing(CT_SPACING_XYZ)
    ct_img.SetOrigin((-CT_SHAPE_ZYX[2] / 2 * CT_SPACING_XYZ[0], -CT_SHAPE_ZYX[1] / 2 * CT_SPACING_XYZ[1], 0.0))
    return pet, ct_img


def bench(args=None) -> dict:
    device_arg = getattr(args, "device", None) or "auto"
    device = choose_device(device_arg)
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    pet, ct = bench_images()
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        pet_p = write_image(pet, Path(tmp) / "pet.nii.gz", units="SUVbw")
        ct_p = write_image(ct, Path(tmp) / "ct.nii.gz", units="HU")
        # the default for a CT guide (pipeline.default_for_guide), loaded up front so that its load
        # time is excluded and its network evaluations are counted
        runs = time_task_runs(SPEC.id, {"pet": str(pet_p), "ct": str(ct_p)}, Path(tmp), repeat,
                              device_arg, model_id=CT_MODEL_ID)
        load_s, times = runs.load_seconds, runs.seconds
        counts, manifest = runs.counts, runs.manifest
        inference = json.loads(manifest.read_text()).get("inference", {})
    return {"title": TITLE,
            "volume": f"PET {'x'.join(map(str, PET_SHAPE_ZYX[::-1]))} voxels at "
                      f"{'x'.join(map(str, PET_SPACING_XYZ))} mm + CT {'x'.join(map(str, CT_SHAPE_ZYX[::-1]))}"
                      f" at {'x'.join(map(str, CT_SPACING_XYZ))} mm (analytic body)",
            "device": str(device), "torch_threads": torch.get_num_threads(),
            "steps": inference.get("steps"), "samples": inference.get("samples"),
            "start_fraction": inference.get("start_fraction"),
            "working_size": inference.get("working_size"),
            "seconds_per_volume": round(min(times), 2),
            "seconds_how": "run_task end to end (read PET and CT, checks, CT onto the PET's working "
                           "grid, fusion, DDIM, back onto the PET grid, write); fastest of --repeat "
                           "runs; model load excluded",
            "model_load_seconds": round(load_s, 2),
            "network_evaluations": sum(c["calls"] for c in counts.values()),
            "evaluations_by_network": counts,
            "paper": {"steps": PAPER_STEPS, "source": "MFdiff Sec. 4.1.3: 1000 time steps, DDPM "
                      "(Ho et al.) hyper-parameters, sampled from noise (Eq. 8)",
                      "evaluations_per_volume": PAPER_STEPS * inference.get("working_size", [0, 0, 0])[2],
                      "evaluations_how": "1000 U-Net evaluations per axial slice of the working grid"}}
