"""`petdiffusion bench ct-to-pet`: one whole-body CT -> synthetic PET with the shipped model, end to
end (read, synthesize, write), its network evaluations and the CPDM paper's own sampler cost; and
the analytic torso CT it runs on (also used by the tests)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.batch.measure import time_task_runs
from PETDiffusionLib.device import choose_device
from PETDiffusionLib.io.images import write_image
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.tasks.ct_to_pet.spec import SPEC

BENCH_SHAPE_ZYX = (160, 128, 128)
BENCH_SPACING_XYZ = (3.9, 3.9, 4.0)
TITLE = ("ct-to-pet: a 128x128x160 CT at 3.9x3.9x4.0 mm (a 500x500x640 mm whole-body field of "
         "view at PET resolution) -> synthetic PET, shipped CPDM model, default bridge steps")

# CPDM's own sampler (the seed paper, ../shared/seeds/CPDM_ct_to_pet.txt, Sec. 5.1 "Models &
# Hyperparameters": Brownian-bridge steps "set at 1000 for training and reduced to 200 for
# inference"), on 2D slices of 256x256 (its Table 2, "Resolution (per image) 256 x 256 x 1") in a
# VQGAN latent of 64x64x3 (f4).
PAPER_STEPS = 200
PAPER_SLICE = 256
# The authors' denoiser configuration (their code, github.com/thanhhff/RegCPDM @ 6ed766b0,
# configs/RegCPDM.yaml, model.BB.params.UNetParams: image_size 64, in_channels 12, out_channels 3,
# model_channels 128, channel_mult (1, 2, 3, 4), num_res_blocks 2, attention_resolutions
# (32, 16, 8), num_head_channels 64, resblock_updown, scale-shift norm), rebuilt as MONAI's
# DiffusionModelUNet of the same widths, depth, attention levels and head size (the same
# ADM-style U-Net family; not the authors' exact module). Timing does not depend on the weights.
PAPER_LATENT = (12, 64, 64)
PAPER_DENOISER = {"class": "monai.networks.nets.DiffusionModelUNet",
                  "args": {"spatial_dims": 2, "in_channels": 12, "out_channels": 3,
                           "channels": [128, 256, 384, 512],
                           "attention_levels": [False, True, True, True], "num_res_blocks": 2,
                           "num_head_channels": 64, "norm_num_groups": 32, "resblock_updown": True}}


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


def paper_sampler_cost(n_slices: int, device: torch.device, timed: int = 2) -> dict:
    """CPDM's own cost for a volume of ``n_slices`` axial slices: 200 denoiser evaluations per slice,
    each timed here on the authors' network configuration (one slice, after one warm-up call)."""
    torch.manual_seed(0)
    net = build_network(PAPER_DENOISER, "the CPDM paper's denoiser").to(device).eval()
    x = torch.randn(1, *PAPER_LATENT, device=device)
    t = torch.full((1,), PAPER_STEPS, device=device, dtype=torch.long)
    with torch.no_grad():
        net(x, t)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(timed):
            net(x, t)
        if device.type == "cuda":
            torch.cuda.synchronize()
    per_eval = (time.perf_counter() - t0) / timed
    evals = n_slices * PAPER_STEPS
    return {"steps": PAPER_STEPS, "source": "CPDM Sec. 5.1 (1000 training steps, 200 at inference), "
            f"2D slices of {PAPER_SLICE}x{PAPER_SLICE} in a 64x64x3 VQGAN latent",
            "network": "the authors' denoiser configuration (RegCPDM configs/RegCPDM.yaml) as MONAI "
                       f"DiffusionModelUNet, {sum(p.numel() for p in net.parameters()) / 1e6:.1f} M "
                       "parameters, input 1x12x64x64",
            "evaluations_per_volume": evals, "evaluations_how": f"{n_slices} slices x {PAPER_STEPS} steps",
            "seconds_per_evaluation_here": round(per_eval, 4),
            "seconds_per_volume_here": round(per_eval * evals, 1),
            "seconds_per_volume_how": "evaluations x seconds per evaluation (batch 1; the VQGAN "
                                      "encode/decode and the attention U-Net not included)"}


def bench(args) -> dict:
    """The bench CT end to end through run_task at the default steps, the model loaded once."""
    device_arg = getattr(args, "device", None) or "auto"
    device = choose_device(device_arg)
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    ct = simple_ct(BENCH_SHAPE_ZYX, BENCH_SPACING_XYZ)
    with tempfile.TemporaryDirectory(prefix="bench-ct-to-pet-") as tmp:
        ct_path = write_image(ct, Path(tmp) / "ct.nii.gz", units="HU")
        runs = time_task_runs(SPEC.id, {"ct": str(ct_path)}, Path(tmp), repeat, device_arg)
        model, load_s, times = runs.model, runs.load_seconds, runs.seconds
        counts = runs.counts
    steps = int(model[1]["diffusion"].get("default_steps", 0))
    return {"title": TITLE, "volume": f"{'x'.join(map(str, BENCH_SHAPE_ZYX[::-1]))} voxels at "
            f"{'x'.join(map(str, BENCH_SPACING_XYZ))} mm (analytic torso CT)",
            "device": str(device), "torch_threads": torch.get_num_threads(),
            "steps": steps, "seconds_per_volume": round(min(times), 2),
            "seconds_how": "run_task end to end (read CT, attention map, encode, bridge, decode, "
                           "write); fastest of --repeat runs; model load excluded",
            "model_load_seconds": round(load_s, 2),
            "network_evaluations": sum(c["calls"] for c in counts.values()),
            "evaluations_by_network": counts,
            "evaluations_how": "forward hooks on the loaded networks: calls (each on a batch of "
                               "2.5D slices) and items (slices evaluated)",
            "paper": paper_sampler_cost(BENCH_SHAPE_ZYX[0], device)}
