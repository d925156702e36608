"""`petdiffusion bench ct-to-pet`: one 128x128x160 CT -> synthetic PET with the shipped model, and
the analytic torso CT it runs on (also used by the tests)."""
from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.tasks.ct_to_pet.pipeline import load_model, synthesize
from PETDiffusionLib.tasks.ct_to_pet.spec import DEFAULT_STEPS

TITLE = "ct-to-pet: 128x128x160 CT -> synthetic PET, shipped CPDM model, default bridge steps"


def simple_ct(shape_zyx=(160, 128, 128), spacing=(4.0, 4.0, 4.0), seed: int = 0) -> sitk.Image:
    """An analytic torso CT in HU (air, fat, soft tissue, lungs, liver, spine): for bench and tests."""
    rng = np.random.default_rng(seed)
    z, n_y, n_x = shape_zyx
    zz, yy, xx = np.mgrid[0:z, 0:n_y, 0:n_x].astype(np.float32)
    cy, cx = n_y / 2, n_x / 2
    ct = np.full(shape_zyx, -1000.0, np.float32)
    body = ((yy - cy) / (0.30 * n_y)) ** 2 + ((xx - cx) / (0.42 * n_x)) ** 2 < 1
    ct[body] = -80.0                                              # fat (PHYSICS.md §5)
    soft = ((yy - cy) / (0.26 * n_y)) ** 2 + ((xx - cx) / (0.37 * n_x)) ** 2 < 1
    ct[soft] = 40.0                                               # muscle
    lung = ((((yy - cy) / (0.15 * n_y)) ** 2 + ((np.abs(xx - cx) - 0.17 * n_x) / (0.10 * n_x)) ** 2 < 1)
            & (zz < z / 2))
    ct[lung] = -860.0                                             # lung
    liver = (((yy - cy) / (0.12 * n_y)) ** 2 + ((xx - cx - 0.15 * n_x) / (0.12 * n_x)) ** 2 < 1) & (zz >= z / 2)
    ct[liver] = 55.0                                              # liver
    spine = (yy - cy - 0.2 * n_y) ** 2 + (xx - cx) ** 2 < (0.05 * n_x) ** 2
    ct[spine] = 500.0                                             # bone
    ct += rng.normal(0, 10, ct.shape).astype(np.float32)
    img = sitk.GetImageFromArray(ct)
    img.SetSpacing(tuple(float(s) for s in spacing))
    return img


def bench(args) -> str:
    """128x128x160 CT -> synthetic PET at the default steps, shipped model, one process."""
    ct = simple_ct((160, 128, 128), (3.9, 3.9, 4.0))
    nets, card = load_model(None)
    steps = int(card["diffusion"].get("default_steps", DEFAULT_STEPS))
    times = []
    for _ in range(max(1, getattr(args, "repeat", 1))):
        t0 = time.monotonic()
        synthesize(ct, nets, card, steps=steps, samples=1, seed=0)
        times.append(time.monotonic() - t0)
    return (f"ct-to-pet: 128x128x160 CT (3.9x3.9x4.0 mm), {steps} bridge steps, "
            f"{torch.get_num_threads()} torch threads: {min(times):.1f} s (target < 120 s)")
