"""The recipe's network stages, each trained by ``training.loop.Trainer`` in its own folder:

    autoencoder  one KL autoencoder for CT and PET slices (CPDM §4.1: one encoder/decoder for both);
                 L1 reconstruction + kl_weight * KL to N(0, I)
    attention    M_sigma U-Net, Dice loss on masks PET SUV > attention_suv_threshold (CPDM §4.2)
    latents      (no training) every slice encoded; attention and attenuation maps pooled to the
                 latent grid; the latent scale factor
    bridge:<v>   the Brownian-bridge denoiser for variant v in cpdm | no_sigma | no_mu (CPDM Alg. 1,
                 'grad' objective, L1 loss; the two ablations of CPDM Table 4)
    regression   the plain U-Net regression baseline: the same network class and size, the same
                 latents, maps, steps, batch and seed, predicting the PET latent directly (t = 0)

Batches come from batch functions ``batch_fn(step, rng)`` (random slices and crops drawn from the
Trainer's per-step generator, so a resumed stage sees the same data); learning rates are constant
(``min_lr_ratio`` 1.0, no warm-up, as the recipe always trained), gradients are clipped at
``trainer.grad_clip`` (default 1.0). The autoencoder and attention stages keep no moving average
(``ema_decay`` 0: the exported weights are the last ones); the bridges use ``ema_decay`` 0.999.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss
from safetensors.torch import load_file

from PETDiffusionLib.diffusion.bridge import BrownianBridge
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.methods.cpdm.intensities import (BODY_HU, CT_HU_MAX, CT_HU_MIN, CT_HU_SCALE,
                                                      attention_target, attenuation_condition,
                                                      body_slices, ct_to_net, net_to_pet, pet_to_net)
from PETDiffusionLib.methods.cpdm.latents import ct_stacks, latent_condition, neighbour_indices
from PETDiffusionLib.methods.cpdm.networks import (attention_unet_spec, autoencoder_spec,
                                                   bridge_unet_spec, downsample_map, latent_factor)
from PETDiffusionLib.methods.cpdm.transforms import (augment_config, augment_ct, augment_params,
                                                     random_crops)
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.quant.metrics import dice
from PETDiffusionLib.training.loop import StepInfo, TrainConfig, Trainer, TrainOptions
from PETDiffusionLib.training.recipes.ct_to_pet.data import load_slices

log = logging.getLogger(__name__)

VARIANTS = {  # variant -> (use M_sigma, use M_mu); CPDM Table 4 rows
    "cpdm": (True, True),
    "no_sigma": (False, True),
    "no_mu": (True, False),
}
BRIDGE_STAGES = [f"bridge:{v}" for v in VARIANTS] + ["regression"]
LATENT_BATCH = 64  # slices per encoder call in the latents stage


def network_specs(cfg: dict) -> dict[str, dict]:
    """{stage: {"class", "args"}} of every network the recipe trains (the card stores these)."""
    ae, at, br = cfg["autoencoder"], cfg["attention"], cfg["bridge"]
    out = {"autoencoder": autoencoder_spec(ae["channels"], ae["latent_channels"]),
           "attention": attention_unet_spec(cfg["context"], at["features"])}
    for v, (s, m) in VARIANTS.items():
        out[f"bridge:{v}"] = bridge_unet_spec(ae["latent_channels"], cfg["context"], s, m, br["channels"])
    out["regression"] = bridge_unet_spec(ae["latent_channels"], cfg["context"], True, True, br["channels"])
    return out


def variant_of(stage: str) -> tuple[str, bool, bool]:
    """bridge:no_mu -> ("no_mu", True, False); regression -> ("regression", True, True)."""
    variant = stage.split(":")[-1]
    return (variant, *VARIANTS.get(variant, (True, True)))


# ------------------------------------------------------------------------------------------------
# the Trainer of one stage

def fit_stage(cfg: dict, options: TrainOptions, folder: Path, name: str, net: nn.Module,
              block: dict, loss_fn, batch_fn, ema_decay: float) -> tuple[Trainer, dict]:
    """Train ``net`` (called ``name``) for ``block["steps"]`` at constant ``block["lr"]`` in
    ``folder``; resumes the folder's checkpoint with ``options.resume``. Returns the Trainer (its
    ``ema`` are the weights to use) and the stage summary."""
    settings = {"lr": float(block["lr"]), "max_steps": int(block["steps"]), "warmup": 0,
                "min_lr_ratio": 1.0, "ema_decay": float(ema_decay), "seed": int(cfg["seed"]),
                "num_threads": int(cfg.get("threads", 1)), "log_every": 50,
                "device": options.device or cfg.get("device", "auto"), **cfg.get("trainer", {})}
    trainer = Trainer(TrainConfig.from_dict(settings), {name: net}, loss_fn, batch_fn, run_dir=folder)
    has_checkpoint = (trainer.checkpoint_dir / "state.pt").is_file()
    t0 = time.monotonic()
    trainer.fit(resume=bool(options.resume and has_checkpoint))
    if trainer.step < trainer.config.max_steps:  # the max_minutes limit: not done, no summary
        raise InputError(f"stage {folder.name} stopped at step {trainer.step} of "
                         f"{trainer.config.max_steps} (trainer.max_minutes); run the same command "
                         "with --resume to continue", folder)
    recs = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()
            if x.strip() and "loss" in json.loads(x)]
    summary = {"steps": trainer.step, "seconds": round(time.monotonic() - t0, 1),
               "final_loss": recs[-1]["loss"] if recs else None,
               "first_loss": recs[0]["loss"] if recs else None,
               "parameters": int(sum(p.numel() for p in net.parameters()))}
    return trainer, summary


def load_stage_net(run_dir: Path, stage: str, name: str, spec: dict) -> nn.Module:
    """A trained network of an earlier stage: its EMA weights from ``<stage>/checkpoint``."""
    path = Path(run_dir) / stage.replace(":", "_") / "checkpoint" / "ema.safetensors"
    if not path.is_file():
        raise InputError(f"stage {stage} has not been trained (no {path.name})", path.parent)
    net = build_network(spec)
    prefix = f"{name}."
    net.load_state_dict({k[len(prefix):]: v for k, v in load_file(str(path)).items()
                         if k.startswith(prefix)}, strict=True)
    return net.eval()


# ------------------------------------------------------------------------------------------------
# autoencoder and attention

def train_autoencoder(cfg: dict, options: TrainOptions, run_dir: Path, folder: Path) -> dict:
    c = cfg["autoencoder"]
    torch.manual_seed(cfg["seed"])
    ae = build_network(network_specs(cfg)["autoencoder"])
    ct, pet, _ = load_slices(run_dir / "prepare")
    ct_n, pet_n = ct_to_net(ct), pet_to_net(pet)
    keep = body_slices(ct)
    aug = augment_config(cfg)

    def batch_fn(step: int, rng: np.random.Generator) -> torch.Tensor:
        i = rng.choice(keep, c["batch"])
        a, b = random_crops([ct_n, pet_n], i, c["crop"], rng)
        if aug:  # the autoencoder must also encode noisy/blurred/shifted CTs faithfully
            ct_aug = np.stack([augment_ct(ct[k:k + 1], [], augment_params(rng, aug))[0][0] for k in i])
            a = random_crops([ct_to_net(ct_aug)], np.arange(len(i)), c["crop"], rng)[0]
        return torch.cat([a, b])[:, None]  # CT and PET slices through the same autoencoder

    def loss_fn(x, nets):
        recon, mu, sigma = nets["autoencoder"](x)
        l1 = F.l1_loss(recon, x)
        # KL to N(0, I) (MONAI generative tutorials' AutoencoderKL loss, weight 1e-6 there)
        kl = 0.5 * torch.mean(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1)
        return l1 + c["kl_weight"] * kl, {"l1": l1.detach(), "kl": kl.detach()}

    trainer, summary = fit_stage(cfg, options, folder, "autoencoder", ae, c, loss_fn, batch_fn, 0.0)
    # reconstruction error on whole training slices, in physical units (the card states it)
    ae, dev = trainer.ema["autoencoder"], trainer.device
    i = np.random.default_rng(123).choice(keep, min(64, len(keep)), replace=False)
    with torch.no_grad():
        rc = ae.decode(ae.encode(torch.from_numpy(ct_n[i])[:, None].to(dev))[0]).cpu().numpy()[:, 0]
        rp = ae.decode(ae.encode(torch.from_numpy(pet_n[i])[:, None].to(dev))[0]).cpu().numpy()[:, 0]
    hu_err = np.abs(rc * CT_HU_SCALE - np.clip(ct[i], CT_HU_MIN, CT_HU_MAX))
    suv_err = np.abs(net_to_pet(rp) - pet[i])
    b = ct[i] > BODY_HU
    summary["reconstruction"] = {
        "slices": int(len(i)), "note": "64 random training slices (the autoencoder sees no labels)",
        "ct_mae_hu_body": float(hu_err[b].mean()), "pet_mae_suv_body": float(suv_err[b].mean()),
        "pet_mean_suv_body": float(pet[i][b].mean())}
    log.info("autoencoder: %s", summary)
    return summary


def train_attention(cfg: dict, options: TrainOptions, run_dir: Path, folder: Path) -> dict:
    c = cfg["attention"]
    torch.manual_seed(cfg["seed"])
    net = build_network(network_specs(cfg)["attention"])
    ct, pet, case = load_slices(run_dir / "prepare")
    stacks = ct_stacks(ct_to_net(ct), case, cfg["context"])
    target = attention_target(pet, cfg["attention_suv_threshold"]).astype(np.float32)[:, None]
    keep = body_slices(ct)
    loss = DiceLoss(sigmoid=True, batch=True)  # CPDM §4.2: L = 1 - 2|P∩G| / (|P| + |G|)
    aug = augment_config(cfg)
    stacks_hu = ct_stacks(ct, case, cfg["context"]) if aug else None

    def batch_fn(step: int, rng: np.random.Generator) -> list[torch.Tensor]:
        i = rng.choice(keep, c["batch"])
        if aug:  # one draw per sample, alike for its 2*context+1 slices and its target mask
            xs, ys = [], []
            for k in i:
                a, (m,) = augment_ct(stacks_hu[k], [target[k]], augment_params(rng, aug))
                xs.append(ct_to_net(a)), ys.append((m > 0.5).astype(np.float32))
            return random_crops([np.stack(xs), np.stack(ys)], np.arange(len(i)), c["crop"], rng)
        return random_crops([stacks, target], i, c["crop"], rng)

    def loss_fn(batch, nets):
        x, y = batch
        return loss(nets["attention"](x), y), {"positive_fraction": y.mean()}

    trainer, summary = fit_stage(cfg, options, folder, "attention", net, c, loss_fn, batch_fn, 0.0)
    net, dev = trainer.ema["attention"], trainer.device
    i = np.random.default_rng(7).choice(keep, min(64, len(keep)), replace=False)
    with torch.no_grad():
        p = torch.sigmoid(net(torch.from_numpy(stacks[i]).to(dev))).cpu().numpy() > 0.5
    summary["train_slice_dice"] = dice(p, target[i] > 0.5)
    log.info("attention: %s", summary)
    return summary


# ------------------------------------------------------------------------------------------------
# latents (no training)

def _encode(ae: nn.Module, att: nn.Module, ct: np.ndarray, pet: np.ndarray, kvp: float, context: int,
            factor: int) -> dict[str, list[torch.Tensor]]:
    """One volume's CT and PET latents and pooled maps, in batches of LATENT_BATCH slices."""
    out = {k: [] for k in ("y", "x0", "msig", "mmu")}
    stacks = ct_stacks(ct_to_net(ct), np.zeros(len(ct), int), context)
    for s in range(0, len(ct), LATENT_BATCH):
        sl = slice(s, s + LATENT_BATCH)
        out["y"].append(ae.encode(torch.from_numpy(ct_to_net(ct[sl]))[:, None])[0])
        out["x0"].append(ae.encode(torch.from_numpy(pet_to_net(pet[sl]))[:, None])[0])
        out["msig"].append(downsample_map(torch.sigmoid(att(torch.from_numpy(stacks[sl]))), factor))
        mu = torch.from_numpy(attenuation_condition(ct[sl], kvp))[:, None]
        out["mmu"].append(downsample_map(mu, factor))
    return out


def encode_latents(cfg: dict, run_dir: Path, folder: Path) -> dict:
    """Latents of every CT and PET slice, the pooled maps, and the latent scale factor.

    With augmentation on, ``augment.latent_copies`` copies of every case are encoded: copy 0 as
    it is, the others each with one augmentation draw for the whole volume (so the 2.5D neighbours
    and the maps agree); every copy gets its own case id so that neighbours never cross copies.
    """
    sp = network_specs(cfg)
    ae = load_stage_net(run_dir, "autoencoder", "autoencoder", sp["autoencoder"])
    att = load_stage_net(run_dir, "attention", "attention", sp["attention"])
    ct_all, pet_all, case_all = load_slices(run_dir / "prepare")
    factor = latent_factor(cfg["autoencoder"]["channels"])
    aug = augment_config(cfg)
    copies = int(aug.get("latent_copies", 1)) if aug else 1
    n_cases = int(case_all.max()) + 1
    rng = np.random.default_rng(cfg["seed"] + 1)  # a stream of its own (the Trainers use seed)
    out = {k: [] for k in ("y", "x0", "msig", "mmu", "case")}
    t0 = time.monotonic()
    with torch.no_grad():
        for copy in range(copies):
            for ci in range(n_cases):
                sel = case_all == ci
                ct, pet = ct_all[sel], pet_all[sel]
                if copy > 0:
                    ct, (pet,) = augment_ct(ct, [pet], augment_params(rng, aug))
                    pet = np.maximum(pet, 0)
                for k, v in _encode(ae, att, ct, pet, cfg["kvp"], cfg["context"], factor).items():
                    out[k] += v
                out["case"].append(np.full(len(ct), ci + copy * n_cases))
            log.info("latents: copy %d of %d done (%.0f s)", copy + 1, copies, time.monotonic() - t0)
    y, x0 = torch.cat(out["y"]), torch.cat(out["x0"])
    scale = float(1.0 / torch.cat([y, x0]).std())  # unit-variance latents (Rombach et al. 2022 §4.3.2)
    np.savez(folder / "latents.npz", y=(y * scale).numpy(), x0=(x0 * scale).numpy(),
             msig=torch.cat(out["msig"]).numpy(), mmu=torch.cat(out["mmu"]).numpy(),
             case=np.concatenate(out["case"]))
    info = {"latent_scale": scale, "slices": int(len(y)), "copies": copies,
            "seconds": round(time.monotonic() - t0, 1)}
    log.info("latents: %s", info)
    return info


def encode_real_latents(cfg: dict, run_dir: Path, folder: Path) -> dict:
    """Latents of the real pairs (prepare_real/) with the run's autoencoder, attention and latent scale."""
    sp = network_specs(cfg)
    ae = load_stage_net(run_dir, "autoencoder", "autoencoder", sp["autoencoder"])
    att = load_stage_net(run_dir, "attention", "attention", sp["attention"])
    scale = json.loads((run_dir / "latents" / "summary.json").read_text())["latent_scale"]
    factor = latent_factor(cfg["autoencoder"]["channels"])
    out = {k: [] for k in ("y", "x0", "msig", "mmu", "case")}
    files = sorted((run_dir / "prepare_real").glob("*.npz"))
    with torch.no_grad():
        for ci, f in enumerate(files):
            d = np.load(f)
            for k, v in _encode(ae, att, d["ct"], d["pet"], cfg["kvp"], cfg["context"], factor).items():
                out[k].append(torch.cat(v) * (scale if k in ("y", "x0") else 1.0))
            out["case"].append(np.full(len(d["ct"]), ci))
    np.savez(folder / "latents_real.npz", **{k: (torch.cat(v).numpy() if k != "case" else np.concatenate(v))
                                             for k, v in out.items()})
    info = {"cases": [f.stem for f in files], "slices": int(sum(len(c) for c in out["case"]))}
    log.info("real latents: %s", info)
    return info


# ------------------------------------------------------------------------------------------------
# bridges and the regression baseline

def _condition(lat: dict, i: np.ndarray, context: int, use_sigma: bool, use_mu: bool) -> torch.Tensor:
    """cond = [CT latents of the 2*context neighbours, M_sigma?, M_mu?] for slices ``i``."""
    return latent_condition(lat["y"], lat["msig"][i] if use_sigma else None,
                            lat["mmu"][i] if use_mu else None,
                            neighbour_indices(lat["case"], i, context)).float()


def train_bridge(cfg: dict, options: TrainOptions, run_dir: Path, folder: Path, stage: str) -> dict:
    c = cfg["bridge"]
    variant, use_sigma, use_mu = variant_of(stage)
    torch.manual_seed(cfg["seed"])
    net = build_network(network_specs(cfg)[stage])
    lat = dict(np.load(run_dir / "latents" / "latents.npz"))
    bb = BrownianBridge(c["num_train_timesteps"], c["max_var"], c["objective"])
    n = len(lat["case"])
    real_frac = float((cfg.get("real_pairs") or {}).get("fraction", 0.0))
    real = dict(np.load(run_dir / "latents_real" / "latents_real.npz")) if real_frac > 0 else None
    n_real = int(round(real_frac * c["batch"])) if real is not None else 0

    def batch_fn(step: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        i = rng.integers(0, n, c["batch"] - n_real)
        x0 = torch.from_numpy(lat["x0"][i]).float()
        y = torch.from_numpy(lat["y"][i]).float()
        cond = _condition(lat, i, cfg["context"], use_sigma, use_mu)
        if n_real:  # a fixed share of every batch from the real pairs (cfg real_pairs.fraction)
            j = rng.integers(0, len(real["case"]), n_real)
            x0 = torch.cat([x0, torch.from_numpy(real["x0"][j]).float()])
            y = torch.cat([y, torch.from_numpy(real["y"][j]).float()])
            cond = torch.cat([cond, _condition(real, j, cfg["context"], use_sigma, use_mu)])
        return {"x0": x0, "y": y, "cond": cond}

    def loss_fn(b, nets, info: StepInfo):
        x0, y, cond, den = b["x0"], b["y"], b["cond"], nets["denoiser"]
        if variant == "regression":  # same net, input [y, y-context..., maps] without x_t, t = 0
            out = den(torch.cat([y, cond], 1), torch.zeros(len(y), dtype=torch.long, device=y.device))
            return F.l1_loss(out, x0), {}
        t = torch.randint(0, bb.num_train_timesteps, (len(y),), generator=info.generator,
                          device=info.generator.device)
        noise = torch.randn(x0.shape, generator=info.generator, device=info.generator.device)
        return bb.training_loss(den, x0, y, cond, t=t.to(y.device), noise=noise.to(y.device)), {}

    _, summary = fit_stage(cfg, options, folder, "denoiser", net, c, loss_fn, batch_fn,
                           float(c.get("ema_decay", 0.999)))
    return summary
