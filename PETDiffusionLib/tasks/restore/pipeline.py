"""The restore pipeline (MFdiff): checks, model, prediction on the PET's grid, summary.

Steps (paper section in brackets):

1. Check the PET (SUV, io/checks), the guide (exactly one of --mr / --ct; a CT given as MR or an MR
   given as CT is told apart by its intensities), and that the guide's field of view covers the
   PET's body and its body outline matches the PET's (another patient, or not registered).
2. Reorient to LPS and resample the PET to the model's working grid (4 x 4 x 5 mm,
   ``io.images.to_working_grid``), or keep the PET's own voxels for a model whose card says
   ``preprocessing.grid: native`` (its spacing outside the card's ``supported_spacing_mm`` is
   warned about in the manifest); resample the guide onto that grid (air outside its field of view).
3. Per batch of 2.5D slices: the fusion module (Sec. 3.1) makes the fused feature F once; the
   conditional U-Net (Eq. 8) is sampled with DDIM from the low-dose slice noised to
   ``start_fraction`` of T (as denoise-segment does), N samples -> mean and per-voxel SD. M-UNet model
   folders (the ablation baseline) run here too: one forward pass, SD zero.
4. SUV above the cut-off (20) and voxels outside the body box keep the low-dose value; back onto the
   input PET's grid (linear).
"""
from __future__ import annotations

import json
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
from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.io.checks import CT_AIR_HU, check_ct_hu, check_suv_image
from PETDiffusionLib.io.images import array_and_image, get_units, resample_to, to_working_grid
from PETDiffusionLib.methods.mfdiff.networks import GUIDES, SUV_CUTOFF, guide_to_x, pet_to_x, x_to_pet
from PETDiffusionLib.models.registry import load_model_folder
from PETDiffusionLib.physics.lowcount import body_outline
from PETDiffusionLib.tasks.base import RunContext
from PETDiffusionLib.tasks.denoise_segment.guards import voxel_size_warnings
from PETDiffusionLib.tasks.restore.spec import (CT_MODEL_ID, MIN_GUIDE_OVERLAP, MODEL_ID,
                                                MR_AS_CT_MIN_HU, SPEC)

log = logging.getLogger(__name__)

DEFAULT_SPACING_MM = (4.0, 4.0, 5.0)   # the simulator's working grid (PHYSICS.md; cards name theirs)
BODY_FRACTION_OF_P99 = 0.05            # body = SUV above 5 % of the 99th percentile (denoise-segment)
MIN_BODY_DICE = 0.4
"""Dice of the PET's and the guide's body outlines inside the overlap below which the guide is
refused. Measured (pipeline.prepare): the same patient gives 0.91-0.94 on simulated cases (MR and CT)
and 0.535-0.95 on the 27 real sarcoma PET/CT crops with CT (lowest STS_014); a CT of another
phantom of the same build and field of view still gives 0.65 (not detectable by outlines), a body
outline shifted off the PET body falls below 0.4 (Testing/test_task_restore.py)."""
MIN_INPLANE_VOXELS = 16
DEFAULT_TRAINING_PATCH = 64   # RestoreConfig.patch: the in-plane size the shipped models trained on

# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def guide_of(images: dict[str, sitk.Image]) -> str:
    given = [g for g in GUIDES if images.get(g) is not None]
    if not given:
        raise InputError("give a guide: --mr (T1 MR) or --ct (CT in HU) of the same patient", "--mr/--ct")
    if len(given) == 2:
        raise InputError("give one guide, --mr or --ct, not both", "--mr/--ct")
    return given[0]


def check_guide(img: sitk.Image, modality: str, name: object) -> None:
    """An MR given as --ct or a CT given as --mr, told apart by intensities; NaN; CT range."""
    arr = sitk.GetArrayViewFromImage(img)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"the {modality.upper()} holds NaN or infinite voxels", name)
    units = get_units(img)
    lo, p1 = float(arr.min()), float(np.percentile(arr, 1))
    if modality == "ct":
        if units not in (None, "HU"):
            raise InputError(f"the CT input is labelled {units!r}, not HU", name)
        if lo >= 0.0 and p1 > MR_AS_CT_MIN_HU:
            raise InputError(f"this does not look like a CT in HU: no value below 0 (minimum "
                             f"{lo:.1f}; a CT has air near {CT_AIR_HU:.0f} HU). It looks like an MR "
                             "in arbitrary units: give it as --mr", name)
        check_ct_hu(img, name, require_air=False)
    else:
        if units == "HU" or (p1 <= MR_AS_CT_MIN_HU and (arr < MR_AS_CT_MIN_HU).mean() > 0.01):
            raise InputError(f"this looks like a CT in HU, not an MR (1st percentile {p1:.0f}, "
                             f"{100 * float((arr < MR_AS_CT_MIN_HU).mean()):.0f} % of voxels below "
                             f"{MR_AS_CT_MIN_HU:.0f}): give it as --ct", name)
        if units in ("SUVbw", "Bq/mL") or float(arr.max()) <= 0:
            raise InputError("this is not an MR image (a PET, or empty)", name)


def body_mask(suv: np.ndarray) -> np.ndarray:
    p99 = float(np.percentile(suv, 99)) if suv.size else 0.0
    return suv > BODY_FRACTION_OF_P99 * max(p99, 1e-6)


def guide_body(guide: np.ndarray, modality: str) -> np.ndarray:
    """CT: above -500 HU (PHYSICS.md Sec. 3: air -1000, lung -860, tissue > -150); MR: above a
    tenth of the MR's scale (air is dark in T1)."""
    if modality == "ct":
        return guide > -500.0
    body = guide[guide > np.percentile(guide, 50)]
    scale = float(np.percentile(body, 99)) if body.size else 0.0
    return guide > 0.1 * scale


def guide_on_grid(guide: sitk.Image, work: sitk.Image, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """The guide resampled onto ``work`` (air outside its field of view) and its coverage mask."""
    air = CT_AIR_HU if modality == "ct" else 0.0
    g = sitk.Resample(sitk.Cast(guide, sitk.sitkFloat32), work, sitk.Transform(), sitk.sitkLinear,
                      air, sitk.sitkFloat32)
    ones = sitk.Image(guide.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(guide)
    cov = sitk.Resample(ones, work, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(g), sitk.GetArrayFromImage(cov) > 0


def overlap_figures(suv: np.ndarray, guide: np.ndarray, covered: np.ndarray, modality: str) -> dict:
    pet_body = body_mask(suv)
    n = int(pet_body.sum())
    frac = float((pet_body & covered).sum() / n) if n else 0.0
    g_body = guide_body(guide, modality) & covered
    p_in = pet_body & covered
    denom = int(p_in.sum() + g_body.sum())
    dice = float(2 * (p_in & g_body).sum() / denom) if denom else 0.0
    return {"body_covered_fraction": round(frac, 3), "body_dice": round(dice, 3)}


def check_overlap(fig: dict, pet_name: object, guide_name: object) -> None:
    if fig["body_covered_fraction"] < MIN_GUIDE_OVERLAP:
        raise InputError(f"the guide's field of view covers only {100 * fig['body_covered_fraction']:.0f}"
                         f" % of the PET's body (needs {100 * MIN_GUIDE_OVERLAP:.0f} %): is it another "
                         f"study or another part of the body? (PET: {pet_name})", guide_name)
    if fig["body_dice"] < MIN_BODY_DICE:
        raise InputError(f"the guide's body outline does not match the PET's (Dice {fig['body_dice']:.2f}"
                         f" < {MIN_BODY_DICE}): another patient, or not registered to the PET "
                         f"({pet_name})", guide_name)


def working_spacing(card: dict | None) -> tuple[float, float, float]:
    sp = (card or {}).get("preprocessing", {}).get("spacing_mm", DEFAULT_SPACING_MM)
    return tuple(float(s) for s in sp)


def native_grid(card: dict | None) -> bool:
    """A model that runs on the PET's own voxels (card ``preprocessing.grid: native``)."""
    return (card or {}).get("preprocessing", {}).get("grid") == "native"


def working_image(pet: sitk.Image, card: dict | None) -> sitk.Image:
    """The PET on the grid the networks run on: LPS-reoriented at its own voxels (native models)
    or resampled to the card's working grid."""
    if native_grid(card):
        return sitk.DICOMOrient(sitk.Cast(pet, sitk.sitkFloat32), "LPS")
    return to_working_grid(pet, working_spacing(card))


def prepare(images: dict[str, sitk.Image], ctx: RunContext | None, card: dict | None = None) -> dict:
    """Checks (naming the files) and the arrays on the working grid: low SUV, guide, overlap."""
    paths = ctx.input_paths if ctx is not None else {}
    pet_name = paths.get("pet", "--pet")
    check_suv_image(images["pet"], pet_name)
    modality = guide_of(images)
    g_name = paths.get(modality, f"--{modality}")
    trained = (card or {}).get("preprocessing", {}).get("guides", list(GUIDES))
    if modality not in trained:
        raise InputError(f"the model {card.get('id', '?')} was trained with a {' or '.join(trained)} "
                         f"guide only, not --{modality}: use the shipped default (no --model) or a "
                         "model trained with this guide", g_name)
    check_guide(images[modality], modality, g_name)
    work = working_image(images["pet"], card)
    x, y, z = work.GetSize()
    if min(x, y) < MIN_INPLANE_VOXELS or z < 3:
        raise InputError(f"the PET is too small for the network: {x}x{y}x{z} voxels on the working "
                         f"grid (needs {MIN_INPLANE_VOXELS}x{MIN_INPLANE_VOXELS}x3)", pet_name)
    low = np.clip(sitk.GetArrayFromImage(work).astype(np.float32), 0, None)
    guide, covered = guide_on_grid(images[modality], work, modality)
    fig = overlap_figures(low, guide, covered, modality)
    check_overlap(fig, pet_name, g_name)
    return {"work": work, "low": low, "guide": guide, "modality": modality, "overlap": fig,
            # a native model's spacing range (card preprocessing.supported_spacing_mm, the check
            # denoise-segment makes); working-grid cards have no range and give no warning
            "warnings": voxel_size_warnings(images["pet"], card or {}, "the restored PET")}


def check_inputs(images: dict[str, sitk.Image], params: dict, ctx: RunContext) -> None:
    prepared = prepare(images, ctx)
    ctx.manifest_extra["_prepared"] = prepared   # reused by predict (popped there)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class RestoreModel(NamedTuple):
    nets: dict
    card: dict


def load_model(model_path: str | Path | None, device) -> RestoreModel:
    nets, card = load_model_folder(model_path or MODEL_ID, device, task=SPEC.id)
    if not ({"fusion", "denoiser"} <= set(nets) or "munet" in nets):
        raise ModelError(f"{model_path or MODEL_ID}: needs networks fusion + denoiser (MFdiff) or "
                         "munet (M-UNet)")
    return RestoreModel(nets, card)


_CT_DEFAULT: dict = {}


def default_for_guide(model: RestoreModel, modality: str, device) -> RestoreModel:
    """The shipped default is per guide: with a CT and the MR/CT default ``MODEL_ID`` (no model
    named), the CT model ``CT_MODEL_ID`` (loaded once per device); otherwise ``model``."""
    if modality != "ct" or model.card.get("id") != MODEL_ID:
        return model
    key = str(device)
    if key not in _CT_DEFAULT:
        _CT_DEFAULT[key] = load_model(CT_MODEL_ID, device)
    return _CT_DEFAULT[key]


def card_defaults(card: dict) -> dict:
    d = card.get("inference", {})
    return {"steps": int(d.get("steps", 5)), "start_fraction": float(d.get("start_fraction", 0.1)),
            "slice_batch": int(d.get("slice_batch", 16))}


def _body_box(low: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    ys, xs = np.nonzero(body_mask(low).any(0))
    if len(ys) == 0:
        return slice(0, low.shape[1]), slice(0, low.shape[2])
    return (slice(max(0, ys.min() - margin), min(low.shape[1], ys.max() + margin + 1)),
            slice(max(0, xs.min() - margin), min(low.shape[2], xs.max() + margin + 1)))


@torch.no_grad()
def restore_arrays(low: np.ndarray, guide: np.ndarray, modality: str, model: RestoreModel,
                   steps: int, start_fraction: float, samples: int, seed: int,
                   progress=None, device="cpu", spacing_xyz=None) -> tuple[np.ndarray, np.ndarray]:
    """Working-grid arrays [Z,Y,X] (SUV, guide in HU or MR units) -> (mean SUV, SD SUV); with the
    card's ``inference.count_preserving`` (and ``spacing_xyz``) scaled to the input's body total."""
    nets, card = model
    k = int(card.get("preprocessing", {}).get("context_slices", 1))
    ys, xs = _body_box(low)
    lo_c, g_c = low[:, ys, xs], guide_to_x(guide, modality)[:, ys, xs]
    h, w = lo_c.shape[1:]
    # a slice smaller than the training patch is padded (air) to that size: the normalisation and
    # attention layers then see the context they were trained with (measured on the real crops,
    # 29x31 voxels at 5.5 mm: body NRMSE 0.0157 unpadded vs 0.0133 padded to 64, STS_015 10 %)
    patch = int(card.get("training", {}).get("config", {}).get("patch", DEFAULT_TRAINING_PATCH))
    ph, pw = max((-h) % 8, patch - h), max((-w) % 8, patch - w)
    lo_p = np.pad(lo_c, ((0, 0), (0, ph), (0, pw)))
    g_p = np.pad(g_c, ((0, 0), (0, ph), (0, pw)), constant_values=-1.0)
    x_low = slices_25d(pet_to_x(torch.from_numpy(lo_p)).to(device), k)
    x_gd = slices_25d(torch.from_numpy(g_p).to(device), k)
    mod = GUIDES.index(modality)
    z_n, batch = x_low.shape[0], card_defaults(card)["slice_batch"]
    munet = "munet" in nets
    if not munet:
        dcfg = card.get("diffusion", {})
        prediction = dcfg.get("prediction", "epsilon")
        diffusion = ConditionalDiffusion(int(dcfg.get("num_train_timesteps", 1000)),
                                         dcfg.get("schedule", "linear"), prediction)
        # an x0-prediction model (card diffusion.prediction "sample") needs no epsilon clipping
        den = (ClippedEpsilon(nets["denoiser"], diffusion.alphas_cumprod)
               if prediction == "epsilon" else nets["denoiser"])
    means, sds = [], []
    n_batches = math.ceil(z_n / batch)
    for bi, z0 in enumerate(range(0, z_n, batch)):
        zs = slice(z0, min(z_n, z0 + batch))
        cond, gd = x_low[zs], x_gd[zs]
        mods = torch.full((cond.shape[0],), mod, dtype=torch.long, device=cond.device)
        if munet:
            suv = x_to_pet(nets["munet"](cond, gd, mods))[None]
        else:
            fused = nets["fusion"](cond, gd, mods)

            def prog(f, bi=bi):
                if progress is not None:
                    progress((bi + f) / n_batches)
            res = diffusion.sample(den, torch.cat([cond, fused], 1), steps=steps, sampler="ddim",
                                   seed=seed + 7919 * bi, n_samples=samples,
                                   start_image=cond[:, k:k + 1], start_fraction=start_fraction,
                                   progress=prog)
            suv = x_to_pet(res.samples)
        means.append(suv.mean(0)[:, 0])
        sds.append(suv.std(0, unbiased=False)[:, 0])

    def back(parts):
        a = torch.cat(parts).cpu().numpy()[:, :h, :w]
        out = np.zeros(low.shape, np.float32)
        out[:, ys, xs] = a
        return out
    mean, sd = back(means), back(sds)
    keep = np.ones(low.shape, bool)
    keep[:, ys, xs] = False
    keep |= low > SUV_CUTOFF       # above the cut-off the network's range ends: keep the input
    mean[keep], sd[keep] = low[keep], 0.0
    if card.get("inference", {}).get("count_preserving", False) and spacing_xyz is not None:
        # the measured total activity in the body is what the counts determine (ML-EM keeps the
        # total, Shepp & Vardi 1982; PHYSICS.md §4.2): a restoration only redistributes it
        body = body_outline(low, spacing_xyz)
        total = float(mean[body].sum())
        if body.any() and total > 0:
            factor = float(np.clip(low[body], 0, None).sum()) / total
            mean *= factor
            sd *= factor
    return mean, sd


FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (1, 2))
"""Axes ([Z, Y, X]) of the in-plane flips a card with ``inference.flip_average`` averages over: the
image, left-right, front-back and both. The network is not flip-equivariant, so its four views
carry partly independent errors. Measured on mfdiff-native-2p5d 0.3.0 with an ad-hoc script
calling tasks/restore/realval.real_validation (8 held-apart crops, body NRMSE median at 10 / 5 %):
0.01127 / 0.01252 with one view, 0.01101 / 0.01190 with these four, 0.01101 / 0.01189 with the
eight that add the axial flip (twice the time), so the axial flip is left out."""


def flip_views(card: dict) -> tuple[tuple[int, ...], ...]:
    """The views restore_image averages: FLIP_VIEWS with the card's ``inference.flip_average``,
    else the image alone."""
    return FLIP_VIEWS if card.get("inference", {}).get("flip_average", False) else ((),)


def flip_averaged(low: np.ndarray, guide: np.ndarray, views, run) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``run(i, low, guide)`` -> (mean, sd) over the flipped ``views`` (i: the view's
    index), each flipped back. Averaging count-preserving views keeps the total."""
    means, sds = [], []
    for i, axes in enumerate(views):
        def flip(a, axes=axes):
            return np.ascontiguousarray(np.flip(a, axes)) if axes else a
        m, s = run(i, flip(low), flip(guide))
        means.append(flip(m))
        sds.append(flip(s))
    if len(views) == 1:
        return means[0], sds[0]
    return np.mean(means, 0).astype(np.float32), np.mean(sds, 0).astype(np.float32)


def resolve_settings(params: dict, card: dict) -> dict:
    d = card_defaults(card)
    return {"steps": int(params.get("steps") or d["steps"]),
            "start_fraction": float(params.get("start_fraction") or d["start_fraction"]),
            "samples": int(params.get("samples", 1) or 1), "seed": int(params.get("seed", 0))}


def restore_image(images: dict[str, sitk.Image], params: dict, model: RestoreModel,
                  ctx: RunContext | None = None, progress=None, device="cpu",
                  prepared: dict | None = None) -> dict:
    """Images -> {"pet_restored", "pet_restored_sd" on the PET's grid, "_info": settings}."""
    prepared = prepared or prepare(images, ctx, model.card)
    s = resolve_settings(params, model.card)
    if "munet" in model.nets:
        s["samples"] = 1
    views = flip_views(model.card)

    def run(i, low, guide):
        sub = None if progress is None else (lambda f, i=i: progress((i + f) / len(views)))
        return restore_arrays(low, guide, prepared["modality"], model, s["steps"],
                              s["start_fraction"], s["samples"], s["seed"], sub, device,
                              prepared["work"].GetSpacing())
    mean, sd = flip_averaged(prepared["low"], prepared["guide"], views, run)
    work, pet = prepared["work"], images["pet"]
    out = {"pet_restored": resample_to(array_and_image(mean, work), pet),
           "pet_restored_sd": resample_to(array_and_image(sd, work), pet)}
    out["_info"] = {**s, "guide": prepared["modality"], "overlap": prepared["overlap"],
                    "sampler": "ddim" if "munet" not in model.nets else "none (M-UNet)",
                    "flip_views": len(views),
                    "grid": "native" if native_grid(model.card) else "working",
                    "warnings": list(prepared.get("warnings", [])),
                    "working_spacing_mm": list(work.GetSpacing()),
                    "working_size": list(work.GetSize()),
                    "body_suvmean_input": float(prepared["low"][body_mask(prepared["low"])].mean()),
                    "body_suvmean_restored": float(mean[body_mask(prepared["low"])].mean())}
    return out


# --------------------------------------------------------------------------------------------
# Task entry points (tasks/runner.py)
# --------------------------------------------------------------------------------------------
def predict(images: dict[str, sitk.Image], params: dict, model: RestoreModel,
            ctx: RunContext) -> dict[str, sitk.Image]:
    t0 = time.monotonic()
    prepared = ctx.manifest_extra.pop("_prepared", None)
    if ctx.model_path is None:      # the shipped default: the CT model for a CT guide
        model = default_for_guide(model, guide_of(images), ctx.device)
        ctx.model = model
    if prepared is not None and (native_grid(model.card) or tuple(prepared["work"].GetSpacing())
                                 != working_spacing(model.card)):
        prepared = None    # check_inputs prepared the default working grid: prepare for this model
    sub = ctx.progress.sub(0.05, 0.85, "restore")
    res = restore_image(images, params, model, ctx, sub, ctx.device, prepared)
    info = res.pop("_info")
    for w in info["warnings"]:
        log.warning("%s", w)
    card = model.card
    ctx.manifest_extra.update({
        "model_id": card["id"], "model_version": card["version"],
        "model_sha256": card["weights_sha256"], "guide": info["guide"], "inference": info,
        "synthetic_outputs": ["pet_restored", "pet_restored_sd"],
        "note": "pet_restored is synthetic (MFdiff model output): research use, not for diagnosis",
        "warnings": info["warnings"],
        "task_seconds": round(time.monotonic() - t0, 2)})
    return res


def report(images: dict[str, sitk.Image], outputs: dict[str, sitk.Image], params: dict,
           model: RestoreModel, ctx: RunContext) -> dict[str, Path]:
    if isinstance(ctx.model, RestoreModel):
        model = ctx.model           # the model predict ran (default_for_guide)
    info = ctx.manifest_extra["inference"]
    summary = {"task": SPEC.id, "model_id": model.card["id"], "model_version": model.card["version"],
               "synthetic": True, **{k: info[k] for k in ("guide", "overlap", "steps",
                                                          "start_fraction", "samples", "seed",
                                                          "sampler", "flip_views", "body_suvmean_input",
                                                          "body_suvmean_restored", "grid",
                                                          "warnings")}}
    path = ctx.out_dir / "restore.json"
    atomic_write_text(path, json.dumps(summary, indent=2))
    return {"summary_json": path}
