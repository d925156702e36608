"""Task ``denoise-segment`` (AMDiff): low-count PET -> denoised PET, lesion and organ masks, tables.

Xia et al., "Anatomically and metabolically informed diffusion for unified denoising and
segmentation in low-count PET imaging" (seed: ``../shared/seeds/AMDiff_denoise_segment.txt``).

Pipeline (paper section in brackets):

1. Check the PET (SUVbw by range, no NaN, big enough) and the optional CT (HU by range).
2. Reorient to LPS and resample to the model's working spacing (the model card's
   ``preprocessing.spacing_mm``); crop in-plane to the body's bounding box.
3. Conditional diffusion (Sec. 2.1.1, Eq. 4) in 2.5D slice batches: the low-count slice and its
   neighbours condition the network; optionally start from the low-count image noised to
   ``start_fraction`` of T (PHYSICS.md Sec. 6), N samples for an uncertainty map.
4. Denoising revision (Sec. 2.2.1, Eq. 6): full-range map P_HCR with a skip from the input for SUVs
   above the diffusion cut-off; this is the denoised PET the task returns.
5. Dual-branch segmenter (Sec. 2.2.2, Eq. 8): lesions and organs.
6. Back onto the input's grid; quantification and report through the quant/report layer.

The denoised PET is a model output: it is written with ``synthetic=True``; research use only.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.errors import InputError, ModelError
from PETDiffusionLib.io.images import (array_and_image, get_units, resample_to,
                                       resample_to_spacing, write_image)
from PETDiffusionLib.progress import NULL_PROGRESS
from PETDiffusionLib.tasks.base import ImageInput, Output, Parameter, RunContext, TaskSpec

log = logging.getLogger(__name__)

MODEL_ID = "amdiff-sts-2p5d"   # fine-tuned on real PET; "amdiff-phantom-2p5d" is its phantom-only stage 1

# Range checks that tell a PET in SUV from a CT or from Bq/mL (PHYSICS.md Sec. 1 and 5: FDG SUVs
# lie in 0-~50, bladder up to 50, tumours up to ~24, "occasionally exceeding 200", AMDiff
# Sec. 2.2.1; 1 SUV is ~2.4 kBq/mL for 70 kg and 250 MBq, so Bq/mL images have maxima in the 1e3-1e6
# range; CT air is -1000 HU).
SUV_MAX_PLAUSIBLE = 300.0
SUV_MIN_PLAUSIBLE = -5.0
CT_AIR_HU = -1000.0
MIN_INPLANE_VOXELS = 16     # at the working spacing: the segmenter down-samples by 8
LESION_PROB_THRESHOLD = 0.5     # argmax of two classes; used when a card has no calibrated value

SPEC = TaskSpec(
    id="denoise-segment",
    title="Denoise and segment low-count PET (AMDiff)",
    paper="Xia et al., AMDiff: anatomically and metabolically informed diffusion for unified "
          "denoising and segmentation in low-count PET imaging",
    description="Low-count (low-dose or short) PET in SUVbw -> denoised PET, lesion and organ "
                "masks, lesion and organ tables (SUVmax/mean/peak, MTV, TLG) and a PDF report. "
                "The denoised PET is synthetic.",
    inputs=(
        ImageInput("pet", "pet", "SUVbw", "low-count PET in SUVbw (file or DICOM folder)"),
        ImageInput("ct", "ct", "HU", "CT of the same study in HU (optional; helps organ masks)",
                   required=False),
    ),
    parameters=(
        Parameter("steps", int, 0, "diffusion sampling steps; 0 = the model card's default, "
                  "chosen from its measured quality-versus-steps curve", 0, 250),
        Parameter("sampler", str, "ddim", "sampler", choices=("ddim", "ddpm", "dpmpp2m")),
        Parameter("samples", int, 1, "number of diffusion samples N; N > 1 averages them and "
                  "writes their per-voxel standard deviation as an uncertainty map", 1, 16),
        Parameter("seed", int, 0, "random seed (same seed, same output on the same device)", 0),
        Parameter("start_fraction", float, 0.0, "0 = the model card's default; 1 = start from pure "
                  "noise; in between: start from the low-count input noised to this fraction "
                  "of the diffusion steps", 0.0, 1.0),
        Parameter("lesion_threshold", float, 0.0,
                  "lesion probability above which a voxel is lesion; 0 = the model card's value "
                  "(calibrated on its validation cases)", 0.0, 0.95),
        Parameter("lesion_min_ml", float, 0.2, "drop predicted lesions smaller than this (mL)",
                  0.0, 100.0),
    ),
    outputs=(
        Output("pet_denoised", "pet_denoised.nii.gz", "volume", "denoised PET (synthetic)",
               units="SUVbw", synthetic=True),
        Output("lesions", "lesions.nii.gz", "labelmap", "lesion mask (1 = lesion)",
               label_names="lesion_labels"),
        Output("organs", "organs.nii.gz", "labelmap", "organ label map", label_names="organ_labels"),
        Output("lesions_csv", "lesions.csv", "table", "one row per lesion: SUVmax/mean/peak, MTV, TLG",
               optional=True),
        Output("organs_csv", "organs.csv", "table", "one row per organ: SUVmean/max, volume"),
        Output("summary_json", "summary.json", "json", "totals (TMTV, TTLG, lesion count)"),
        Output("report_pdf", "report.pdf", "report", "PDF report (synthetic banner)"),
        Output("report_json", "report.json", "json", "the report's content as JSON"),
        Output("uncertainty", "uncertainty.nii.gz", "volume",
               "per-voxel standard deviation of the denoised PET over N samples (samples > 1)",
               units="SUVbw", synthetic=True, optional=True),
    ),
    model_id=MODEL_ID,
)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def check_pet(img: sitk.Image, name: str = "--pet") -> None:
    """Raise InputError naming ``name`` for NaNs, a CT or Bq/mL given as PET, or a tiny volume."""
    units = get_units(img)
    if units in ("HU",):
        raise InputError("this image is marked as CT (HU); give the PET in SUVbw", name)
    if units in ("Bq/mL", "BQML"):
        raise InputError("this PET is in Bq/mL; convert it to SUVbw first (petdiffusion suv)", name)
    arr = sitk.GetArrayViewFromImage(img)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"the PET holds {int(np.sum(~np.isfinite(arr)))} NaN or infinite "
                         "voxel(s)", name)
    lo, hi = float(arr.min()), float(arr.max())
    if lo <= -500.0 and (arr < -500.0).mean() > 0.01:
        raise InputError(f"values down to {lo:.0f} look like a CT in HU (air = {CT_AIR_HU:.0f} HU), "
                         "not a PET in SUV; did you swap --pet and --ct?", name)
    if lo < SUV_MIN_PLAUSIBLE:
        raise InputError(f"minimum {lo:.1f} is far below 0: not a PET in SUVbw", name)
    if hi > SUV_MAX_PLAUSIBLE:
        raise InputError(f"maximum {hi:.4g} is implausible for SUVbw (> {SUV_MAX_PLAUSIBLE:.0f}); "
                         "this looks like activity concentration (Bq/mL): convert it to SUVbw "
                         "first (petdiffusion suv)", name)
    if hi <= 0:
        raise InputError("the PET is empty (no positive voxel)", name)


def check_ct(img: sitk.Image, name: str = "--ct") -> None:
    arr = sitk.GetArrayViewFromImage(img)
    if not np.all(np.isfinite(arr)):
        raise InputError("the CT holds NaN or infinite voxels", name)
    if float(arr.min()) > -300.0 and float(arr.max()) < 200.0:
        raise InputError(f"values {float(arr.min()):.1f}..{float(arr.max()):.1f} do not look like a "
                         "CT in HU (no air near -1000 HU); is this a PET?", name)


def check_size(work: sitk.Image, context: int, name: str = "--pet") -> None:
    x, y, z = work.GetSize()
    sp = work.GetSpacing()
    if min(x, y) < MIN_INPLANE_VOXELS or z < 2 * context + 1:
        raise InputError(
            f"volume too small for the network: {x}x{y}x{z} voxels at the model's working spacing "
            f"{sp[0]:.1f}x{sp[1]:.1f}x{sp[2]:.1f} mm; needs at least {MIN_INPLANE_VOXELS} voxels "
            f"({MIN_INPLANE_VOXELS * sp[0]:.0f} mm) in-plane and {2 * context + 1} slices", name)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def load_model(model: str | Path | None, device) -> tuple[dict, dict]:
    from PETDiffusionLib.models.registry import load_model_folder
    nets, card = load_model_folder(model or MODEL_ID, device)
    if card.get("task") != SPEC.id:
        raise ModelError(f"{model or MODEL_ID}: the model is for task {card.get('task')!r}, "
                         f"not {SPEC.id!r}")
    for k in ("denoiser", "revision", "segmenter"):
        if k not in nets:
            raise ModelError(f"{model or MODEL_ID}: the model card lacks the network {k!r}")
    return nets, card


def _pad_to(arr: np.ndarray, mult: int, value: float) -> tuple[np.ndarray, tuple[int, int]]:
    z, y, x = arr.shape
    py, px = (-y) % mult, (-x) % mult
    return np.pad(arr, ((0, 0), (0, py), (0, px)), constant_values=value), (y, x)


def _body_box(suv: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    """In-plane bounding box of the body (SUV above 5 % of the 99th percentile) plus a margin."""
    mip = suv.max(0)
    thr = 0.05 * max(float(np.percentile(mip, 99)), 1e-6)
    ys, xs = np.nonzero(mip > thr)
    if len(ys) == 0:
        return slice(0, suv.shape[1]), slice(0, suv.shape[2])
    return (slice(max(0, ys.min() - margin), min(suv.shape[1], ys.max() + margin + 1)),
            slice(max(0, xs.min() - margin), min(suv.shape[2], xs.max() + margin + 1)))


def card_defaults(card: dict) -> dict:
    d = card.get("inference", {})
    return {"steps": int(d.get("steps", 10)), "start_fraction": float(d.get("start_fraction", 1.0)),
            "sampler": d.get("sampler", "ddim"), "slice_batch": int(d.get("slice_batch", 32)),
            "lesion_threshold": float(d.get("lesion_threshold", LESION_PROB_THRESHOLD))}


class ClippedEpsilon(torch.nn.Module):
    """Wraps an epsilon-predicting denoiser so that its implied x0 stays in [-1, 1].

    The diffusion works on SUV mapped to [-1, 1]; clipping the x0 estimate to that range at every
    step is the DDPM practice for data in [-1, 1] (Ho et al. 2020, sampling with clipped x0). It
    matters for an epsilon network near t = T, where alpha-bar_T of the cosine schedule is ~4e-8
    and x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) multiplies any error in eps by ~5000.
    """

    def __init__(self, net: torch.nn.Module, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("ab", alphas_cumprod.float().clone(), persistent=False)

    def forward(self, inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.net(inp, t)
        x = inp[:, :1]
        ab = self.ab.to(x.device)[t.long()].view(-1, 1, 1, 1)
        a, s = ab.sqrt(), (1 - ab).clamp_min(1e-12).sqrt()
        x0 = ((x - s * eps) / a).clamp(-1.0, 1.0)
        return (x - a * x0) / s


@torch.no_grad()
def denoise_segment_arrays(low: np.ndarray, ct: np.ndarray | None, nets: dict, card: dict,
                           steps: int, sampler: str, samples: int, seed: int,
                           start_fraction: float, progress=None, device="cpu",
                           keep_hc: bool = False) -> dict[str, np.ndarray]:
    """The network part on arrays at the working grid ([Z,Y,X], SUV and HU).

    Returns {"suv": denoised (revised) SUV, "std": per-voxel std over samples (or None),
    "lesion_prob", "organs"} and, with ``keep_hc``, "suv_hc" (the diffusion output before revision).
    """
    from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion
    from PETDiffusionLib.diffusion.windows import slices_25d
    from PETDiffusionLib.networks.amdiff import SUVNormalisation, segmenter_input
    den, rev, seg = nets["denoiser"], nets["revision"], nets["segmenter"]
    norm = SUVNormalisation(card.get("preprocessing", {}).get("suv_cutoff", 20.0))
    dcfg = card.get("diffusion", {})
    diffusion = ConditionalDiffusion(int(dcfg.get("num_train_timesteps", 250)),
                                     dcfg.get("schedule", "cosine"),
                                     dcfg.get("prediction", "epsilon"))
    k = den.context
    den = ClippedEpsilon(den, diffusion.alphas_cumprod)
    ys, xs = _body_box(low)
    low_c = low[:, ys, xs]
    ct_c = None if ct is None else ct[:, ys, xs]
    div = max(den.net.divisor, seg.divisor)
    low_p, (h, w) = _pad_to(low_c, div, 0.0)
    ct_p = None if ct_c is None else _pad_to(ct_c, div, CT_AIR_HU)[0]
    low_t = torch.from_numpy(low_p.astype(np.float32)).to(device)
    cond_all = slices_25d(norm.to_x(low_t), k)                     # [Z, 2k+1, H, W]
    u_lc_all = norm.to_u(low_t)[:, None]                           # [Z, 1, H, W]
    ct_all = None if ct_p is None else torch.from_numpy(ct_p.astype(np.float32)).to(device)[:, None]
    z_n = low_t.shape[0]
    batch = card_defaults(card)["slice_batch"]
    full = start_fraction >= 1.0
    out_suv, out_std, out_hc, out_les, out_org = [], [], [], [], []
    n_batches = math.ceil(z_n / batch)
    for bi, z0 in enumerate(range(0, z_n, batch)):
        zs = slice(z0, min(z_n, z0 + batch))
        cond, u_lc = cond_all[zs], u_lc_all[zs]

        def prog(f, bi=bi):
            if progress is not None:
                progress(0.9 * (bi + f) / n_batches)
        res = diffusion.sample(den, cond, steps=steps, sampler=sampler, seed=seed + 7919 * bi,
                               n_samples=samples,
                               start_image=None if full else cond[:, k:k + 1],
                               start_fraction=None if full else start_fraction, progress=prog)
        suvs = []
        for s in res.samples:                                      # each [B, 1, H, W]
            suvs.append(norm.u_to_suv(rev(norm.x_to_u(s), u_lc)))
        suv_stack = torch.stack(suvs)
        suv_mean = suv_stack.mean(0)
        out_suv.append(suv_mean[:, 0])
        out_std.append(suv_stack.std(0, unbiased=False)[:, 0])
        if keep_hc:
            out_hc.append(norm.x_to_suv(res.mean)[:, 0])
        x_seg = segmenter_input(norm.to_u(suv_mean), u_lc,
                                None if ct_all is None else ct_all[zs], seg.use_ct)
        les_logits, org_logits = seg(x_seg)
        out_les.append(torch.softmax(les_logits, 1)[:, 1])
        out_org.append(org_logits.argmax(1))
    if progress is not None:
        progress(0.95)

    def back(parts, fill, dtype):
        a = torch.cat(parts).cpu().numpy()[:, :h, :w].astype(dtype)
        full_a = np.full(low.shape, fill, dtype=dtype)
        full_a[:, ys, xs] = a
        return full_a
    out = {"suv": back(out_suv, 0.0, np.float32),
           "std": back(out_std, 0.0, np.float32) if samples > 1 else None,
           "lesion_prob": back(out_les, 0.0, np.float32),
           "organs": back(out_org, 0, np.uint8)}
    # outside the body box the input is (near) zero: keep the input there
    mask = np.ones(low.shape, bool)
    mask[:, ys, xs] = False
    out["suv"][mask] = np.clip(low[mask], 0, None)
    if keep_hc:
        out["suv_hc"] = back(out_hc, 0.0, np.float32)
    return out


def lesion_mask_from_prob(prob: np.ndarray, threshold: float, min_ml: float,
                          voxel_ml: float) -> np.ndarray:
    """Threshold the lesion probability; drop 18-connected components smaller than ``min_ml``."""
    from PETDiffusionLib.quant.lesions import label_lesions
    mask = prob >= threshold
    if min_ml <= 0 or not mask.any():
        return mask.astype(np.uint8)
    lab, n = label_lesions(mask)
    sizes = np.bincount(lab.ravel(), minlength=n + 1) * voxel_ml
    keep = sizes >= min_ml
    keep[0] = False
    return keep[lab].astype(np.uint8)


def to_working_grid(img: sitk.Image, card: dict) -> sitk.Image:
    spacing = tuple(float(s) for s in card.get("preprocessing", {}).get("spacing_mm", (4.0, 4.0, 5.0)))
    oriented = sitk.DICOMOrient(img, "LPS")
    return resample_to_spacing(oriented, spacing)


def denoise_segment_image(pet: sitk.Image, ct: sitk.Image | None, nets: dict, card: dict,
                          params: dict, progress=None, device="cpu", keep_hc: bool = False
                          ) -> dict[str, sitk.Image]:
    """The whole image-level pipeline: checks, working grid, networks, back onto ``pet``'s grid."""
    from PETDiffusionLib.networks.amdiff import ORGAN_CLASSES
    check_pet(pet)
    if ct is not None:
        check_ct(ct)
    defaults = card_defaults(card)
    steps = int(params.get("steps") or defaults["steps"])
    start_fraction = float(params.get("start_fraction") or defaults["start_fraction"])
    sampler = params.get("sampler") or defaults["sampler"]
    work = to_working_grid(pet, card)
    check_size(work, nets["denoiser"].context)
    low = np.clip(sitk.GetArrayFromImage(work).astype(np.float32), 0, None)
    ct_arr = None
    if ct is not None:
        ct_w = sitk.Resample(ct, work, sitk.Transform(), sitk.sitkLinear, CT_AIR_HU, sitk.sitkFloat32)
        ct_arr = sitk.GetArrayFromImage(ct_w)
    res = denoise_segment_arrays(low, ct_arr, nets, card, steps, sampler,
                                 int(params.get("samples", 1)), int(params.get("seed", 0)),
                                 start_fraction, progress, device, keep_hc)
    voxel_ml = float(np.prod(work.GetSpacing())) / 1000.0
    threshold = float(params.get("lesion_threshold") or defaults["lesion_threshold"])
    les = lesion_mask_from_prob(res["lesion_prob"], threshold,
                                float(params.get("lesion_min_ml", 0.2)), voxel_ml)
    out = {
        "pet_denoised": resample_to(array_and_image(res["suv"], work), pet),
        "lesions": resample_to(array_and_image(les, work), pet, is_label=True),
        "organs": resample_to(array_and_image(res["organs"], work), pet, is_label=True),
    }
    out["lesions"] = sitk.Cast(out["lesions"], sitk.sitkUInt8)
    out["organs"] = sitk.Cast(out["organs"], sitk.sitkUInt8)
    if res["std"] is not None:
        out["uncertainty"] = resample_to(array_and_image(res["std"], work), pet)
    if keep_hc:
        out["pet_hc"] = resample_to(array_and_image(res["suv_hc"], work), pet)
        out["lesion_prob"] = resample_to(array_and_image(res["lesion_prob"].astype(np.float32),
                                                         work), pet)
    out["_info"] = {"steps": steps, "sampler": sampler, "start_fraction": start_fraction,
                    "lesion_threshold": threshold,
                    "working_spacing_mm": list(work.GetSpacing()),
                    "working_size": list(work.GetSize()),
                    "organ_labels": {i: n for i, n in enumerate(ORGAN_CLASSES) if i > 0}}
    return out


# --------------------------------------------------------------------------------------------
# Task entry point
# --------------------------------------------------------------------------------------------
def run(images: dict[str, sitk.Image], params: dict, ctx: RunContext) -> dict[str, Path]:
    from PETDiffusionLib.report.pdf import make_report
    t0 = time.monotonic()
    progress = ctx.progress
    pet, ct = images["pet"], images.get("ct")
    try:
        check_pet(pet, ctx.input_paths.get("pet", "--pet"))
        if ct is not None:
            check_ct(ct, ctx.input_paths.get("ct", "--ct"))
    except InputError:
        raise
    progress.update("load model", 0.02)
    nets, card = load_model(ctx.model_path, ctx.device)
    sub = progress.sub(0.05, 0.85, "denoise and segment")
    res = denoise_segment_image(pet, ct, nets, card, params, sub, ctx.device)
    info = res.pop("_info")
    out = ctx.out_dir
    written: dict[str, Path] = {}
    progress.update("write", 0.86)
    written["pet_denoised"] = write_image(res["pet_denoised"], out / "pet_denoised.nii.gz",
                                          units="SUVbw", synthetic=True,
                                          description="AMDiff denoised PET, research use")
    written["lesions"] = write_image(res["lesions"], out / "lesions.nii.gz", units="label")
    written["organs"] = write_image(res["organs"], out / "organs.nii.gz", units="label")
    if "uncertainty" in res:
        written["uncertainty"] = write_image(res["uncertainty"], out / "uncertainty.nii.gz",
                                             units="SUVbw", synthetic=True)
    progress.update("report", 0.9)
    organ_names = {int(k): v for k, v in info["organ_labels"].items()}
    extra = {"count level": "low-count input", "sampler": info["sampler"],
             "steps": info["steps"], "start fraction": info["start_fraction"],
             "lesion threshold": info["lesion_threshold"],
             "samples": int(params.get("samples", 1)), "seed": int(params.get("seed", 0)),
             "working spacing (mm)": " x ".join(f"{s:.2f}" for s in info["working_spacing_mm"]),
             "CT used": ct is not None,
             "note": "denoised PET is a model output: research use, not for diagnosis"}
    rep = make_report(out, res["pet_denoised"], res["lesions"], res["organs"], organ_names,
                      task=SPEC.id, model_id=card["id"], model_version=card["version"],
                      synthetic=True, extra=extra)
    for key in ("lesions_csv", "organs_csv", "summary_json", "report_pdf", "report_json"):
        if key in rep:
            written[key] = rep[key]
    ctx.manifest_extra.update({
        "model_id": card["id"], "model_version": card["version"],
        "model_sha256": card["weights_sha256"],
        "lesion_labels": {1: "lesion"}, "organ_labels": organ_names,
        "inference": info, "synthetic_outputs": ["pet_denoised", "uncertainty"],
        "note": "pet_denoised is synthetic (AMDiff model output): research use, not for diagnosis",
        "task_seconds": round(time.monotonic() - t0, 2)})
    return written


# --------------------------------------------------------------------------------------------
# Bench and demo
# --------------------------------------------------------------------------------------------
def bench(args=None) -> str:
    """A 128x128x160 low-count volume end to end with default settings; returns the seconds."""
    import tempfile
    from PETDiffusionLib.progress import Progress
    from PETDiffusionLib.tasks.runner import run_task
    tmp = Path(tempfile.mkdtemp(prefix="bench-ds-"))
    pet = _bench_volume()
    write_image(pet, tmp / "pet.nii.gz", units="SUVbw")
    t0 = time.monotonic()
    run_task(SPEC.id, {"pet": str(tmp / "pet.nii.gz")}, {}, tmp / "out", Progress("none"))
    dt = time.monotonic() - t0
    return (f"denoise-segment: 128x128x160 end to end (denoise, segment, quantify, report): "
            f"{dt:.1f} s with {torch.get_num_threads()} torch thread(s) (target < 180 s)")


def _bench_volume() -> sitk.Image:
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


def demo(out_dir: str | Path) -> list[str]:
    """Simulate one small low-count (10 %) phantom and run the task on it, ending with the report."""
    from PETDiffusionLib.progress import Progress
    from PETDiffusionLib.tasks.runner import run_task
    out_dir = Path(out_dir)
    case = _simulate_demo_case(out_dir / "phantom")
    t0 = time.monotonic()
    manifest = run_task(SPEC.id, {"pet": str(case / "pet_low_10.nii.gz"),
                                  "ct": str(case / "ct.nii.gz")},
                        {}, out_dir / "denoise_segment", Progress("none"))
    dt = time.monotonic() - t0
    summary = json.loads((manifest.parent / "summary.json").read_text())
    lines = [f"phantom case: {case} (10 % counts, seed {DEMO_SEED})",
             f"denoise-segment ran in {dt:.0f} s: {summary.get('lesion_count')} lesion(s) found, "
             f"TMTV {summary.get('tmtv_ml') or 0:.1f} mL, "
             f"TTLG {summary.get('ttlg') or 0:.1f} (SUVbw x mL)",
             f"manifest: {manifest}", f"report: {manifest.parent / 'report.pdf'}"]
    return lines


DEMO_SEED = 424242   # a seed no training or held-out cohort uses (train 1000, held-out 90000)


def _simulate_demo_case(folder: Path) -> Path:
    from PETDiffusionLib.phantom.case import PhantomConfig, generate_cohort
    # a coarse 64 x 64 x 80 simulation (8 mm x 10 mm voxels) keeps the demo quick; the task
    # resamples it to the model's working spacing
    paths = generate_cohort(folder, 1, DEMO_SEED, PhantomConfig(size=64, slices=80, images=("low",)))
    return paths[0]


# --------------------------------------------------------------------------------------------
# Evaluation (issue 6)
# --------------------------------------------------------------------------------------------
def add_evaluate_args(parser) -> None:
    parser.add_argument("--tune-cohort", default="cohorts/train",
                        help="cohort whose --tune-cases cases (kept out of training) tune the "
                             "Gaussian baseline's width")
    parser.add_argument("--tune-cases", default="0,1",
                        help="case indices in --tune-cohort (the model card's validation cases)")
    parser.add_argument("--fractions", default="10,5", help="count levels in %% (pet_low_<f>)")
    parser.add_argument("--max-cases", type=int, default=0, help="0 = every case")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--start-fraction", type=float, default=0.0)
    parser.add_argument("--no-ct", action="store_true", help="evaluate without the CT input")
    parser.add_argument("--split", default=None,
                        help="only the cases whose case.json 'split' is this (real cohorts: "
                             "validation)")
    parser.add_argument("--lesion-threshold", type=float, default=0.0,
                        help="0 = the model card's calibrated value")


EVAL_CLASSES = ("lesion", "liver", "lung", "bone", "kidney", "spleen", "aorta", "muscle")
GAUSS_SIGMAS_MM = (0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)   # candidate widths (sigma, mm)
ORACLE_FRACTION = 0.41          # PHYSICS.md Sec. 2: relative 41 % of each lesion's SUVmax
FIXED_SUV_THRESHOLD = 2.5       # PHYSICS.md Sec. 2: fixed SUV >= 2.5
ORACLE_MARGIN_MM = 10.0         # VOI around each true lesion for the oracle-seeded 41 % baseline
BODY_HU = -500.0                # PHYSICS.md Sec. 3: between air (-1000) and lung/fat: body outline
BODY_SUV = 0.05                 # without CT or organ labels: SUV above this is body (real crops)


def _gauss(arr: np.ndarray, sigma_mm: float, spacing_xyz) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    if sigma_mm <= 0:
        return arr
    sig = [sigma_mm / spacing_xyz[2], sigma_mm / spacing_xyz[1], sigma_mm / spacing_xyz[0]]
    return gaussian_filter(arr, sig)


def _nrmse(ref: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    from PETDiffusionLib.quant.metrics import nrmse
    if mask is not None and not mask.any():
        return None
    try:
        return float(nrmse(ref, test, mask))
    except InputError:
        return None


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    sa, sb = int(a.sum()), int(b.sum())
    if sa + sb == 0:
        return None
    return 2.0 * float(np.logical_and(a, b).sum()) / (sa + sb)


def oracle_41(suv: np.ndarray, lesion_inst: np.ndarray, spacing_xyz) -> np.ndarray:
    """41 % of SUVmax in a VOI around each true lesion (its box grown by ORACLE_MARGIN_MM), keeping
    the connected part that holds the VOI's maximum: an oracle-seeded reference."""
    from scipy.ndimage import find_objects, label
    out = np.zeros(suv.shape, bool)
    m = [int(math.ceil(ORACLE_MARGIN_MM / s)) for s in (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])]
    for sl in find_objects(lesion_inst.astype(np.int64)):
        if sl is None:
            continue
        box = tuple(slice(max(0, s.start - mm), min(n, s.stop + mm))
                    for s, mm, n in zip(sl, m, suv.shape))
        voi = suv[box]
        thr = ORACLE_FRACTION * float(voi.max())
        lab, _ = label(voi >= thr)
        peak = np.unravel_index(int(np.argmax(voi)), voi.shape)
        out[box] |= lab == lab[peak]
    return out


def _pct_err(test: float, ref: float) -> float | None:
    return None if ref <= 0 else 100.0 * (test - ref) / ref


def _median_iqr(vals) -> dict:
    v = np.array([x for x in vals if x is not None and np.isfinite(x)], float)
    if len(v) == 0:
        return {"median": None, "iqr": None, "n": 0}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": round(float(med), 2), "iqr": [round(float(q1), 2), round(float(q3), 2)],
            "n": int(len(v))}


def _mean_sd(vals) -> dict:
    v = np.array([x for x in vals if x is not None and np.isfinite(x)], float)
    if len(v) == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)) if len(v) > 1
                                                           else 0.0, 4), "n": int(len(v))}


def _r2(x, y) -> float | None:
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    if len(pairs) < 3:
        return None
    a, b = np.array(pairs, float).T
    if a.std() == 0 or b.std() == 0:
        return None
    return round(float(np.corrcoef(a, b)[0, 1] ** 2), 4)


def tune_gaussian(cases: list[Path], fractions: list[int]) -> dict[int, float]:
    """Gaussian width (sigma, mm) with the lowest mean whole-image NRMSE on the given cases."""
    best = {}
    data = []
    for c in cases:
        ref_img = sitk.ReadImage(str(c / "suv_true.nii.gz"))
        ref = sitk.GetArrayFromImage(ref_img).astype(np.float32)
        lows = {f: sitk.GetArrayFromImage(sitk.ReadImage(str(c / f"pet_low_{f}.nii.gz")))
                .astype(np.float32) for f in fractions}
        data.append((ref, lows, ref_img.GetSpacing()))
    for f in fractions:
        scores = {s: float(np.mean([_nrmse(ref, _gauss(lows[f], s, sp)) for ref, lows, sp in data]))
                  for s in GAUSS_SIGMAS_MM}
        best[f] = min(scores, key=scores.get)
        log.info("Gaussian baseline at %d %%: NRMSE by sigma %s -> %.1f mm", f,
                 {k: round(v, 4) for k, v in scores.items()}, best[f])
    return best


def evaluate_case(case: Path, fraction: int, sigma_mm: float, nets: dict, card: dict,
                  params: dict, use_ct: bool) -> dict:
    from PETDiffusionLib.networks.amdiff import ORGAN_CLASSES
    from PETDiffusionLib.training.recipes.denoise_segment import organ_class_lut
    info = json.loads((case / "case.json").read_text())
    ref_img = sitk.ReadImage(str(case / "suv_true.nii.gz"))
    sp = ref_img.GetSpacing()
    vox_ml = float(np.prod(sp)) / 1000.0
    ref = sitk.GetArrayFromImage(ref_img).astype(np.float32)
    low_img = sitk.ReadImage(str(case / f"pet_low_{fraction}.nii.gz"))
    low = sitk.GetArrayFromImage(low_img).astype(np.float32)
    organs_raw = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "organs.nii.gz"))).astype(np.int64)
    lut = organ_class_lut(info.get("organ_labels", {}))
    organs = lut[np.clip(organs_raw, 0, len(lut) - 1)]
    les_inst = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lesions.nii.gz")))
    les = les_inst > 0
    ct_img = sitk.ReadImage(str(case / "ct.nii.gz"), sitk.sitkFloat32) \
        if use_ct and (case / "ct.nii.gz").is_file() else None
    gauss = _gauss(low, sigma_mm, sp)
    t0 = time.monotonic()
    res = denoise_segment_image(low_img, ct_img, nets, card, params, keep_hc=True)
    seconds = time.monotonic() - t0
    model = sitk.GetArrayFromImage(res["pet_denoised"]).astype(np.float32)
    model_hc = sitk.GetArrayFromImage(res["pet_hc"]).astype(np.float32)
    m_les = sitk.GetArrayFromImage(res["lesions"]) > 0
    m_org = sitk.GetArrayFromImage(res["organs"])
    annotated = bool(info.get("organs_annotated", True))  # False: real PET, GTV only
    masks = {"lesion": les}
    for name in EVAL_CLASSES[1:]:
        masks[name] = organs == ORGAN_CLASSES.index(name) if annotated else None
    nr = {}
    for method, img in (("input", low), ("gaussian", gauss), ("model", model),
                        ("model_diffusion_only", model_hc)):
        nr[method] = {"whole": _nrmse(ref, img)}
        for name, m in masks.items():
            nr[method][name] = None if m is None else _nrmse(ref, img, m)
    dice = {"model": {"lesion": _dice(m_les, les)}}
    for name in EVAL_CLASSES[1:]:
        dice["model"][name] = None if masks[name] is None else \
            _dice(m_org == ORGAN_CLASSES.index(name), masks[name])
    if annotated:
        body = organs_raw > 0
    elif ct_img is not None:
        body = sitk.GetArrayFromImage(ct_img) > BODY_HU
    else:
        body = ref > BODY_SUV
    base25 = (gauss >= FIXED_SUV_THRESHOLD) & body
    base41 = oracle_41(gauss, les_inst, sp)
    dice["suv2.5_gaussian"] = {"lesion": _dice(base25, les)}
    dice["oracle41_gaussian"] = {"lesion": _dice(base41, les)}

    def mtv_tlg(suv, mask):
        return float(mask.sum()) * vox_ml, float(suv[mask].sum()) * vox_ml

    gt_mtv, gt_tlg = mtv_tlg(ref, les)
    quant = {"truth": {"mtv_ml": gt_mtv, "tlg": gt_tlg}}
    for method, (suv, mask) in {"model": (model, m_les), "suv2.5_gaussian": (gauss, base25),
                                "oracle41_gaussian": (gauss, base41)}.items():
        mtv, tlg = mtv_tlg(suv, mask)
        quant[method] = {"mtv_ml": mtv, "tlg": tlg, "mtv_err_pct": _pct_err(mtv, gt_mtv),
                         "tlg_err_pct": _pct_err(tlg, gt_tlg)}
    organ_bias = {}
    for name in ("liver", "aorta") if annotated else ():
        k = ORGAN_CLASSES.index(name)
        gt_m, pr_m = organs == k, m_org == k
        if gt_m.any() and pr_m.any():
            organ_bias[name] = _pct_err(float(model[pr_m].mean()), float(ref[gt_m].mean()))
    gtv_max = float(ref[les].max()) if les.any() else None
    suvmax = {"truth": gtv_max,
              "input": float(low[les].max()) if les.any() else None,
              "model": float(model[les].max()) if les.any() else None}
    return {"case": case.name, "fraction": fraction, "seconds": round(seconds, 2), "nrmse": nr,
            "suvmax_in_true_lesions": suvmax, "lesion_threshold": res["_info"]["lesion_threshold"],
            "dice": dice, "quant": quant, "organ_suvmean_bias_pct": organ_bias,
            "lesion_count": int(len(np.unique(les_inst)) - 1)}


def summarise(rows: list[dict], fractions: list[int]) -> dict:
    out: dict = {}
    for f in fractions:
        rs = [r for r in rows if r["fraction"] == f]
        if not rs:
            continue
        s: dict = {"cases": len(rs)}
        s["nrmse"] = {m: {c: _mean_sd([r["nrmse"][m][c] for r in rs])
                          for c in ("whole",) + EVAL_CLASSES}
                      for m in ("input", "gaussian", "model", "model_diffusion_only")}
        s["dice"] = {"model": {c: _mean_sd([r["dice"]["model"][c] for r in rs]) for c in EVAL_CLASSES},
                     "suv2.5_gaussian": {"lesion": _mean_sd([r["dice"]["suv2.5_gaussian"]["lesion"]
                                                             for r in rs])},
                     "oracle41_gaussian": {"lesion": _mean_sd(
                         [r["dice"]["oracle41_gaussian"]["lesion"] for r in rs])}}
        s["mtv_tlg_error_pct"] = {m: {"mtv": _median_iqr([r["quant"][m]["mtv_err_pct"] for r in rs]),
                                      "tlg": _median_iqr([r["quant"][m]["tlg_err_pct"] for r in rs])}
                                  for m in ("model", "suv2.5_gaussian", "oracle41_gaussian")}
        s["tlg_r2"] = {m: _r2([r["quant"]["truth"]["tlg"] for r in rs],
                              [r["quant"][m]["tlg"] for r in rs])
                       for m in ("model", "suv2.5_gaussian", "oracle41_gaussian")}
        s["organ_suvmean_bias_pct"] = {o: _median_iqr([r["organ_suvmean_bias_pct"].get(o) for r in rs])
                                       for o in ("liver", "aorta")}
        s["suvmax_error_pct"] = {m: _median_iqr([
            _pct_err(r["suvmax_in_true_lesions"][m], r["suvmax_in_true_lesions"]["truth"])
            for r in rs if r["suvmax_in_true_lesions"]["truth"]]) for m in ("input", "model")}
        s["seconds_per_volume"] = _mean_sd([r["seconds"] for r in rs])
        out[str(f)] = s
    return out


def format_table(summary: dict) -> str:
    lines = []
    for f, s in summary.items():
        lines.append(f"== {f} % counts, {s['cases']} cases ==")
        head = f"{'NRMSE':22s}" + "".join(f"{c:>9s}" for c in ("whole",) + EVAL_CLASSES)
        lines.append(head)
        for m, per in s["nrmse"].items():
            lines.append(f"{m:22s}" + "".join(
                f"{per[c]['mean']:9.4f}" if per[c]["mean"] is not None else f"{'-':>9s}"
                for c in ("whole",) + EVAL_CLASSES))
        lines.append(f"{'Dice':22s}" + "".join(f"{c:>9s}" for c in EVAL_CLASSES))
        d = s["dice"]["model"]
        lines.append(f"{'model':22s}" + "".join(
            f"{d[c]['mean']:9.3f}" if d[c]["mean"] is not None else f"{'-':>9s}" for c in EVAL_CLASSES))
        for m in ("suv2.5_gaussian", "oracle41_gaussian"):
            v = s["dice"][m]["lesion"]["mean"]
            lines.append(f"{m:22s}" + (f"{v:9.3f}" if v is not None else f"{'-':>9s}"))
        lines.append("MTV / TLG error % (median [IQR]); TLG R^2")
        for m, e in s["mtv_tlg_error_pct"].items():
            lines.append(f"  {m:20s} MTV {e['mtv']['median']} {e['mtv']['iqr']}  TLG "
                         f"{e['tlg']['median']} {e['tlg']['iqr']}  R2 {s['tlg_r2'][m]}")
        for o, b in s["organ_suvmean_bias_pct"].items():
            lines.append(f"  {o} SUVmean bias % (model): median {b['median']} IQR {b['iqr']}")
        for m, e in s["suvmax_error_pct"].items():
            lines.append(f"  SUVmax in true lesions, {m} vs truth: median {e['median']} % IQR {e['iqr']}")
        lines.append(f"  seconds per volume: {s['seconds_per_volume']['mean']} "
                     f"(sd {s['seconds_per_volume']['sd']})")
    return "\n".join(lines)


def evaluate(args) -> int:
    """``petdiffusion evaluate denoise-segment --cohort DIR``: table on stdout, JSON on disk."""
    from PETDiffusionLib.io.atomic import atomic_write_text
    from PETDiffusionLib.training.recipes.denoise_segment import list_cases
    cohort = Path(args.cohort)
    cases = list_cases(cohort)
    split = getattr(args, "split", None)
    if split:
        cases = [c for c in cases if json.loads((c / "case.json").read_text()).get("split") == split]
        if not cases:
            raise InputError(f"no case with split {split!r}", cohort)
    if getattr(args, "max_cases", 0):
        cases = cases[:args.max_cases]
    fractions = [int(x) for x in str(getattr(args, "fractions", "10,5")).split(",") if x.strip()]
    for c in cases:
        for f in fractions:
            if not (c / f"pet_low_{f}.nii.gz").is_file():
                raise InputError(f"the cohort has no pet_low_{f}.nii.gz", c)
    nets, card = load_model(getattr(args, "model", None), "cpu")
    tune_idx = {int(x) for x in str(getattr(args, "tune_cases", "0,1")).split(",") if x.strip()}
    tune = [c for c in list_cases(getattr(args, "tune_cohort", "cohorts/train"))
            if int(c.name.split("_")[-1]) in tune_idx]
    if not tune:
        raise InputError(f"no cases {sorted(tune_idx)} to tune the Gaussian baseline on",
                         getattr(args, "tune_cohort", "cohorts/train"))
    sigmas = tune_gaussian(tune, fractions)
    params = {"steps": int(getattr(args, "steps", 0) or 0),
              "start_fraction": float(getattr(args, "start_fraction", 0.0) or 0.0),
              "lesion_threshold": float(getattr(args, "lesion_threshold", 0.0) or 0.0),
              "samples": 1, "seed": 0}
    use_ct = not getattr(args, "no_ct", False)
    rows = []
    for c in cases:
        for f in fractions:
            r = evaluate_case(c, f, sigmas[f], nets, card, params, use_ct)
            log.info("%s at %d %%: NRMSE model %.4f gauss %.4f input %.4f, lesion Dice %s, %.1f s",
                     c.name, f, r["nrmse"]["model"]["whole"], r["nrmse"]["gaussian"]["whole"],
                     r["nrmse"]["input"]["whole"], r["dice"]["model"]["lesion"], r["seconds"])
            rows.append(r)
    summary = summarise(rows, fractions)
    result = {"task": SPEC.id, "model_id": card["id"], "model_version": card["version"],
              "cohort": str(cohort), "split": split, "cases": [c.name for c in cases],
              "ct_used": use_ct, "lesion_threshold": rows[0]["lesion_threshold"] if rows else None,
              "gaussian_sigma_mm": {str(k): v for k, v in sigmas.items()},
              "tuned_on": [str(c) for c in tune], "parameters": params,
              "torch_threads": torch.get_num_threads(), "summary": summary, "per_case": rows}
    out = Path(args.out) if getattr(args, "out", None) else cohort / "evaluation_denoise_segment.json"
    atomic_write_text(out, json.dumps(result, indent=1, default=float))
    return f"{format_table(summary)}\nwrote {out}"
