"""`petdiffusion bench lesions`: time lesion_table on a 256x256x300 SUV volume with 50 lesions.

Issue 3 target: under 5 s. The volume is a smooth background (SUV ~1) with 50 spheres of radius
5-25 mm and SUV 3-15 on a 4 x 4 x 3 mm grid (a whole-body clinical PET grid).
"""
from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.quant.lesions import lesion_table, lesion_totals

SHAPE_ZYX = (300, 256, 256)
SPACING_XYZ = (4.0, 4.0, 3.0)
N_LESIONS = 50


def make_bench_volume(seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    rng = np.random.default_rng(seed)
    suv = (1.0 + 0.1 * rng.standard_normal(SHAPE_ZYX)).astype(np.float32)
    mask = np.zeros(SHAPE_ZYX, np.uint8)
    sp = np.array(SPACING_XYZ[::-1])
    placed = 0
    while placed < N_LESIONS:
        r = rng.uniform(5, 25)
        c = np.array([rng.uniform(r / s + 1, n - r / s - 2) for s, n in zip(sp, SHAPE_ZYX)])
        lo = np.maximum(0, np.floor(c - r / sp).astype(int) - 1)
        hi = np.minimum(SHAPE_ZYX, np.ceil(c + r / sp).astype(int) + 2)
        if mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].any():
            continue  # keep lesions apart so there are exactly 50 components
        g = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inside = sum(((gi - ci) * si) ** 2 for gi, ci, si in zip(g, c, sp)) <= r * r
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside] = 1
        suv[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside] = rng.uniform(3, 15)
        placed += 1
    suv_img = sitk.GetImageFromArray(suv)
    suv_img.SetSpacing(SPACING_XYZ)
    mask_img = sitk.GetImageFromArray(mask)
    mask_img.CopyInformation(suv_img)
    return suv_img, mask_img


def bench_lesion_table(args=None) -> str:
    suv_img, mask_img = make_bench_volume()
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = lesion_table(suv_img, mask_img)
        times.append(time.perf_counter() - t0)
    totals = lesion_totals(rows)
    return (f"lesion_table: {SHAPE_ZYX[2]}x{SHAPE_ZYX[1]}x{SHAPE_ZYX[0]} voxels, "
            f"{totals.lesion_count} lesions, TMTV {totals.tmtv_ml:.1f} mL: "
            f"{min(times):.2f} s (best of {repeat}; target < 5 s)")
