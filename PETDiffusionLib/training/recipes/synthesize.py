"""Training recipe for the synthesize task (TotalGen, Yoon et al. 2025: cascaded 3D EDM).

    petdiffusion train synthesize --config configs/synthesize.json [--resume] [--stage S]

Stages (``training.loop.run_stages``, one folder each in ``run_dir``):

    prepare   the simulator's demographic population -> clavicle-to-sacrum HR boxes at 4 mm
              (methods/totalgen/data.py) for the training and the held-out cohorts
    global    stage 1: 3D EDM U-Net on the 16 mm stratified sub-samplings (CT, PET, organ groups)
              conditioned on the demographic channels (EDM loss, Karras et al. 2022 eq. 2)
    sr        stage 2: 3D EDM U-Net on the residual HR - upsample(LR) of 4 mm patches, conditioned on
              the upsampled LR, position and demographic channels (TotalGen eq. 4)
    export    one model folder with both networks and the card

Both networks train through ``training.loop.Trainer`` with batch functions seeded by step (a
resumed stage sees the same data), EMA, gradient clipping and a constant learning rate.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from PETDiffusionLib.diffusion.edm import EDM, RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.methods.totalgen import batches
from PETDiffusionLib.methods.totalgen.data import (AGE_RANGE, BMI_RANGE, FACTOR, HR_SHAPE,
                                                   HR_SPACING_MM, LR_SHAPE, ORGAN_CHANNELS,
                                                   ORGAN_ENCODINGS, REGION_BOTTOM_FRACTION,
                                                   REGION_TOP_FRACTION, SDF_CLIP_MM, load_cohort,
                                                   organ_sdf_unit, prepare_cohort)
from PETDiffusionLib.methods.totalgen.intensities import (CT_HU_MAX, CT_HU_MIN, SUV_MAX,
                                                          demographic_channels)
from PETDiffusionLib.methods.totalgen.networks import unet_spec
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.models.registry import save_model_folder
from PETDiffusionLib.training.loop import (Stage, TrainConfig, TrainOptions, Trainer,
                                           train_in_stages)

log = logging.getLogger(__name__)

N_DEMO = 4
N_POS = 3


def network_specs(cfg: dict) -> dict[str, dict]:
    g, s = cfg["global"], cfg["sr"]
    n_data = 2 + len(ORGAN_CHANNELS)
    return {"global": unet_spec(n_data + N_DEMO, n_data, g["base"], g["mults"],
                                norm=g.get("norm", "pixel"),
                                standardise=bool(g.get("standardise", False))),
            "sr": unet_spec(2 + 2 + N_POS + N_DEMO, 2, s["base"], s["mults"],
                            full_res_blocks=bool(s.get("full_res_blocks", False)),
                            norm=s.get("norm", "pixel"))}


def _trainer(cfg: dict, block: dict, folder: Path, name: str, net, loss_fn, batch_fn,
             options: TrainOptions) -> Trainer:
    tc = {"lr": block["lr"], "max_steps": block["steps"], "warmup": block.get("warmup", 0),
          "min_lr_ratio": block.get("min_lr_ratio", 1.0), "ema_decay": block.get("ema_decay", 0.99),
          "seed": cfg["seed"],
          "num_threads": cfg.get("threads", 1), "progress_bar": False, "log_every": 10,
          "device": options.device or "cpu", **cfg.get("trainer", {})}
    if "max_minutes" in block:
        tc["max_minutes"] = block["max_minutes"]
    return Trainer(TrainConfig.from_dict(tc), {name: net}, loss_fn, batch_fn, run_dir=folder)


def _fit(trainer: Trainer, options: TrainOptions, name: str) -> dict:
    resume = options.resume and (trainer.run_dir / "checkpoint" / "state.pt").is_file()
    logs = trainer.fit(resume=resume)
    losses = [json.loads(line)["loss"] for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    tail = losses[-5:]
    return {"network": name, "steps": trainer.step, "final_loss": logs.get("loss"),
            "loss_first": losses[0] if losses else None,
            "loss_last5_mean": sum(tail) / len(tail) if tail else None}


STD_FLOOR = 0.05
"""Smallest per-channel SD used to standardise (network units): keeps a channel that is nearly
constant in the training data (an organ absent from most boxes) from being blown up."""


def channel_statistics(arrays: list[dict], std_floor: float = STD_FLOOR
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and SD (network units, 2u - 1) over every voxel of the training subjects'
    HR boxes (the 64 stratified LR sub-samplings of a box hold exactly its voxels); the SD is
    floored at ``std_floor``."""
    total = None
    count = 0
    for a in arrays:
        x = batches.hr_channels(a).reshape(len(ORGAN_CHANNELS) + 2, -1).astype(np.float64) * 2 - 1
        moments = np.stack([x.sum(1), (x * x).sum(1)])
        total = moments if total is None else total + moments
        count += x.shape[1]
    mean = total[0] / count
    std = np.sqrt(np.maximum(total[1] / count - mean ** 2, 0.0))
    return (torch.tensor(mean, dtype=torch.float32),
            torch.tensor(np.maximum(std, std_floor), dtype=torch.float32))


def organ_encoding(block: dict) -> str:
    """The stage-1 block's ``organ_encoding`` (data.ORGAN_ENCODINGS; "indicator" when absent)."""
    enc = block.get("organ_encoding", "indicator")
    if enc not in ORGAN_ENCODINGS:
        raise InputError(f"global.organ_encoding: {enc!r} is not one of {', '.join(ORGAN_ENCODINGS)}")
    return enc


def encode_organs(arrays: list[dict], block: dict) -> dict:
    """Give every subject its signed-distance organ channels (``organ_unit``) when the block asks
    for them; the summary's encoding fields."""
    enc = organ_encoding(block)
    if enc != "sdf":
        return {"organ_encoding": enc}
    clip = float(block.get("sdf_clip_mm", SDF_CLIP_MM))
    t0 = time.monotonic()
    for a in arrays:
        a["organ_unit"] = organ_sdf_unit(a["groups"], clip)
    log.info("signed-distance organ channels of %d subjects (%.0f s)", len(arrays), time.monotonic() - t0)
    return {"organ_encoding": enc, "sdf_clip_mm": clip}


def train_global(cfg: dict, options: TrainOptions, folder: Path) -> dict:
    block = cfg["global"]
    arrays, infos = load_cohort(cfg["train_dir"])
    encoding = encode_organs(arrays, block)
    net = build_network(network_specs(cfg)["global"], "global")
    start = {}
    if block.get("init_from"):
        # fine-tune: the weights of another model's stage 1 (same architecture); its data
        # statistics are not kept, they are computed again below with this block's floor
        state = load_file(str(Path(block["init_from"]) / "model.safetensors"))
        own = net.state_dict()
        weights = {k[len("global."):]: v for k, v in state.items() if k.startswith("global.")
                   and k[len("global."):] not in ("data_mean", "data_std")}
        missing = sorted(set(own) - set(weights) - {"data_mean", "data_std"})
        if missing or any(own[k].shape != v.shape for k, v in weights.items() if k in own):
            raise InputError(f"{block['init_from']}: its stage-1 network does not match the "
                             f"configured one ({len(missing)} tensors missing or of another shape)")
        net.load_state_dict(weights, strict=False)
        start = {"init_from": str(block["init_from"])}
        log.info("stage 1 initialised from %s", block["init_from"])
    stats = {}
    if getattr(net, "standardise", False):
        mean, std = channel_statistics(arrays, float(block.get("std_floor", STD_FLOOR)))
        net.data_mean.copy_(mean)
        net.data_std.copy_(std)
        stats = {"channel_mean": [round(float(v), 4) for v in mean],
                 "channel_std": [round(float(v), 4) for v in std]}
        log.info("stage 1 standardised: mean %s, SD %s", stats["channel_mean"], stats["channel_std"])
    edm = EDM()

    def batch_fn(step, rng):
        b = batches.global_batch(arrays, infos, block["batch"], rng)
        if stats:
            b["x0"] = net.to_standard(b["x0"])
        return b

    def loss_fn(batch, nets, info):
        x0 = batch["x0"]
        cond = demographic_channels(batch["demo"], tuple(x0.shape[2:]))
        g = info.generator
        sigma = (torch.randn(x0.shape[0], generator=g) * edm.p_std + edm.p_mean).exp()
        noise = torch.randn(x0.shape, generator=g)
        loss = edm.training_loss(nets["global"], x0, cond, sigma=sigma, noise=noise)
        return loss, {}

    tr = _trainer(cfg, block, folder, "global", net, loss_fn, batch_fn, options)
    return {**_fit(tr, options, "global"), "subjects": len(arrays),
            "lr_volumes": len(arrays) * FACTOR ** 3, **encoding, **stats, **start}


def train_sr(cfg: dict, options: TrainOptions, folder: Path) -> dict:
    block = cfg["sr"]
    arrays, infos = load_cohort(cfg["train_dir"])
    net = build_network(network_specs(cfg)["sr"], "sr")
    edm = EDM()

    def batch_fn(step, rng):
        return batches.sr_batch(arrays, infos, block["batch"], block["patch"], rng)

    def loss_fn(batch, nets, info):
        high, up = batch["high"], batch["up"]
        g = info.generator
        sigma = (torch.randn(high.shape[0], generator=g) * edm.p_std + edm.p_mean).exp()
        noise = torch.randn(high.shape, generator=g)
        # ResidualSuperResolution's convention: condition = [upsampled LR, position, demographics]
        loss = edm.training_loss(nets["sr"], high - up, torch.cat([up, batch["cond"]], 1),
                                 sigma=sigma, noise=noise)
        return loss, {}

    tr = _trainer(cfg, block, folder, "sr", net, loss_fn, batch_fn, options)
    return {**_fit(tr, options, "sr"), "patch": block["patch"]}


def _ema_network(cfg: dict, run_dir: Path, name: str):
    net = build_network(network_specs(cfg)[name], name)
    if name == "sr" and cfg.get("sr_from"):
        # stage 2 reused from a shipped model folder (its weights and card) instead of retrained
        state = load_file(str(Path(cfg["sr_from"]) / "model.safetensors"))
    else:
        state = load_file(str(run_dir / name / "checkpoint" / "ema.safetensors"))
    prefix = f"{name}."
    net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return net


def _sr_summary(cfg: dict, run_dir: Path) -> dict:
    """The sr stage's summary: its own, or that of the card it is reused from (``sr_from``)."""
    if cfg.get("sr_from"):
        card = json.loads((Path(cfg["sr_from"]) / "card.json").read_text())
        return {**card["training"]["stages"]["sr"], "reused_from": f"{card['id']} {card['version']}"}
    return json.loads((run_dir / "sr" / "summary.json").read_text())


def export(cfg: dict, run_dir: Path, command: str) -> dict:
    summaries = {"global": json.loads((run_dir / "global" / "summary.json").read_text()),
                 "sr": _sr_summary(cfg, run_dir)}
    nets = {n: _ema_network(cfg, run_dir, n) for n in ("global", "sr")}
    card = {
        "id": cfg["model_id"], "task": "synthesize", "version": cfg.get("version", "0.1.0"),
        "variant": "totalgen-cascade",
        "paper": "TotalGen: Yoon et al. 2025, cascaded 3D diffusion models for whole-body 18F-FDG "
                 "PET/CT synthesis from demographics",
        "intended_use": "research model, not for diagnosis. Trained only on simulated phantoms; "
                        "every image it writes is synthetic.",
        "preprocessing": {
            "hr_spacing_mm": HR_SPACING_MM, "hr_shape_zyx": list(HR_SHAPE),
            "lr_shape_zyx": list(LR_SHAPE), "factor": FACTOR,
            "lr_spacing_mm": HR_SPACING_MM * FACTOR,
            "region": f"clavicle ({REGION_TOP_FRACTION} H below the vertex) to sacrum "
                      f"({REGION_BOTTOM_FRACTION} H), zero-padded below; array z index 0 at the top",
            "ct": f"clip to [{CT_HU_MIN}, {CT_HU_MAX}] HU, linear to [0, 1]",
            "pet": f"SUV clipped to [0, {SUV_MAX}], log(SUV + 1) / log({SUV_MAX + 1:g})",
            "network_units": "2u - 1 for every [0, 1] channel",
            "demographics": "age/100, sex (1 male, 0 female), height_cm/100, weight_kg/100",
            "organ_channels": [name for name, _ in ORGAN_CHANNELS],
            "organ_encoding": organ_encoding(cfg["global"]),
            **({"sdf_clip_mm": float(cfg["global"].get("sdf_clip_mm", SDF_CLIP_MM)),
                "organ_decoding": "signed distance, cubic B-spline upsampled to the HR grid, "
                                  "organ where > 0 mm (the most inside organ)"}
               if organ_encoding(cfg["global"]) == "sdf" else
               {"organ_decoding": "indicator, linearly upsampled to the HR grid, organ where > 0.5"}),
            "training_range": {"age": list(AGE_RANGE), "bmi": list(BMI_RANGE),
                               "height_cm": cfg.get("height_range_cm", [150.0, 195.0]),
                               "weight_kg": cfg.get("weight_range_kg", [40.0, 150.0])},
        },
        "diffusion": {"kind": "edm", "sigma_data": SIGMA_DATA, "sigma_min": SIGMA_MIN,
                      "sigma_max": SIGMA_MAX, "rho": RHO, "sampler": "heun",
                      "default_steps": cfg.get("default_steps", 18),
                      "default_sr_steps": cfg.get("default_sr_steps", 6)},
        "training": {"data": f"{cfg['train_dir']} (simulator demographic population, "
                             f"{summaries['global'].get('subjects')} subjects x 64 LR volumes)",
                     "command": command, "stages": summaries, "config": cfg},
    }
    folder = Path(cfg["export"])
    save_model_folder(folder, nets, card)
    return {"folder": str(folder)}


def build_stages(cfg: dict, options: TrainOptions) -> list[Stage]:
    run_dir = Path(options.run_dir or cfg["run_dir"])
    command = options.command("synthesize")

    def prepare(d: Path) -> dict:
        return {"train": prepare_cohort(cfg["train_dir"], cfg["train_subjects"], cfg["train_seed"]),
                "heldout": prepare_cohort(cfg["heldout_dir"], cfg["heldout_subjects"],
                                          cfg["heldout_seed"])}

    return [Stage("prepare", prepare, rank0_only=True),
            Stage("global", lambda d: train_global(cfg, options, d)),
            *([] if cfg.get("sr_from") else [Stage("sr", lambda d: train_sr(cfg, options, d))]),
            Stage("export", lambda d: export(cfg, run_dir, command), rank0_only=True)]


def train(config: dict, options: TrainOptions | None = None) -> int:
    """Entry point of ``petdiffusion train synthesize``."""
    return train_in_stages(config, options, build_stages)
