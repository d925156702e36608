"""`petdiffusion bench dual-timepoint-ac`: a 256x256x250 delayed NAC with a 512x512x250 first CT
(issue 16 "Speed": at most 3 minutes on the 2-core CPU) through run_task, end to end."""
from __future__ import annotations

import tempfile
from pathlib import Path

import SimpleITK as sitk
import torch

from PETDiffusionLib.batch.measure import time_task_runs
from PETDiffusionLib.device import choose_device
from PETDiffusionLib.diffusion.ddpm import DEFAULT_STEPS
from PETDiffusionLib.io.images import read_image, write_image
from PETDiffusionLib.phantom.case import PhantomConfig, generate_cohort
from PETDiffusionLib.tasks.dual_timepoint_ac.spec import SPEC

NAC_SIZE, CT_SIZE, N_SLICES = 256, 512, 250
FOV_MM, AXIAL_MM = 512.0, 800.0  # the simulator's field of view (phantom/case.py)
TITLE = (f"dual-timepoint-ac: a {NAC_SIZE}x{NAC_SIZE}x{N_SLICES} delayed NAC with a "
         f"{CT_SIZE}x{CT_SIZE}x{N_SLICES} first CT -> delayed AC PET, default method (physics: matching, "
         f"registration, reprojection) and --method stmdiff at the default steps")
BENCH_SEED = 424245
PAPER_STEPS = DEFAULT_STEPS["ddim"]  # the paper gives no step count (see bench()['paper'])


def upsampled(img: sitk.Image, size: int, slices: int, default: float) -> sitk.Image:
    ref = sitk.Image(size, size, slices, sitk.sitkFloat32)
    ref.SetSpacing((FOV_MM / size, FOV_MM / size, AXIAL_MM / slices))
    ref.SetOrigin(img.GetOrigin())
    return sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)


def bench(args) -> dict:
    device_arg = getattr(args, "device", None) or "auto"
    device = choose_device(device_arg)
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    with tempfile.TemporaryDirectory(prefix="bench-dtp-ac-") as tmp:
        (case,) = generate_cohort(Path(tmp) / "phantom", 1, BENCH_SEED,
                                  PhantomConfig(size=64, slices=80, images=("delayed",)))
        nac = upsampled(read_image(case / "pet_delayed_nac.nii.gz"), NAC_SIZE, N_SLICES, 0.0)
        ct = upsampled(read_image(case / "ct.nii.gz"), CT_SIZE, N_SLICES, -1000.0)
        nac_path = write_image(nac, Path(tmp) / "nac.nii.gz", units="SUVbw")
        ct_path = write_image(ct, Path(tmp) / "ct.nii.gz", units="HU")
        inputs = {"nac": str(nac_path), "ct": str(ct_path)}
        runs = time_task_runs(SPEC.id, inputs, Path(tmp), repeat, device_arg)
        model, load_s, times = runs.model, runs.load_seconds, runs.seconds
        counts = runs.counts
        net = time_task_runs(SPEC.id, inputs, Path(tmp) / "stmdiff", repeat, device_arg,
                             params={"method": "stmdiff"})
    n_work = int(round(AXIAL_MM / float(model[1]["preprocessing"]["working_spacing_mm"][2])))
    return {"title": TITLE, "device": str(device), "torch_threads": torch.get_num_threads(),
            "volume": f"NAC {NAC_SIZE}x{NAC_SIZE}x{N_SLICES}, CT {CT_SIZE}x{CT_SIZE}x{N_SLICES} "
                      "(a simulated phantom resampled up)",
            "paper": {"steps": PAPER_STEPS, "evaluations_per_volume": n_work * PAPER_STEPS,
                      "evaluations_how": f"{n_work} working-grid slices x {PAPER_STEPS} denoiser calls",
                      "source": "STMDiff §3 samples with an ODE (DDIM) solver from a linear schedule of "
                                "T = 1000 but states no step count; 50 is the DDIM default here "
                                "(diffusion/ddpm.DEFAULT_STEPS, Song et al. 2021 Table 1)"},
            "nac": f"{NAC_SIZE}x{NAC_SIZE}x{N_SLICES} at {FOV_MM / NAC_SIZE}x{FOV_MM / NAC_SIZE}x"
                   f"{AXIAL_MM / N_SLICES} mm", "ct": f"{CT_SIZE}x{CT_SIZE}x{N_SLICES} at "
                   f"{FOV_MM / CT_SIZE}x{FOV_MM / CT_SIZE}x{AXIAL_MM / N_SLICES} mm",
            "steps": int(model[1]["diffusion"].get("default_steps", 0)),
            "seconds_per_volume": round(min(times), 2),
            "seconds_per_volume_stmdiff": round(min(net.seconds), 2),
            "seconds_how": "run_task end to end (read NAC and CT, checks, matching; physics: registration and "
                           "reprojection OSEM on the NAC grid; stmdiff: working grids, encode, DDIM, decode, "
                           "resample; write); fastest of --repeat runs; model load excluded",
            "model_load_seconds": round(load_s, 2), "limit_seconds": 180,
            "network_evaluations": sum(c["calls"] for c in counts.values()),
            "evaluations_by_network": counts,
            "evaluations_how": "forward hooks on the loaded networks: calls (each on a batch of slices) "
                               "and items (slices evaluated)"}
