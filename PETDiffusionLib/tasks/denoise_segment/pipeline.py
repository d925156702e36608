"""The denoise-segment pipeline (AMDiff): checks, model, prediction, tables and report.

Xia et al., "Anatomically and metabolically informed diffusion for unified denoising and
segmentation in low-count PET imaging" (seed: ``../shared/seeds/AMDiff_denoise_segment.txt``).

Steps (paper section in brackets):

1. Check the PET (SUVbw by range, no NaN, big enough) and the optional CT (HU by range).
2. Reorient to LPS and resample to the model's working spacing (the model card's
   ``preprocessing.spacing_mm``); crop in-plane to the body's bounding box.
3. Conditional diffusion (Sec. 2.1.1, Eq. 4) in 2.5D slice batches: the low-count slice and its
   neighbours condition the network; optionally start from the low-count image noised to
   ``start_fraction`` of T (PHYSICS.md Sec. 6), N samples for an uncertainty map.
4. Denoising revision (Sec. 2.2.1, Eq. 6): full-range map P_HCR with a skip from the input for SUVs
   above the diffusion cut-off; this is the denoised PET the task returns.
5. Dual-branch segmenter (Sec. 2.2.2, Eq. 8): lesions and organs.
6. Back onto the input's grid (:func:`predict`); quantification and report through the
   quant/report layer (:func:`report`).

The denoised PET is a model output: it is written with ``synthetic=True``; research use only.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.diffusion.ddpm import ClippedEpsilon, ConditionalDiffusion
from PETDiffusionLib.diffusion.windows import slices_25d
from PETDiffusionLib.errors import InputError, ModelError
from PETDiffusionLib.io.checks import check_ct_hu, check_suv_image
from PETDiffusionLib.io.images import array_and_image, resample_to, to_working_grid
from PETDiffusionLib.methods.amdiff.networks import ORGAN_CLASSES, SUVNormalisation, segmenter_input
from PETDiffusionLib.models.registry import load_model_folder
from PETDiffusionLib.physics.lowcount import body_outline
from PETDiffusionLib.quant.lesions import label_lesions
from PETDiffusionLib.quant.physiology import suppress_physiological
from PETDiffusionLib.report.pdf import make_report
from PETDiffusionLib.tasks.base import RunContext
from PETDiffusionLib.tasks.denoise_segment.guards import input_warnings
from PETDiffusionLib.tasks.denoise_segment.spec import (CT_AIR_HU, LESION_PROB_THRESHOLD,
                                                        MIN_INPLANE_VOXELS, MODEL_ID, SPEC)

log = logging.getLogger(__name__)

DEFAULT_SPACING_MM = (4.0, 4.0, 5.0)   # working grid when a card names none (the shipped cards')
ORGAN_NAMES = {i: n for i, n in enumerate(ORGAN_CLASSES) if i > 0}   # the segmenter's labels


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def check_pet(img: sitk.Image, name: str = "--pet") -> None:
    """Raise InputError naming ``name`` for NaNs, a CT or Bq/mL given as PET, or a tiny volume."""
    # the shared checks (io/checks.py), the same rules and messages as quantify and report
    check_suv_image(img, name)


def check_ct(img: sitk.Image, name: str = "--ct") -> None:
    check_ct_hu(img, name, require_air=False)  # the shared CT check (io/checks.py)


def check_size(work: sitk.Image, context: int, name: str = "--pet") -> None:
    x, y, z = work.GetSize()
    sp = work.GetSpacing()
    if min(x, y) < MIN_INPLANE_VOXELS or z < 2 * context + 1:
        raise InputError(
            f"volume too small for the network: {x}x{y}x{z} voxels at the model's working spacing "
            f"{sp[0]:.1f}x{sp[1]:.1f}x{sp[2]:.1f} mm; needs at least {MIN_INPLANE_VOXELS} voxels "
            f"({MIN_INPLANE_VOXELS * sp[0]:.0f} mm) in-plane and {2 * context + 1} slices", name)


def check_inputs(images: dict[str, sitk.Image], params: dict, ctx: RunContext) -> None:
    """The checks that need no model: the PET in SUVbw, the CT (if given) in HU."""
    check_pet(images["pet"], ctx.input_paths.get("pet", "--pet"))
    if images.get("ct") is not None:
        check_ct(images["ct"], ctx.input_paths.get("ct", "--ct"))


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class AMDiffModel(NamedTuple):
    """A loaded model folder: networks "denoiser", "revision", "segmenter" and the card."""
    nets: dict
    card: dict


def load_model(model_path: str | Path | None, device) -> AMDiffModel:
    """The model folder ``model_path`` (None: the shipped :data:`MODEL_ID`) on ``device``."""
    nets, card = load_model_folder(model_path or MODEL_ID, device, task=SPEC.id)
    for k in ("denoiser", "revision", "segmenter"):
        if k not in nets:
            raise ModelError(f"{model_path or MODEL_ID}: the model card lacks the network {k!r}")
    return AMDiffModel(nets, card)


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


def working_spacing(card: dict) -> tuple[float, float, float]:
    """The model's working spacing (x, y, z) in mm, from its card."""
    return tuple(float(s) for s in card.get("preprocessing", {}).get("spacing_mm", DEFAULT_SPACING_MM))


@torch.no_grad()
def denoise_segment_arrays(low: np.ndarray, ct: np.ndarray | None, nets: dict, card: dict,
                           steps: int, sampler: str, samples: int, seed: int,
                           start_fraction: float, progress=None, device="cpu",
                           keep_hc: bool = False) -> dict[str, np.ndarray]:
    """The network part on arrays at the working grid ([Z,Y,X], SUV and HU).

    Returns {"suv": denoised (revised) SUV, "std": per-voxel std over samples (or None),
    "lesion_prob", "organs"} and, with ``keep_hc``, "suv_hc" (the diffusion output before revision).
    """
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


def native_grid(card: dict) -> bool:
    """True when the card's denoiser runs on the input's own voxels (issue 13), the segmenter on
    ``preprocessing.spacing_mm``."""
    return card.get("preprocessing", {}).get("grid") == "native"


def _slice_batches(z_n: int, batch: int):
    return [slice(z0, min(z_n, z0 + batch)) for z0 in range(0, z_n, batch)]


@torch.no_grad()
def denoise_native_arrays(low: np.ndarray, nets: dict, card: dict, steps: int, sampler: str,
                          samples: int, seed: int, start_fraction: float, progress=None,
                          device="cpu", spacing_xyz=None) -> dict:
    """f_den + f_rev on the input's own grid ([Z,Y,X] SUV): {"suv", "std" (None for 1 sample)}.

    The network predicts x0 (card ``diffusion.prediction``); one DDIM step from t = T - 1 returns its
    posterior-mean estimate given the low-count slices, more steps draw sharper samples. With the
    card's ``inference.count_preserving`` (and ``spacing_xyz``), the output is scaled to the input's
    total in the body ("count_factor")."""
    den, rev = nets["denoiser"], nets["revision"]
    norm = SUVNormalisation(card.get("preprocessing", {}).get("suv_cutoff", 20.0))
    dcfg = card.get("diffusion", {})
    diffusion = ConditionalDiffusion(int(dcfg.get("num_train_timesteps", 250)),
                                     dcfg.get("schedule", "cosine"), dcfg.get("prediction", "sample"))
    net = den if diffusion.prediction != "epsilon" else ClippedEpsilon(den, diffusion.alphas_cumprod)
    k = den.context
    ys, xs = _body_box(low)
    low_p, (h, w) = _pad_to(low[:, ys, xs], den.divisor, 0.0)
    low_t = torch.from_numpy(low_p.astype(np.float32)).to(device)
    cond_all = slices_25d(norm.to_x(low_t), k)
    full = start_fraction >= 1.0
    out_suv, out_std = [], []
    batches = _slice_batches(low_t.shape[0], card_defaults(card)["slice_batch"])
    for bi, zs in enumerate(batches):
        cond = cond_all[zs]

        def prog(f, bi=bi):
            if progress is not None:
                progress((bi + f) / len(batches))
        res = diffusion.sample(net, cond, steps=steps, sampler=sampler, seed=seed + 7919 * bi,
                               n_samples=samples, start_image=None if full else cond[:, k:k + 1],
                               start_fraction=None if full else start_fraction, progress=prog)
        u_lc = norm.to_u(low_t[zs])[:, None]
        stack = torch.stack([norm.u_to_suv(rev(norm.x_to_u(x), u_lc)) for x in res.samples])
        out_suv.append(stack.mean(0)[:, 0])
        out_std.append(stack.std(0, unbiased=False)[:, 0])

    def back(parts, outside: np.ndarray):
        full_a = outside.astype(np.float32)
        full_a[:, ys, xs] = torch.cat(parts).cpu().numpy()[:, :h, :w]
        return full_a
    # outside the body box the input is (near) zero: the input there, no spread
    suv = back(out_suv, np.clip(low, 0, None))
    factor = 1.0
    if card.get("inference", {}).get("count_preserving", False) and spacing_xyz is not None:
        # the measured total activity in the body is what the counts determine (ML-EM keeps the
        # total, Shepp & Vardi 1982); a denoiser only redistributes it (PHYSICS.md §4.2)
        body = body_outline(low, spacing_xyz)
        total = float(suv[body].sum())
        if body.any() and total > 0:
            factor = float(np.clip(low[body].sum(), 0, None)) / total
            suv *= factor
    return {"suv": suv, "std": back(out_std, np.zeros_like(low)) if samples > 1 else None,
            "count_factor": factor}


@torch.no_grad()
def segment_arrays(suv: np.ndarray, low: np.ndarray, ct: np.ndarray | None, nets: dict,
                   card: dict, device="cpu") -> dict[str, np.ndarray]:
    """f_seg (Eq. 8) on the working grid: {"lesion_prob", "organs"} from the denoised and the
    low-count SUV (and the CT in HU when given)."""
    seg = nets["segmenter"]
    norm = SUVNormalisation(card.get("preprocessing", {}).get("suv_cutoff", 20.0))
    ys, xs = _body_box(low)
    suv_p, (h, w) = _pad_to(suv[:, ys, xs], seg.divisor, 0.0)
    low_p = _pad_to(low[:, ys, xs], seg.divisor, 0.0)[0]
    ct_p = None if ct is None else _pad_to(ct[:, ys, xs], seg.divisor, CT_AIR_HU)[0]
    les, org = [], []
    for zs in _slice_batches(suv_p.shape[0], card_defaults(card)["slice_batch"]):
        u = norm.to_u(torch.from_numpy(suv_p[zs].astype(np.float32)).to(device))[:, None]
        u_lc = norm.to_u(torch.from_numpy(low_p[zs].astype(np.float32)).to(device))[:, None]
        c = None if ct_p is None else torch.from_numpy(ct_p[zs].astype(np.float32)).to(device)[:, None]
        les_logits, org_logits = seg(segmenter_input(u, u_lc, c, seg.use_ct))
        les.append(torch.softmax(les_logits, 1)[:, 1])
        org.append(org_logits.argmax(1))
    prob = np.zeros(low.shape, np.float32)
    organs = np.zeros(low.shape, np.uint8)
    prob[:, ys, xs] = torch.cat(les).cpu().numpy()[:, :h, :w]
    organs[:, ys, xs] = torch.cat(org).cpu().numpy()[:, :h, :w].astype(np.uint8)
    return {"lesion_prob": prob, "organs": organs}


def lesion_mask_from_prob(prob: np.ndarray, threshold: float, min_ml: float,
                          voxel_ml: float) -> np.ndarray:
    """Threshold the lesion probability; drop 18-connected components smaller than ``min_ml``."""
    mask = prob >= threshold
    if min_ml <= 0 or not mask.any():
        return mask.astype(np.uint8)
    lab, n = label_lesions(mask)
    sizes = np.bincount(lab.ravel(), minlength=n + 1) * voxel_ml
    keep = sizes >= min_ml
    keep[0] = False
    return keep[lab].astype(np.uint8)


def denoise_segment_image(pet: sitk.Image, ct: sitk.Image | None, nets: dict, card: dict,
                          params: dict, progress=None, device="cpu", keep_hc: bool = False
                          ) -> dict[str, sitk.Image]:
    """The whole image-level pipeline: checks, working grid, networks, back onto ``pet``'s grid."""
    check_pet(pet)
    if ct is not None:
        check_ct(ct)
    defaults = card_defaults(card)
    steps = int(params.get("steps") or defaults["steps"])
    start_fraction = float(params.get("start_fraction") or defaults["start_fraction"])
    sampler = params.get("sampler") or defaults["sampler"]
    work = to_working_grid(pet, working_spacing(card))
    check_size(work, nets["denoiser"].context)
    low = np.clip(sitk.GetArrayFromImage(work).astype(np.float32), 0, None)
    ct_arr = None
    if ct is not None:
        ct_w = sitk.Resample(ct, work, sitk.Transform(), sitk.sitkLinear, CT_AIR_HU, sitk.sitkFloat32)
        ct_arr = sitk.GetArrayFromImage(ct_w)
    samples, seed = int(params.get("samples", 1)), int(params.get("seed", 0))
    native = native_grid(card)
    if native:
        # issue 13: f_den on the input's own voxels, f_seg on the working grid it was trained on
        nat = sitk.DICOMOrient(sitk.Cast(pet, sitk.sitkFloat32), "LPS")
        den = denoise_native_arrays(np.clip(sitk.GetArrayFromImage(nat), 0, None), nets, card,
                                    steps, sampler, samples, seed, start_fraction,
                                    None if progress is None else (lambda f: progress(0.8 * f)),
                                    device, nat.GetSpacing())
        den_img = array_and_image(den["suv"], nat)
        res = segment_arrays(sitk.GetArrayFromImage(resample_to(den_img, work)), low, ct_arr, nets,
                             card, device)
        if progress is not None:
            progress(0.95)
    else:
        res = denoise_segment_arrays(low, ct_arr, nets, card, steps, sampler, samples, seed,
                                     start_fraction, progress, device, keep_hc)
    voxel_ml = float(np.prod(work.GetSpacing())) / 1000.0
    threshold = float(params.get("lesion_threshold") or defaults["lesion_threshold"])
    les = lesion_mask_from_prob(res["lesion_prob"], threshold,
                                float(params.get("lesion_min_ml", 0.2)), voxel_ml)
    les_all, dropped = les, []   # physiological uptake is no lesion (quant/physiology.py)
    if not params.get("keep_physiological", False):
        suv_w = sitk.GetArrayFromImage(resample_to(den_img, work)) if native else res["suv"]
        les, dropped = suppress_physiological(les, suv_w, res["organs"], ORGAN_NAMES,
                                              work.GetSpacing(), ct_arr, work.GetOrigin())
    out = {
        "pet_denoised": (resample_to(den_img, pet) if native
                         else resample_to(array_and_image(res["suv"], work), pet)),
        "lesions": resample_to(array_and_image(les, work), pet, is_label=True),
        "organs": resample_to(array_and_image(res["organs"], work), pet, is_label=True),
    }
    out["lesions"] = sitk.Cast(out["lesions"], sitk.sitkUInt8)
    out["organs"] = sitk.Cast(out["organs"], sitk.sitkUInt8)
    if native and den["std"] is not None:
        out["uncertainty"] = resample_to(array_and_image(den["std"], nat), pet)
    elif not native and res["std"] is not None:
        out["uncertainty"] = resample_to(array_and_image(res["std"], work), pet)
    if keep_hc:
        # native: f_rev's body is the untrained zero layer, so the diffusion output below the
        # cut-off is the denoised PET itself
        out["pet_hc"] = (out["pet_denoised"] if native
                         else resample_to(array_and_image(res["suv_hc"], work), pet))
        out["lesion_prob"] = resample_to(array_and_image(res["lesion_prob"].astype(np.float32),
                                                         work), pet)
    if keep_hc:
        out["lesions_unsuppressed"] = sitk.Cast(resample_to(array_and_image(les_all, work), pet,
                                                            is_label=True), sitk.sitkUInt8)
    out["_info"] = {"steps": steps, "sampler": sampler, "start_fraction": start_fraction,
                    "lesion_threshold": threshold, "physiological_uptake_removed": dropped,
                    "working_spacing_mm": list(work.GetSpacing()),
                    "working_size": list(work.GetSize()),
                    "denoise_grid": ("native: the input's own voxels, "
                                     + " x ".join(f"{v:.2f}" for v in pet.GetSpacing()) + " mm")
                    if native else "the working grid",
                    "count_factor": round(den["count_factor"], 4) if native else None,
                    "organ_labels": {i: n for i, n in enumerate(ORGAN_CLASSES) if i > 0}}
    return out


# --------------------------------------------------------------------------------------------
# Task entry points (tasks/runner.py)
# --------------------------------------------------------------------------------------------
def predict(images: dict[str, sitk.Image], params: dict, model: AMDiffModel,
            ctx: RunContext) -> dict[str, sitk.Image]:
    """pet_denoised, lesions, organs (and uncertainty when samples > 1) on the PET's grid; the
    inference settings, label names and model facts go into ``ctx.manifest_extra``."""
    t0 = time.monotonic()
    nets, card = model
    sub = ctx.progress.sub(0.05, 0.85, "denoise and segment")
    res = denoise_segment_image(images["pet"], images.get("ct"), nets, card, params, sub, ctx.device)
    info = res.pop("_info")
    # issue 13 "Bad input": voxel size and count level against the card (guards.py)
    warnings, info["noise_index"] = input_warnings(images["pet"], res["pet_denoised"], card)
    for w in warnings:
        log.warning("%s", w)
    organ_names = {int(k): v for k, v in info["organ_labels"].items()}
    ctx.manifest_extra.update({
        "model_id": card["id"], "model_version": card["version"],
        "model_sha256": card["weights_sha256"],
        "lesion_labels": {1: "lesion"}, "organ_labels": organ_names,
        "inference": info, "synthetic_outputs": ["pet_denoised", "uncertainty"],
        "note": "pet_denoised is synthetic (AMDiff model output): research use, not for diagnosis",
        "warnings": warnings, "task_seconds": round(time.monotonic() - t0, 2)})
    return {k: v for k, v in res.items() if k in ("pet_denoised", "lesions", "organs", "uncertainty")}


def report(images: dict[str, sitk.Image], outputs: dict[str, sitk.Image], params: dict,
           model: AMDiffModel, ctx: RunContext) -> dict[str, Path]:
    """lesions.csv, organs.csv, summary.json, report.pdf and report.json in ``ctx.out_dir``."""
    t0 = time.monotonic()
    card = model.card
    info = ctx.manifest_extra["inference"]
    ctx.progress.update("report", 0.9)
    extra = {"count level": "low-count input", "sampler": info["sampler"],
             "steps": info["steps"], "start fraction": info["start_fraction"],
             "lesion threshold": info["lesion_threshold"],
             "samples": int(params.get("samples", 1)), "seed": int(params.get("seed", 0)),
             "working spacing (mm)": " x ".join(f"{s:.2f}" for s in info["working_spacing_mm"]),
             "CT used": images.get("ct") is not None,
             "note": "denoised PET is a model output: research use, not for diagnosis"}
    if ctx.manifest_extra.get("warnings"):  # guards.py: shown in report.pdf and report.json
        extra["warnings"] = list(ctx.manifest_extra["warnings"])
    rep = make_report(ctx.out_dir, outputs["pet_denoised"], outputs["lesions"], outputs["organs"],
                      ctx.manifest_extra["organ_labels"], task=SPEC.id, model_id=card["id"],
                      model_version=card["version"], synthetic=True, extra=extra,
                      input_pet=images["pet"], input_label="low-count input PET")
    ctx.manifest_extra["task_seconds"] = round(ctx.manifest_extra.get("task_seconds", 0.0)
                                               + time.monotonic() - t0, 2)
    return {k: rep[k] for k in ("lesions_csv", "organs_csv", "summary_json", "report_pdf",
                                "report_json") if k in rep}
