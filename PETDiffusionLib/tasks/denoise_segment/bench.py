"""``petdiffusion bench denoise-segment [--size X,Y,Z]``: a real whole-body 10 % count PET end to end,
its wall time and peak memory, its network evaluations, and the AMDiff paper's own sampler cost.

The input (issue 13 "Speed": a 256x256x250 PET, at most 3 minutes and under 4 GB on this 2-core CPU)
is built from the real whole-body FDG PET ``../shared/data/petwb_sts001`` (MANIFEST.md): resampled to
1.95 mm in-plane (the issue's GE Discovery STE), cropped or padded with air to X x Y around the body,
its central Z slices kept (never padded), then a 10 % count version of it simulated by the project's
own simulator (:func:`PETDiffusionLib.physics.lowcount.simulate_low_count`, 1-2 minutes at this size,
so it is cached under ``runs/bench_inputs/``). The timed part runs in a child process of its own
(:func:`PETDiffusionLib.batch.measure.run_child`) so its peak resident memory holds the model load
and ``run_task`` (denoise, segment, tables, report) and nothing of the input's simulation. The bench
reports the figures and whether they are within the issue's limits; it does not assert them.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.batch.measure import run_child, time_task_runs
from PETDiffusionLib.device import choose_device
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.dicom import read_pet_suv
from PETDiffusionLib.io.images import read_image, write_image
from PETDiffusionLib.physics.lowcount import VALIDATION_SETTINGS, body_outline, simulate_low_count
from PETDiffusionLib.tasks.denoise_segment.spec import SPEC

log = logging.getLogger(__name__)

DEFAULT_SIZE_XYZ = (256, 256, 250)   # issue 13 "Speed": a 256x256x250 PET end to end
INPLANE_MM = 1.95                    # issue 13: GE Discovery STE, 256x256 at 1.95x1.95 mm
COUNT_FRACTION = 0.10                # issue 13: the 10 % count acquisition
SIMULATION_SEED = 0
SOURCE_PET = Path("../shared/data/petwb_sts001/PET/image")  # MANIFEST.md: real whole-body FDG PET
INPUT_CACHE = Path("runs/bench_inputs")                       # git-ignored (.gitignore: runs/)
LIMIT_SECONDS, LIMIT_PEAK_GB = 180.0, 4.0  # issue 13 "Speed": <= 3 minutes, peak under 4 GB
TITLE = ("denoise-segment: a real whole-body 10 % count PET, 256x256x250 at 1.95 mm in-plane, end "
         "to end (denoise, segment, tables, report), shipped model, default settings (issue 13: "
         "at most 3 min, peak under 4 GB)")

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


def parse_size(text: str | None) -> tuple[int, int, int]:
    """``"X,Y,Z"`` voxels (None: :data:`DEFAULT_SIZE_XYZ`); InputError naming ``--size`` if not."""
    if not text:
        return DEFAULT_SIZE_XYZ
    try:
        size = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise InputError(f"expected three positive voxel counts X,Y,Z, got {text!r}", "--size")
    return size


def cached_input_path(size_xyz: tuple[int, int, int], cache: Path = INPUT_CACHE) -> Path:
    x, y, z = size_xyz
    return Path(cache) / (f"petwb_sts001_{x}x{y}x{z}_{INPLANE_MM:g}mm_"
                          f"{round(COUNT_FRACTION * 100)}pct_seed{SIMULATION_SEED}.nii.gz")


def full_count_on_bench_grid(size_xyz: tuple[int, int, int], source: Path = SOURCE_PET
                             ) -> sitk.Image:
    """The real whole-body PET (SUVbw) at :data:`INPLANE_MM` in-plane, X x Y centred on the body
    (air outside the study), its central Z slices at the study's own slice spacing."""
    if not Path(source).is_dir():
        raise InputError("the bench's real whole-body PET is missing (run from the repository "
                         "root, with ../shared/data beside it: MANIFEST.md)", source)
    pet = sitk.DICOMOrient(read_pet_suv(source)[0], "LPS")
    nx, ny, nz = pet.GetSize()
    sx, sy, sz = pet.GetSpacing()
    x, y, z = size_xyz
    if z > nz:
        raise InputError(f"--size asks for {z} slices; the study has {nz} (slices are cropped, "
                         "never padded)", source)
    body = body_outline(sitk.GetArrayFromImage(pet), (sx, sy, sz)).any(0)
    ys, xs = np.nonzero(body) if body.any() else (np.array([0, ny - 1]), np.array([0, nx - 1]))
    centre_idx = ((xs.min() + xs.max()) / 2.0, (ys.min() + ys.max()) / 2.0, (nz - z) // 2)
    first = np.array(pet.TransformContinuousIndexToPhysicalPoint(
        [float(c) for c in centre_idx]))
    d = np.array(pet.GetDirection()).reshape(3, 3)
    first -= d @ np.array([(x - 1) / 2.0 * INPLANE_MM, (y - 1) / 2.0 * INPLANE_MM, 0.0])
    ref = sitk.Image([int(x), int(y), int(z)], sitk.sitkFloat32)
    ref.SetSpacing((INPLANE_MM, INPLANE_MM, sz))
    ref.SetDirection(pet.GetDirection())
    ref.SetOrigin(tuple(float(v) for v in first))
    return sitk.Resample(pet, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def bench_input(size_xyz: tuple[int, int, int] = DEFAULT_SIZE_XYZ, cache: Path = INPUT_CACHE
                ) -> Path:
    """The 10 % count bench PET of ``size_xyz`` (built once, then read from ``cache``)."""
    path = cached_input_path(size_xyz, cache)
    if path.is_file():
        return path
    full = full_count_on_bench_grid(size_xyz)
    t0 = time.monotonic()
    low = simulate_low_count(sitk.GetArrayFromImage(full), full.GetSpacing(), COUNT_FRACTION,
                             VALIDATION_SETTINGS, seed=SIMULATION_SEED)
    log.info("bench input %s simulated in %.0f s", path.name, time.monotonic() - t0)
    img = sitk.GetImageFromArray(low)
    img.CopyInformation(full)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(img, path, units="SUVbw")


def timed_runs(pet: str, out_dir: str, repeat: int, device: str) -> dict:
    """In the child process: the bench protocol (batch/measure.py time_task_runs) on ``pet``."""
    runs = time_task_runs(SPEC.id, {"pet": pet}, Path(out_dir), repeat, device)
    manifest = json.loads(runs.manifest.read_text())
    return {"load_seconds": runs.load_seconds, "seconds": runs.seconds, "counts": runs.counts,
            "inference": manifest.get("inference", {}), "warnings": manifest.get("warnings", []),
            "torch_threads": torch.get_num_threads()}


def bench(args=None) -> dict:
    """The bench PET through run_task with default settings in a child process, the model loaded
    once: wall time (fastest of ``--repeat``) and the child's peak resident memory."""
    device_arg = getattr(args, "device", None) or "auto"
    device = choose_device(device_arg)
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    size = parse_size(getattr(args, "size", None))
    pet_path = bench_input(size)
    pet = read_image(pet_path)
    spacing = pet.GetSpacing()
    with tempfile.TemporaryDirectory(prefix="bench-ds-") as tmp:
        runs, peak_mb = run_child(__name__, "timed_runs", {"pet": str(pet_path), "out_dir": tmp,
                                                          "repeat": repeat, "device": device_arg})
    inference, counts = runs["inference"], runs["counts"]
    seconds, peak_gb = min(runs["seconds"]), peak_mb / 1024.0
    size_text = "x".join(map(str, size))
    return {"title": TITLE if size == DEFAULT_SIZE_XYZ else TITLE.replace("256x256x250", size_text),
            "volume": f"{size_text} voxels at {'x'.join(f'{s:.2f}' for s in spacing)} mm (real "
                      f"whole-body FDG PET petwb_sts001, {round(COUNT_FRACTION * 100)} % counts "
                      f"simulated: physics/lowcount.py, OSEM 3x16, 4 mm filter, seed "
                      f"{SIMULATION_SEED})",
            "size_xyz": list(size), "spacing_mm": [round(s, 4) for s in spacing],
            "input": str(pet_path),
            "device": str(device), "torch_threads": runs["torch_threads"],
            "steps": inference.get("steps"), "sampler": inference.get("sampler"),
            "start_fraction": inference.get("start_fraction"),
            "working_size": inference.get("working_size"),
            "seconds_per_volume": round(seconds, 2),
            "seconds_how": "run_task end to end (read, denoise, revise, segment, quantify, report, "
                           "write) in a child process; fastest of --repeat runs; model load excluded",
            "model_load_seconds": round(runs["load_seconds"], 2),
            "peak_rss_mb": round(peak_mb, 1), "peak_gb": round(peak_gb, 2),
            "peak_rss_how": "peak resident set (VmHWM) of the child process that loaded the model "
                            "and ran run_task (the input's simulation is not in it)",
            "limits": {"seconds": LIMIT_SECONDS, "peak_gb": LIMIT_PEAK_GB,
                       "source": "issue 13 Speed (reported, not asserted)"},
            "within_limits": {"seconds": seconds <= LIMIT_SECONDS, "peak_gb": peak_gb < LIMIT_PEAK_GB},
            "warnings": runs["warnings"], "noise_index": inference.get("noise_index"),
            "network_evaluations": sum(c["calls"] for c in counts.values()),
            "evaluations_by_network": counts,
            "evaluations_how": "forward hooks on the loaded networks: calls (each on a batch of "
                               "2.5D slices) and items (slices evaluated)",
            "paper": paper_sampler_cost(tuple(size[::-1]))}
