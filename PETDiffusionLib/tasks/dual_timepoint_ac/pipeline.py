"""Task dual-timepoint-ac: delayed NAC PET (SUV units) + first-scan CT (HU) -> delayed AC PET (SUVbw)
with STMDiff (seeds/STMDiff_dual_time_point_AC.txt) or, by default, STMDiff's slice matching and a
physics stage.

``method`` "physics" (default; ``physics_correct``): STMDiff's matching network estimates the couch
shift and the same-patient similarity on the working grid (both reported); the CT is registered to
the NAC (a translation, mutual information) and the NAC is
attenuation-corrected by reprojection on its own grid (``physics.nac_to_ac``). It is the default
because it is what validates on real PET: on the real sarcoma crops (``petdiffusion evaluate
dual-timepoint-ac --real-crops``) the diffusion read the body 27 % low and its body NRMSE was twice
that of the NAC scaled by an oracle factor (model card ``evaluation``).

``method`` "stmdiff", the paper's network, over axial slices of the model's working grid:
  1. the NAC is reoriented to LPS and resampled to the card's working spacing; the CT is resampled
     onto the same in-plane grid over its own axial range (the patient moved: no registration);
  2. every NAC slice is matched to the k first-scan CT slices of highest latent similarity
     s(G1(NAC), G2(CT)) = -L1 (STMDiff §2.1, inference);
  3. condition c = concat(G2 features of those k CT slices, autoencoder latent of the NAC) (Eq. 6);
     DDIM (eta 0) from noise in the latent space, decoded and inverted to SUV; N samples give the
     mean and the per-voxel SD;
  4. the result is resampled back onto the input NAC's grid.

Research model, not for diagnosis; every PET it writes is marked synthetic.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy.ndimage import binary_erosion, center_of_mass, label

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.checks import check_ct_hu, check_suv_image
from PETDiffusionLib.io.images import array_and_image, resample_to, to_working_grid
from PETDiffusionLib.methods.cpdm.transforms import pad_to_multiple
from PETDiffusionLib.methods.stmdiff.inference import attenuation_correct, slice_similarity, top_k
from PETDiffusionLib.methods.stmdiff.intensities import body_contours, ct_to_net, nac_to_net, net_to_pet
from PETDiffusionLib.models.registry import load_model_folder
from PETDiffusionLib.io.dicom import corrections, resolve_kvp
from PETDiffusionLib.physics.attenuation import DEFAULT_KVP, hu_to_mu
from PETDiffusionLib.physics.nac_to_ac import SCATTER_FRACTION, axial_range, register_ct_to_nac, reprojection_ac
from PETDiffusionLib.tasks.base import RunContext
from PETDiffusionLib.tasks.dual_timepoint_ac.spec import MATCH_RADIUS_MM, MODEL_ID, SPEC

log = logging.getLogger(__name__)

CT_AIR = -1000.0
PAD_MULTIPLE = 8  # the encoders and the autoencoder halve three and two times
WORKING_SPACING_MM = (8.0, 8.0, 10.0)  # the shipped card's grid; checks before a model is loaded use it
MIN_AXIAL_COVERAGE = 0.9
"""Fraction of the NAC's axial range the CT must cover: the matching needs a CT slice for every NAC
slice; the simulated motion moves the patient by at most 25 mm (PHYSICS.md §4.1), well inside 10 %
of a whole-body range."""
AC_PROFILE_RATIO = 1.65
"""An attenuation-corrected image given as NAC, by its profile: the mean of the body core (>= 24 mm
inside the outline) over the mean of the outer 8 mm rim, per slice, median over the slices. A NAC
has a depressed centre and bright skin (PHYSICS.md §4); on the held-out phantoms (delayed scans)
NAC 0.83-1.53 (hot organs fill the core), AC 1.72-1.98."""
NAC_BODY_MEAN_MAX_SUV = 0.45
"""... and by its level: a NAC in SUV units reads far below the true SUV in the body (PHYSICS.md
§4.1; held-out phantoms: NAC body mean 0.11-0.19 SUV, AC 0.76-1.13), so a body mean above 0.45
SUV is an AC image or a NAC rescaled toward one, which the task's contract excludes."""
SAME_PATIENT_MARGIN = 1.5
"""Another patient's CT: the mean over the delayed body slices of each slice's best match
similarity s = -L1 (STMDiff §2.1) is warned about below the card's ``matching.same_patient_min_similarity``,
which ``petdiffusion evaluate dual-timepoint-ac --record-into`` sets to this factor times the lowest
value of the held-out phantoms' own CTs (every case's NAC against its own CT and against the other
cases' CTs: the card's ``evaluation.patient_check`` gives both ranges and the fraction caught)."""
NAC_PROFILE_LEVEL_SUV = 0.3
"""The profile alone is not decisive (a simulated NAC read 1.66: hot organs fill its core), so an
AC-like profile is refused only together with a level above 0.3 SUV, itself above every NAC
body mean measured (0.11-0.20) and below every AC one (0.76-1.13)."""


# ------------------------------------------------------------------------------------------------
# grids

def working_nac(nac: sitk.Image, spacing) -> sitk.Image:
    return to_working_grid(nac, spacing, default_value=0.0)


def ct_on_nac_plane(ct: sitk.Image, nac_work: sitk.Image) -> sitk.Image:
    """The CT on the NAC working grid in-plane (x, y) over the CT's own axial range (LPS)."""
    ct_lps = sitk.DICOMOrient(ct, "LPS")
    sp = nac_work.GetSpacing()
    z0, z1 = axial_range(ct_lps)
    n_z = max(1, int(np.floor((z1 - z0) / sp[2])) + 1)
    ref = sitk.Image(nac_work.GetSize()[0], nac_work.GetSize()[1], n_z, sitk.sitkFloat32)
    ref.SetSpacing(sp)
    ref.SetOrigin((nac_work.GetOrigin()[0], nac_work.GetOrigin()[1], z0))
    return sitk.Resample(ct_lps, ref, sitk.Transform(), sitk.sitkLinear, CT_AIR, sitk.sitkFloat32)


# ------------------------------------------------------------------------------------------------
# input checks

def nac_profile(nac_arr: np.ndarray) -> dict:
    """{"core_rim_ratio", "body_mean"} of a PET on the working grid (8 mm pixels)."""
    body = body_contours(nac_arr, "pet")
    ratios, vals = [], []
    for k in range(len(body)):
        b = body[k]
        if b.sum() < 60:
            continue
        inner = binary_erosion(b, iterations=1)
        core = binary_erosion(b, iterations=3)
        rim = b & ~inner
        if core.sum() < 5 or rim.sum() < 5:
            continue
        ratios.append(float(nac_arr[k][core].mean() / max(nac_arr[k][rim].mean(), 1e-6)))
        vals.append(nac_arr[k][b])
    if not ratios:
        return {"core_rim_ratio": float("nan"), "body_mean": float("nan")}
    return {"core_rim_ratio": float(np.median(ratios)), "body_mean": float(np.concatenate(vals).mean())}


MAX_SCATTER_FRACTION = 0.6
"""Above every whole-body 3D scatter fraction (30-42 %, PHYSICS.md §4)."""


def scatter_fraction_of(nac: sitk.Image, value) -> tuple[float, str]:
    """(scatter fraction the NAC keeps, where it came from): a number given by the user; "auto":
    0 when the NAC's DICOM CorrectedImage lists SCAT (the scanner removed the scatter), else
    ``physics.nac_to_ac.SCATTER_FRACTION`` (a NAC keeps its scatter, PHYSICS.md §4.1)."""
    text = str(value).strip().lower()
    if text != "auto":
        try:
            sf = float(text)
        except ValueError:
            raise InputError(f"scatter fraction {value!r}: give auto or a number 0..{MAX_SCATTER_FRACTION}",
                             "--scatter-fraction") from None
        if not 0.0 <= sf <= MAX_SCATTER_FRACTION:
            raise InputError(f"scatter fraction {sf} outside 0..{MAX_SCATTER_FRACTION}", "--scatter-fraction")
        return sf, "parameter"
    corr = corrections(nac) or []
    if "SCAT" in corr:
        return 0.0, "DICOM CorrectedImage lists SCAT"
    return SCATTER_FRACTION, (f"default {SCATTER_FRACTION} (a NAC keeps its scatter; "
                              + ("CorrectedImage " + "\\".join(corr) if corr else "no CorrectedImage") + ")")


def check_inputs(images: dict[str, sitk.Image], params: dict, ctx: RunContext) -> None:
    paths = ctx.input_paths
    nac_name, ct_name = paths.get("nac", "--nac"), paths.get("ct", "--ct")
    check_suv_image(images["nac"], nac_name)
    corr = corrections(images["nac"])
    if corr and "ATTN" in corr:
        raise InputError(f"the DICOM header says this PET is attenuation-corrected (CorrectedImage "
                         f"{chr(92).join(corr)}), not a NAC: give the scanner's NAC reconstruction of "
                         "the delayed scan", nac_name)
    scatter_fraction_of(images["nac"], params.get("scatter_fraction", "auto"))
    check_ct_hu(images["ct"], ct_name)
    if "first_pet" in images:
        check_suv_image(images["first_pet"], paths.get("first_pet", "--first-pet"))
    nac_w = working_nac(images["nac"], WORKING_SPACING_MM)
    arr = sitk.GetArrayFromImage(nac_w)
    prof = nac_profile(arr)
    ac_profile = prof["core_rim_ratio"] > AC_PROFILE_RATIO and prof["body_mean"] > NAC_PROFILE_LEVEL_SUV
    if ac_profile or prof["body_mean"] > NAC_BODY_MEAN_MAX_SUV:
        raise InputError(
            f"this looks like an attenuation-corrected PET, not a NAC: body core/rim ratio "
            f"{prof['core_rim_ratio']:.2f} (a NAC has a depressed centre and bright skin, ratio <= "
            f"{AC_PROFILE_RATIO}) and body mean {prof['body_mean']:.2f} SUV (a NAC in SUV units reads "
            f"far below the true SUV: <= {NAC_BODY_MEAN_MAX_SUV}, or <= {NAC_PROFILE_LEVEL_SUV} with an "
            "AC-like profile); give the scanner's NAC "
            "reconstruction of the delayed scan, in SUV, not rescaled", nac_name)
    n0, n1 = axial_range(sitk.DICOMOrient(images["nac"], "LPS"))
    c0, c1 = axial_range(sitk.DICOMOrient(images["ct"], "LPS"))
    covered = max(0.0, min(n1, c1) - max(n0, c0)) / max(n1 - n0, 1e-6)
    if covered < MIN_AXIAL_COVERAGE:
        raise InputError(
            f"the CT covers z = {c0:.0f}..{c1:.0f} mm but the NAC PET spans {n0:.0f}..{n1:.0f} mm "
            f"({covered:.0%} covered; at least {MIN_AXIAL_COVERAGE:.0%} needed): give the first "
            "scan's CT of the same axial range", ct_name)
    ctx.manifest_extra["input_checks"] = {**{k: round(v, 3) for k, v in prof.items()},
                                          "ct_axial_coverage": round(covered, 3)}


# ------------------------------------------------------------------------------------------------
# the model

def load_model(model_path: str | Path | None = None, device: torch.device | str = "cpu"
               ) -> tuple[dict, dict]:
    return load_model_folder(model_path or MODEL_ID, device, task=SPEC.id)


def working_slices(nac: sitk.Image, ct: sitk.Image, card: dict):
    """(NAC and CT on the working grid, their padded [z, y, x] arrays, the box of the unpadded slice)."""
    pre = card["preprocessing"]
    nac_w = working_nac(nac, tuple(pre["working_spacing_mm"]))
    ct_w = ct_on_nac_plane(ct, nac_w)
    # slices smaller than the training slices (a small field of view) are padded to their size: the
    # image-space U-Net halves them five times, and every network saw 64-pixel slices with air around
    least = int(pre.get("slice_size_train", 0))
    nac_arr, box = pad_to_multiple(sitk.GetArrayFromImage(nac_w).astype(np.float32), PAD_MULTIPLE, 0.0, least)
    ct_arr, _ = pad_to_multiple(sitk.GetArrayFromImage(ct_w).astype(np.float32), PAD_MULTIPLE, CT_AIR, least)
    return nac_w, ct_w, nac_arr, ct_arr, box


@torch.no_grad()
def correct_volume(nac: sitk.Image, ct: sitk.Image, networks: dict, card: dict, *, k: int, steps: int,
                   samples: int = 1, seed: int = 0, device="cpu", progress=None) -> dict:
    """{"pet", "std" (sitk images on the NAC's grid, SUVbw), "topk", "shift_mm"} for one study."""
    spacing = tuple(card["preprocessing"]["working_spacing_mm"])
    nac_w, ct_w, nac_arr, ct_arr, box = working_slices(nac, ct, card)
    res = attenuation_correct(networks, card, nac_to_net(nac_arr), ct_to_net(ct_arr), k=k, steps=steps,
                              samples=samples, seed=seed, device=device, progress=progress)
    suv = np.maximum(net_to_pet(res["samples"]), 0.0)
    y0, x0, h, w = box

    def back(a: np.ndarray) -> sitk.Image:
        img = array_and_image(np.ascontiguousarray(a[:, y0:y0 + h, x0:x0 + w], np.float32), nac_w)
        return resample_to(img, nac, default_value=0.0)

    shift, match = matching_summary(res["similarity"], res["topk"], nac_arr, nac_w, ct_w, spacing)
    return {"pet": back(suv.mean(0)), "std": back(suv.std(0)), "topk": res["topk"], "shift_mm": shift,
            "match_similarity": match}


def matching_summary(similarity, topk, nac_arr, nac_w, ct_w, spacing) -> tuple[float | None, float | None]:
    """(estimated couch shift in mm: matched CT slice z - NAC slice z, median over the body slices;
    the mean best match similarity, ``match_similarity``)."""
    shift = match = None
    if similarity is not None:
        match = match_similarity(similarity, nac_arr)
    if topk is not None:
        z_nac = nac_w.GetOrigin()[2] + np.arange(len(nac_arr)) * spacing[2]
        z_ct = ct_w.GetOrigin()[2] + topk[:, 0] * spacing[2]
        body = body_contours(nac_arr, "pet").reshape(len(nac_arr), -1).sum(1) > 60
        shift = float(np.median((z_nac - z_ct)[body])) if body.any() else None
    return shift, match


@torch.no_grad()
def physics_correct(nac: sitk.Image, ct: sitk.Image, networks: dict, card: dict, *, device="cpu",
                    kvp: float = DEFAULT_KVP, scatter_fraction: float = SCATTER_FRACTION,
                    progress=None) -> dict:
    """{"pet" (on the NAC's grid, SUVbw), "shift_mm" (STMDiff's matching), "registration",
    "match_similarity"}: STMDiff's slice matching, then registration and reprojection AC."""
    report = progress or (lambda f, m="": None)
    shift = match = None
    if int(card["preprocessing"].get("k", 0)) > 0 and "g1" in networks:
        report(0.05, "matching slices")
        spacing = tuple(card["preprocessing"]["working_spacing_mm"])
        nac_w, ct_w, nac_arr, ct_arr, _ = working_slices(nac, ct, card)
        sim = slice_similarity(networks["g1"], networks["g2"], nac_to_net(nac_arr), ct_to_net(ct_arr), device)
        shift, match = matching_summary(sim, top_k(sim, 1), nac_arr, nac_w, ct_w, spacing)
    report(0.3, "registering the CT")
    nac_lps = sitk.DICOMOrient(sitk.Cast(nac, sitk.sitkFloat32), "LPS")
    arr = np.clip(sitk.GetArrayFromImage(nac_lps), 0, None).astype(np.float32)
    body = body_contours(arr, "pet")
    # STMDiff's matched shift is reported, not used as a start: on a real crop with 16 mm of couch
    # motion it proposed 105 mm (the phantom-trained matching does not transfer)
    tx, reg = register_ct_to_nac(nac_lps, ct, body)
    hu = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(ct, sitk.sitkFloat32), nac_lps, tx, sitk.sitkLinear,
                                              CT_AIR, sitk.sitkFloat32))
    report(0.5, "reprojection attenuation correction")
    pet = reprojection_ac(arr, hu_to_mu(hu, kvp), nac_lps.GetSpacing(), body, scatter_fraction=scatter_fraction)
    out = resample_to(array_and_image(pet, nac_lps), nac, default_value=0.0)
    return {"pet": out, "shift_mm": shift, "registration": reg, "match_similarity": match}


def match_similarity(similarity: torch.Tensor, nac_arr: np.ndarray) -> float | None:
    """Mean over the NAC's body slices of the best similarity to any CT slice (same patient: high;
    ``SAME_PATIENT_MARGIN``)."""
    body = np.nonzero(body_contours(nac_arr, "pet").reshape(len(nac_arr), -1).sum(1) > 60)[0]
    if not len(body):
        return None
    return float(similarity[torch.as_tensor(body)].max(1).values.mean())


def same_patient_warning(match: float | None, card: dict) -> str | None:
    """A warning when the CT matches the NAC worse than the card's floor, else None. A warning, not a
    refusal: on real PET/CT of one patient (the sarcoma crops, realdata.py) the phantom-trained
    matching network reads far below every phantom pair of one patient, so a refusal would turn
    away real studies; the warning says both readings."""
    floor = card.get("matching", {}).get("same_patient_min_similarity")
    if match is None or floor is None or match >= float(floor):
        return None
    return (f"the CT may be another patient's: its slices match the delayed NAC slices with a mean best "
            f"similarity of {match:.2f}, below {float(floor):.2f} ({SAME_PATIENT_MARGIN} x the lowest value "
            f"of a phantom's own CT in the model's validation, card matching.same_patient_min_similarity); "
            f"real studies unlike the training phantoms also read this low. Check that the CT is this "
            f"patient's first scan before using the result")


def predict(images: dict[str, sitk.Image], params: dict, model: tuple[dict, dict], ctx: RunContext
            ) -> dict[str, sitk.Image]:
    networks, card = model
    k, steps, samples, seed = (int(params[n]) for n in ("k", "steps", "samples", "seed"))
    method = params.get("method", "physics")
    if method == "physics":
        return predict_physics(images, params, networks, card, ctx)
    model_k = int(card["preprocessing"]["k"])
    if k != model_k:
        raise InputError(f"the model {card['id']} was trained with k = {model_k} matched CT slices; "
                         f"k = {k} needs a model trained for it (--model)", "--k")
    torch.manual_seed(seed)
    res = correct_volume(images["nac"], images["ct"], networks, card, k=k, steps=steps, samples=samples,
                         seed=seed, device=ctx.device, progress=ctx.progress.sub(0.05, 0.85, "STMDiff"))
    warning = same_patient_warning(res["match_similarity"], card)
    if warning:
        log.warning(warning)
        ctx.manifest_extra.setdefault("warnings", []).append(warning)
    out = {"pet_ac": res["pet"]}
    if samples > 1:
        out["uncertainty"] = res["std"]
    ctx.manifest_extra.update({
        "model_id": card["id"], "model_version": card.get("version"), "synthetic": True,
        "synthetic_outputs": ["pet_ac", "uncertainty"], "k": k,
        "estimated_axial_shift_mm": None if res["shift_mm"] is None else round(res["shift_mm"], 1),
        "ct_match_similarity": None if res["match_similarity"] is None else round(res["match_similarity"], 3),
        "working_spacing_mm": card["preprocessing"]["working_spacing_mm"],
        "intended_use": card.get("intended_use", "research model, not for diagnosis")})
    return out


def predict_physics(images: dict[str, sitk.Image], params: dict, networks: dict, card: dict,
                    ctx: RunContext) -> dict[str, sitk.Image]:
    kvp, kvp_source = resolve_kvp(images["ct"], None)
    sf, sf_source = scatter_fraction_of(images["nac"], params.get("scatter_fraction", "auto"))
    res = physics_correct(images["nac"], images["ct"], networks, card, device=ctx.device, kvp=kvp,
                          scatter_fraction=sf, progress=ctx.progress.sub(0.05, 0.85, "physics AC"))
    warnings = []
    w = same_patient_warning(res["match_similarity"], card)
    if w:
        warnings.append(w)
    reg = res["registration"]
    if not reg["plausible"]:
        warnings.append(f"the CT had to be moved by {reg['shift_norm_mm']:.0f} mm to match the delayed NAC, "
                        "more than a patient moves between the scans of one study: check that the CT is "
                        "this patient's first scan of the same body region")
    for w in warnings:
        log.warning(w)
    if warnings:
        ctx.manifest_extra.setdefault("warnings", []).extend(warnings)
    ctx.manifest_extra.update({
        "method": "physics", "model_id": card["id"], "model_version": card.get("version"),
        "synthetic": True, "synthetic_outputs": ["pet_ac"],
        "estimated_axial_shift_mm": None if res["shift_mm"] is None else round(res["shift_mm"], 1),
        "registration": reg,
        "ct_match_similarity": None if res["match_similarity"] is None else round(res["match_similarity"], 3),
        "attenuation": f"Carney 2006 bilinear HU -> mu at 511 keV, {kvp:g} kVp ({kvp_source})",
        "scatter_fraction": sf, "scatter_fraction_source": sf_source,
        "intended_use": card.get("intended_use", "research model, not for diagnosis")})
    return {"pet_ac": res["pet"]}


# ------------------------------------------------------------------------------------------------
# retention index

def retention_rows(first_pet: sitk.Image, delayed_pet: sitk.Image, threshold: float,
                   radius_mm: float = MATCH_RADIUS_MM, min_ml: float = 0.5) -> list[dict]:
    """Hot regions (SUV >= threshold, >= min_ml) of the first AC PET; each region's SUVmax early and
    the delayed SUVmax within ``radius_mm`` of its centroid; retention index = (delayed - early) /
    early x 100 % (dual-time-point RI, PHYSICS.md §5)."""
    a = sitk.GetArrayFromImage(first_pet).astype(np.float32)
    lab, n = label(a >= threshold)
    sp = first_pet.GetSpacing()
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    d = sitk.GetArrayFromImage(delayed_pet).astype(np.float32)
    dz, dy, dx = np.meshgrid(*[np.arange(s) for s in d.shape], indexing="ij")
    rows = []
    for i in range(1, n + 1):
        m = lab == i
        vol = float(m.sum() * voxel_ml)
        if vol < min_ml:
            continue
        cz, cy, cx = center_of_mass(m)
        p = first_pet.TransformContinuousIndexToPhysicalPoint((float(cx), float(cy), float(cz)))
        q = delayed_pet.TransformPhysicalPointToContinuousIndex(p)
        dsp = delayed_pet.GetSpacing()
        near = (((dx - q[0]) * dsp[0]) ** 2 + ((dy - q[1]) * dsp[1]) ** 2
                + ((dz - q[2]) * dsp[2]) ** 2) <= radius_mm ** 2
        early = float(a[m].max())
        late = float(d[near].max()) if near.any() else float("nan")
        rows.append({"region": len(rows) + 1, "x_mm": round(p[0], 1), "y_mm": round(p[1], 1),
                     "z_mm": round(p[2], 1), "volume_ml": round(vol, 2), "suvmax_early": round(early, 3),
                     "suvmax_delayed": round(late, 3),
                     "retention_index_percent": round((late - early) / early * 100.0, 1)})
    return rows


def report(images: dict[str, sitk.Image], outputs: dict[str, sitk.Image], params: dict,
           model: tuple[dict, dict], ctx: RunContext) -> dict[str, Path]:
    """With the first AC PET: retention_index.csv (one row per hot region); else nothing."""
    if "first_pet" not in images:
        return {}
    rows = retention_rows(images["first_pet"], outputs["pet_ac"], float(params["lesion_threshold"]))
    path = ctx.out_dir / "retention_index.csv"
    cols = ["region", "x_mm", "y_mm", "z_mm", "volume_ml", "suvmax_early", "suvmax_delayed",
            "retention_index_percent"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    ctx.manifest_extra["retention_regions"] = len(rows)
    return {"retention_csv": path}
