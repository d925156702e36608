"""The recipe's export stage: model folders of STMDiff (the config's ``export``, k = ``default_k``)
and of its ablations and baseline under ``run_dir/models/`` (stmdiff-k<K>, stmdiff-unet), where
``petdiffusion evaluate dual-timepoint-ac --baselines`` finds them."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from PETDiffusionLib.methods.stmdiff.intensities import NAC_GAIN
from PETDiffusionLib.methods.stmdiff.losses import TAU
from PETDiffusionLib.models.registry import save_model_folder
from PETDiffusionLib.training.loop import stage_done
from PETDiffusionLib.training.recipes.dual_timepoint_ac.stages import load_stage_nets, network_specs

log = logging.getLogger(__name__)


def _summary(run_dir: Path, stage: str) -> dict:
    p = run_dir / stage.replace(":", "_") / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def export(cfg: dict, run_dir: Path, command: str) -> dict:
    sp = network_specs(cfg)
    match = load_stage_nets(run_dir, "matching", {"g1": sp["g1"], "g2": sp["g2"]})
    ae = load_stage_nets(run_dir, "autoencoder", {"autoencoder": sp["autoencoder"]})
    lat = _summary(run_dir, "latents")
    stages = {s: _summary(run_dir, s) for s in ["prepare", "matching", "autoencoder", "latents", "unet"]
              + [f"{s}:k{k}" for k in cfg["diffusion"]["k_values"] for s in ("diffusion", "decoder", "detail")]}
    stages = {s: v for s, v in stages.items() if v or not s.startswith(("decoder", "detail"))}
    stages["prepare"] = {"cases": stages["prepare"].get("cases")}
    written = []
    default_k = int(cfg["default_k"])
    for k in cfg["diffusion"]["k_values"]:
        stage = f"diffusion:k{k}"
        if not stage_done(run_dir, stage):
            continue
        den = load_stage_nets(run_dir, stage, {"denoiser": sp[stage]})
        # the decoder fine-tuned on this diffusion's latents, when the run has that stage
        own_ae = (load_stage_nets(run_dir, f"decoder:k{k}", {"autoencoder": sp["autoencoder"]})
                  if stage_done(run_dir, f"decoder:k{k}") else ae)
        nets = {**match, **own_ae, **den}
        if stage_done(run_dir, f"detail:k{k}"):  # the NAC-guided refinement head of this diffusion
            nets |= load_stage_nets(run_dir, f"detail:k{k}", {"detail": sp[f"detail:k{k}"]})
        folder = Path(cfg["export"]) if int(k) == default_k else run_dir / "models" / f"stmdiff-k{k}"
        card = model_card(cfg, folder.name, int(k), lat, stages, command)
        if "detail" in nets:
            card["detail_head"] = ("not in the paper: networks.DetailHead refines each decoded slice from "
                                   "the NAC slice at full resolution (the NAC and AC images share the "
                                   "counts, so their noise texture; the 1/4-resolution latent loses it)"
                                   + (f"; it also sees the {nets['detail'].ct_slices} matched first-scan CT "
                                      "slices at full resolution (detail.ct_prior)" if nets["detail"].ct_slices else ""))
        card["networks"] = {n: (sp["g1"] if n in ("g1", "g2") else sp[n] if n == "autoencoder"
                                else sp[f"detail:k{k}"] if n == "detail" else sp[stage]) for n in nets}
        save_model_folder(folder, nets, card)
        written.append(str(folder))
    if stage_done(run_dir, "unet"):
        unet = load_stage_nets(run_dir, "unet", {"unet": sp["unet"]})
        folder = run_dir / "models" / "stmdiff-unet"
        card = model_card(cfg, folder.name, 0, lat, stages, command)
        card["diffusion"] = {"kind": "unet"}
        card["networks"] = {"unet": sp["unet"]}
        save_model_folder(folder, unet, card)
        written.append(str(folder))
    return {"model_folders": written}


def model_card(cfg: dict, model_id: str, k: int, lat: dict, stages: dict, command: str) -> dict:
    feature_weight = float(cfg["matching"].get("feature_ct_weight", 0.0))
    n_cases = len((stages.get("prepare") or {}).get("cases") or []) or "the"
    return {
        "id": model_id, "task": "dual-timepoint-ac", "version": cfg.get("version", "0.1.0"),
        "variant": f"k{k}",
        "intended_use": "research model, not for diagnosis. Trained only on simulated phantoms; its "
                        "attenuation-corrected PET is synthetic and must never replace a measured one.",
        "paper": "STMDiff, Li et al. (dual-time-point total-body PET/CT), seeds/STMDiff_dual_time_point_AC",
        "preprocessing": {
            "working_spacing_mm": cfg["working_spacing_mm"], "slice_size_train": cfg["slice_size"],
            "orientation": "LPS (DICOMOrient), axial slices", "k": k,
            "latent_scale": lat.get("latent_scale"),
            "ct": "clip HU to [-1024, 3071], divide by 1000 (methods.cpdm.intensities)",
            "pet": "AC: 2 log(1+SUV)/log(11) - 1; NAC: the same of NAC_GAIN x NAC (SUV units)",
            "nac_gain": NAC_GAIN},
        "diffusion": {"kind": "latent_ddim", "num_train_timesteps": cfg["diffusion"]["num_train_timesteps"],
                      "schedule": cfg["diffusion"]["schedule"], "prediction": cfg["diffusion"].get("prediction", "epsilon"),
                      "default_steps": int(cfg.get("default_steps", 10)), "sampler": "ddim (eta 0: ODE)"},
        "matching": {"loss": f"symmetric InfoNCE (Eq. 1, s = -L1 of unit latents, tau = {TAU}) + contour Dice (Eq. 2)"
                             + (f" + {feature_weight:g} x L1(mean of G2's feature map, CT at the latent grid): "
                                "trains the CT prior's head, which neither loss of the paper reaches"
                                if feature_weight > 0 else ""),
                     "training_retrieval_top_k": lat.get("training_retrieval_top_k")},
        "training": {"data": f"{cfg['cohort']} (simulated phantom cohort with delayed scans and motion)",
                     "config": cfg, "command": command, "stages": stages},
        "evaluation": {},
        "limitations": [
            f"trained on {n_cases} simulated {cfg['slice_size']}x{cfg['slice_size']}-slice phantoms "
            f"({cfg['working_spacing_mm'][0]:g} mm pixels, {cfg['working_spacing_mm'][2]:g} mm slices) on the CPU "
            "for minutes; the paper trains on 56,532 real total-body slices",
            "a small autoencoder trained here stands in for Stable Diffusion's fine-tuned VAE; its "
            "reconstruction error bounds every result",
            "never checked on a real dual-time-point study (the project has none)",
        ],
    }
