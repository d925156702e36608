"""``petdiffusion bench denoise-segment``: a whole-body low-count volume end to end, its network
evaluations, and the AMDiff paper's own sampler cost."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.batch.measure import time_task_runs
from PETDiffusionLib.device import choose_device
from PETDiffusionLib.io.images import write_image
from PETDiffusionLib.tasks.denoise_segment.spec import SPEC

BENCH_SHAPE_ZYX = (160, 128, 128)
BENCH_SPACING_XYZ = (4.0, 4.0, 5.0)
TITLE = ("denoise-segment: a 128x128x160 low-count PET at 4x4x5 mm (a 512x512x800 mm whole-body "
         "field of view) end to end, shipped AMDiff model, default settings (target < 3 min)")

# AMDiff's own sampler (the seed paper, ../shared/seeds/AMDiff_denoise_segment.txt): T = 250
# diffusion steps, sampled step by step from noise (Sec. 2.1.1 and 3.2, "total timesteps to
# T=250"; Discussion: "a relatively small number of diffusion timesteps (250)"), a 3D U-Net on
# 128x128x128 patches (Sec. 3.2); "a single image of 440 x 440 x 620 voxels still required
# approximately 26.6 min for denoising and segmentation" (Discussion) on an NVIDIA H100 (Sec. 3.2).
# Its U-Net's channel widths are not given (Sec. 2.1.1 names only the four-layer encoder, the
# three-layer decoder and self-attention at the lowest resolution), so it is not timed here.
PAPER_STEPS = 250
PAPER_PATCH = 128
PAPER_MINUTES, PAPER_VOXELS = 26.6, (440, 440, 620)


def paper_sampler_cost(shape_zyx: tuple[int, int, int]) -> dict:
    """AMDiff's network evaluations for a volume: 250 per 128^3 patch, with the fewest patches that
    cover it (the paper does not state its inference stride: overlapping patches need more)."""
    patches = math.prod(math.ceil(n / PAPER_PATCH) for n in shape_zyx)
    return {"steps": PAPER_STEPS,
            "source": "AMDiff Sec. 3.2 and Discussion: T = 250, 3D U-Net on 128^3 patches",
            "evaluations_per_volume": patches * PAPER_STEPS,
            "evaluations_how": f"{patches} patches of 128^3 (non-overlapping cover, a lower bound) x "
                               f"{PAPER_STEPS} steps",
            "network": "channel widths not published: not timed here",
            "reported_seconds": {"voxels": "x".join(map(str, PAPER_VOXELS)),
                                 "seconds": round(PAPER_MINUTES * 60), "hardware": "NVIDIA H100",
                                 "what": "denoising and segmentation (AMDiff Discussion)"}}


def bench(args=None) -> dict:
    """The bench volume through run_task with default settings, the model loaded once."""
    device_arg = getattr(args, "device", None) or "auto"
    device = choose_device(device_arg)
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    with tempfile.TemporaryDirectory(prefix="bench-ds-") as tmp:
        pet = write_image(bench_volume(), Path(tmp) / "pet.nii.gz", units="SUVbw")
        runs = time_task_runs(SPEC.id, {"pet": str(pet)}, Path(tmp), repeat, device_arg)
        load_s, times = runs.load_seconds, runs.seconds
        counts, manifest = runs.counts, runs.manifest
        inference = json.loads(manifest.read_text()).get("inference", {})
    return {"title": TITLE, "volume": f"{'x'.join(map(str, BENCH_SHAPE_ZYX[::-1]))} voxels at "
            f"{'x'.join(map(str, BENCH_SPACING_XYZ))} mm (noisy body-shaped SUV volume)",
            "device": str(device), "torch_threads": torch.get_num_threads(),
            "steps": inference.get("steps"), "sampler": inference.get("sampler"),
            "start_fraction": inference.get("start_fraction"),
            "seconds_per_volume": round(min(times), 2),
            "seconds_how": "run_task end to end (read, denoise, revise, segment, quantify, report, "
                           "write); fastest of --repeat runs; model load excluded",
            "model_load_seconds": round(load_s, 2),
            "network_evaluations": sum(c["calls"] for c in counts.values()),
            "evaluations_by_network": counts,
            "evaluations_how": "forward hooks on the loaded networks: calls (each on a batch of "
                               "2.5D slices) and items (slices evaluated)",
            "paper": paper_sampler_cost(BENCH_SHAPE_ZYX)}


def bench_volume() -> sitk.Image:
    """A noisy body-shaped SUV volume (ellipse of SUV 1, a liver-like region, two hot spheres)."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[tuple(slice(0, n) for n in BENCH_SHAPE_ZYX)].astype(np.float32)
    body = ((y - 64) / 40) ** 2 + ((x - 64) / 55) ** 2 < 1
    suv = np.where(body, 1.0, 0.0).astype(np.float32)
    suv[body & (((y - 70) / 15) ** 2 + ((x - 45) / 18) ** 2 + ((z - 90) / 20) ** 2 < 1)] = 2.0
    for cz, cy, cx, r, s in ((60, 60, 80, 4, 8.0), (110, 70, 60, 3, 6.0)):
        suv[((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) < r * r] = s
    noisy = np.clip(suv + rng.normal(0, 0.35, suv.shape).astype(np.float32) * np.sqrt(suv), 0, None)
    img = sitk.GetImageFromArray(noisy.astype(np.float32))
    img.SetSpacing(BENCH_SPACING_XYZ)
    return img
