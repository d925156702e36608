"""The recipe's export stage: model folders (card.json + model.safetensors) of CPDM and its baselines.

The CPDM folder goes to the config's ``export``; the ablations and the regression baseline to
``run_dir/models/cpdm-<variant>`` (where ``petdiffusion evaluate ct-to-pet --baselines`` finds them).
All share the run's autoencoder and attention network.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from PETDiffusionLib.methods.cpdm.intensities import (CT_HU_MAX, CT_HU_MIN, CT_HU_SCALE, MU_MAP_CENTRE,
                                                      MU_MAP_GAIN, PET_SUV_REF, TISSUE_HU_EDGES)
from PETDiffusionLib.methods.cpdm.networks import latent_factor
from PETDiffusionLib.methods.cpdm.transforms import AUG_DEFAULTS, augment_config
from PETDiffusionLib.models.registry import save_model_folder
from PETDiffusionLib.training.loop import stage_done
from PETDiffusionLib.training.recipes.ct_to_pet.stages import (BRIDGE_STAGES, load_stage_net,
                                                               network_specs, variant_of)

log = logging.getLogger(__name__)

TRAINED_STAGES = ["autoencoder", "attention"] + BRIDGE_STAGES


def export(cfg: dict, run_dir: Path, command: str) -> dict:
    """The shipped CPDM folder (cfg['export']) and one folder per ablation under run_dir/models."""
    sp = network_specs(cfg)
    ae = load_stage_net(run_dir, "autoencoder", "autoencoder", sp["autoencoder"])
    att = load_stage_net(run_dir, "attention", "attention", sp["attention"])
    lat_info = json.loads((run_dir / "latents" / "summary.json").read_text())
    floor = json.loads((run_dir / "prepare" / "floor.json").read_text())
    summaries = {s: json.loads((run_dir / s.replace(":", "_") / "summary.json").read_text())
                 for s in TRAINED_STAGES if stage_done(run_dir, s)}
    written = []
    for stage in BRIDGE_STAGES:
        if not stage_done(run_dir, stage):
            log.warning("export: stage %s not trained; skipped", stage)
            continue
        variant, use_sigma, use_mu = variant_of(stage)
        net = load_stage_net(run_dir, stage, "denoiser", sp[stage])
        card = model_card(cfg, variant, use_sigma, use_mu, lat_info, floor, summaries, command)
        card["networks"] = {"autoencoder": sp["autoencoder"], "attention": sp["attention"],
                            "denoiser": sp[stage]}
        card["training"]["cases"] = sorted(f.stem for f in (run_dir / "prepare").glob("*.npz"))
        early = run_dir / "prepare_stage1"  # the 0.1.0 chain: see the shipped card's training notes
        if early.is_dir():
            card["training"]["autoencoder_attention_cases"] = (
                sorted(f.stem for f in early.glob("*.npz")) + [
                    "note: the autoencoder and the attention U-Net were trained on these cases of an "
                    "earlier run of the same simulator (regenerated afterwards with a faster OSEM and "
                    "kidney parenchyma); latents, bridges and baselines use 'cases'"])
        folder = (Path(cfg["export"]) if variant == "cpdm"
                  else run_dir / "models" / f"cpdm-{variant.replace('_', '-')}")
        save_model_folder(folder, {"autoencoder": ae, "attention": att, "denoiser": net}, card)
        written.append(str(folder))
    return {"model_folders": written}


def model_card(cfg: dict, variant: str, use_sigma: bool, use_mu: bool, lat_info: dict, floor: dict,
               summaries: dict, command: str) -> dict:
    model_id = Path(cfg["export"]).name if variant == "cpdm" else f"cpdm-{variant.replace('_', '-')}"
    aug, real = augment_config(cfg), cfg.get("real_pairs") or {}
    mixed = float(real.get("fraction", 0.0)) > 0
    data = f"{cfg['cohort']} (simulated phantom cohort), target {cfg.get('target', 'pet_ac.nii.gz')}"
    if mixed:
        data += (f"; bridge batches {real['fraction']:.0%} real FDG PET/CT sarcoma crops "
                 f"({real['root']}: {', '.join(real['train_cases'])})")
    return {
        "id": model_id, "task": "ct-to-pet", "version": cfg.get("version", "0.1.0"),
        "variant": variant,
        "intended_use": "research model, not for diagnosis. Trained " + (
            "mostly on simulated phantoms (plus a few real sarcoma PET/CT crops in the bridge); "
            if mixed else "only on simulated phantoms; ") +
            "its PET is synthetic and must never replace a measured PET.",
        "paper": "CPDM, Nguyen et al. 2024, arXiv:2410.21932",
        "preprocessing": {
            "working_spacing_mm": cfg["working_spacing_mm"], "slice_size_train": cfg["slice_size"],
            "context_slices": cfg["context"], "orientation": "LPS (DICOMOrient), axial slices",
            "ct": f"clip HU to [{CT_HU_MIN}, {CT_HU_MAX}], divide by {CT_HU_SCALE}",
            "pet": f"2 log(1+SUV)/log(1+{PET_SUV_REF}) - 1; inverse exact; no upper clip",
            "latent_scale": lat_info["latent_scale"],
            "latent_factor": latent_factor(cfg["autoencoder"]["channels"]),
            "attention_suv_threshold": cfg["attention_suv_threshold"],
            "attenuation": "M_mu = exp(-mu), mu from HU by Abella 2012 trilinear (PHYSICS.md §3); "
                           f"fed as (M_mu - {MU_MAP_CENTRE}) * {MU_MAP_GAIN}",
            "use_sigma": use_sigma, "use_mu": use_mu,
            "tissue_floor_suv": floor, "tissue_hu_edges": list(TISSUE_HU_EDGES)},
        "diffusion": {"kind": "brownian_bridge" if variant != "regression" else "none (regression)",
                      "num_train_timesteps": cfg["bridge"]["num_train_timesteps"],
                      "max_var": cfg["bridge"]["max_var"], "objective": cfg["bridge"]["objective"],
                      "default_steps": cfg.get("default_steps", 20), "eta": cfg["bridge"].get("eta", 1.0)},
        "training": {"data": data, "config": cfg, "command": command, "stages": summaries,
                     "augmentation": ({**AUG_DEFAULTS, **aug, "applied_to": (
                         "CT inputs of the autoencoder and attention stages (one draw per sample) "
                         "and latent_copies - 1 augmented copies of every case in the latents "
                         "stage (one draw per volume; geometry applied to PET too)")}
                         if aug else None)},
        "evaluation": {},
        "limitations": [
            "trained on a few simulated phantom cases on one CPU core for minutes (see training); "
            "the paper trains for 200 epochs on 15,000 real slice pairs",
            "a KL autoencoder (MONAI AutoencoderKL) stands in for CPDM's pre-trained VQGAN; its "
            "reconstruction error (training.stages.autoencoder.reconstruction) bounds every result",
            "FDG uptake that the CT does not show (lesions, brown fat, inflammation) cannot be "
            "predicted from CT: a synthetic PET must never be read as a measured one",
            "the U-Net attention backbone is a small MONAI BasicUNet, not the paper's ResNet50 U-Net",
        ],
    }
