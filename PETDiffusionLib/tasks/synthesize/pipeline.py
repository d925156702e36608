"""Task synthesize: demographics -> synthetic PET/CT with organ labels (TotalGen cascade).

Pipeline (methods/totalgen/synthesis.py): stage 1 samples a 16 mm clavicle-to-sacrum volume of CT,
PET and organ channels (indicators or signed distances, per the card) from the demographic channels (EDM, Heun); stage 2 adds the residual
diffusion super-resolution to 4 mm over overlapping z-chunks with Gaussian blending; the organ
labels come from the upsampled organ channels (and fat / bone from the synthetic CT). No image inputs.

Demographics outside the training population are refused with a message naming the value and the
range, unless ``allow_out_of_range`` is set: then the run proceeds and the manifest
(``out_of_range``, ``warnings``) and the report carry the warning. Everything written is synthetic.
Research model, not for diagnosis.
"""
from __future__ import annotations

import logging
from pathlib import Path

import SimpleITK as sitk
import torch

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.methods.totalgen.data import AGE_RANGE, BMI_RANGE, out_of_range
from PETDiffusionLib.methods.totalgen.synthesis import (OUTPUT_LABELS, box_image, organ_encoding,
                                                        synthesize)
from PETDiffusionLib.models.registry import load_model_folder
from PETDiffusionLib.report.pdf import make_report
from PETDiffusionLib.tasks.base import RunContext
from PETDiffusionLib.tasks.synthesize.spec import DEFAULT_CHURN, DEFAULT_SR_STEPS, MIN_SR_STEPS, MODEL_ID, SPEC

log = logging.getLogger(__name__)


def demographics(params: dict) -> tuple[float, str, float, float]:
    return (float(params["age"]), str(params["sex"]).upper(), float(params["height"]),
            float(params["weight"]))


def check_inputs(images: dict[str, sitk.Image], params: dict, ctx: RunContext) -> None:
    """No images; demographics inside the training population unless ``allow_out_of_range``."""
    if images:
        raise InputError(f"synthesize takes no image inputs (got {', '.join(sorted(images))})")
    sr_steps = int(params.get("sr_steps", DEFAULT_SR_STEPS))
    if 0 < sr_steps < MIN_SR_STEPS:
        raise InputError(f"parameter sr_steps: {sr_steps} stage-2 steps leave sampling noise that "
                         f"reads as SUV up to 25 in the organs; use 0 (linear upsampling) or at "
                         f"least {MIN_SR_STEPS}")
    problems = out_of_range(*demographics(params))
    ctx.manifest_extra["out_of_range"] = bool(problems)
    if not problems:
        return
    message = ("; ".join(problems) + f" (the model was trained on ages {AGE_RANGE[0]:g}-"
               f"{AGE_RANGE[1]:g}, BMI {BMI_RANGE[0]:g}-{BMI_RANGE[1]:g})")
    if not params.get("allow_out_of_range"):
        raise InputError(f"demographics outside the training population: {message}; pass "
                         "--allow-out-of-range to synthesize anyway (marked out of range)")
    warning = f"OUT OF TRAINING RANGE: {message}; the synthetic subject is an extrapolation"
    log.warning(warning)
    ctx.progress.log(warning, "warning")
    ctx.manifest_extra["warnings"] = [warning]


def load_model(model_path: str | Path | None = None, device: torch.device | str = "cpu"
               ) -> tuple[dict, dict]:
    """(networks, card) of a model folder, or of the shipped model when ``model_path`` is None."""
    return load_model_folder(model_path or MODEL_ID, device, task=SPEC.id)


def predict(images: dict[str, sitk.Image], params: dict, model: tuple[dict, dict], ctx: RunContext
            ) -> dict[str, sitk.Image]:
    """{"ct", "pet", "organs"} on the 4 mm box; the organ names go into the manifest."""
    networks, card = model
    age, sex, height, weight = demographics(params)
    seed = int(params["seed"])
    torch.manual_seed(seed)
    res = synthesize(networks, age, sex, height, weight, int(params["steps"]),
                     int(params["sr_steps"]), seed, s_churn=float(params.get("churn", DEFAULT_CHURN)),
                     progress=ctx.progress.sub(0.05, 0.85, "synthesize"),
                     encoding=organ_encoding(card))
    ctx.manifest_extra.update({
        "model_id": card["id"], "model_version": card.get("version"), "synthetic": True,
        "synthetic_outputs": ["ct", "pet", "organs"],
        "organ_labels": {str(k): v for k, v in OUTPUT_LABELS.items()},
        "demographics": {"age": age, "sex": sex, "height_cm": height, "weight_kg": weight,
                         "bmi": round(weight / (height / 100.0) ** 2, 2)},
        "grid": {"spacing_mm": card["preprocessing"]["hr_spacing_mm"],
                 "region": card["preprocessing"]["region"],
                 "note": "top slice (clavicle level) at z = 0 mm; LPS, z superior"},
        "intended_use": card.get("intended_use", "research model, not for diagnosis")})
    return {"ct": box_image(res.ct_hu),
            "pet": box_image(res.suv),
            "organs": box_image(res.organs, sitk.sitkUInt8)}


def report(images: dict[str, sitk.Image], outputs: dict[str, sitk.Image], params: dict,
           model: tuple[dict, dict], ctx: RunContext) -> dict[str, Path]:
    """organs.csv (volume, SUVmean, SUVmax per organ), report.pdf (synthetic banner), report.json
    and summary.json in ctx.out_dir."""
    _, card = model
    ctx.progress.update("organ table and report", 0.9)
    age, sex, height, weight = demographics(params)
    extra = {"demographics": f"{sex}, {age:g} y, {height:g} cm, {weight:g} kg",
             "steps": int(params["steps"]), "sr_steps": int(params["sr_steps"]),
             "churn": float(params.get("churn", DEFAULT_CHURN)),
             "seed": int(params["seed"]),
             "note": "SYNTHETIC subject generated from demographics; research model, not for "
                     "diagnosis"}
    if ctx.manifest_extra.get("warnings"):
        extra["warning"] = " | ".join(ctx.manifest_extra["warnings"])
    rep = make_report(ctx.out_dir, outputs["pet"], None, outputs["organs"], OUTPUT_LABELS,
                      task=SPEC.id, model_id=card["id"], model_version=card.get("version"),
                      synthetic=True, extra=extra)
    ctx.manifest_extra["report_files"] = sorted(Path(p).name for p in rep.values())
    return {("report" if k == "report_pdf" else k): Path(p) for k, p in rep.items()}
