"""``petdiffusion bench denoise-segment``: a 128x128x160 low-count volume end to end."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.io.images import write_image
from PETDiffusionLib.progress import Progress
from PETDiffusionLib.tasks.denoise_segment.spec import SPEC
from PETDiffusionLib.tasks.runner import run_task

TITLE = "128x128x160 low-count PET end to end (target < 3 min)"


def bench(args=None) -> str:
    """Default settings, shipped model, everything the CLI does; returns the seconds as text."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-ds-"))
    write_image(bench_volume(), tmp / "pet.nii.gz", units="SUVbw")
    t0 = time.monotonic()
    run_task(SPEC.id, {"pet": str(tmp / "pet.nii.gz")}, {}, tmp / "out", Progress("none"))
    dt = time.monotonic() - t0
    return (f"denoise-segment: 128x128x160 end to end (denoise, segment, quantify, report): "
            f"{dt:.1f} s with {torch.get_num_threads()} torch thread(s) (target < 180 s)")


def bench_volume() -> sitk.Image:
    """A noisy body-shaped SUV volume (ellipse of SUV 1, a liver-like region, two hot spheres)."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:160, 0:128, 0:128].astype(np.float32)
    body = ((y - 64) / 40) ** 2 + ((x - 64) / 55) ** 2 < 1
    suv = np.where(body, 1.0, 0.0).astype(np.float32)
    suv[body & (((y - 70) / 15) ** 2 + ((x - 45) / 18) ** 2 + ((z - 90) / 20) ** 2 < 1)] = 2.0
    for cz, cy, cx, r, s in ((60, 60, 80, 4, 8.0), (110, 70, 60, 3, 6.0)):
        suv[((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) < r * r] = s
    noisy = np.clip(suv + rng.normal(0, 0.35, suv.shape).astype(np.float32) * np.sqrt(suv), 0, None)
    img = sitk.GetImageFromArray(noisy.astype(np.float32))
    img.SetSpacing((4.0, 4.0, 5.0))
    return img
