"""The recipe's network stages, each trained by ``training.loop.Trainer`` in its own folder:

    matching     G1 (PET) and G2 (CT) on aligned first-scan NAC/CT slice pairs: the symmetric
                 InfoNCE of Eq. 1 (s = -L1, tau = 0.5) + the contour Dice of Eq. 2; the PET slice is
                 moved in-plane at random (rotation, shift) so the latents tolerate patient motion
    autoencoder  one autoencoder for NAC and AC slices (L1), the latent space of the diffusion
    latents      (no training) latents of every slice (scaled to unit std), G2 features of every CT
                 slice and the top-k matched CT slices of every NAC slice (first and delayed scan)
    diffusion:kK eps_theta on the latent grid, condition = cat(G2 features of the top-K CT slices,
                 NAC latent) (Eq. 6), linear schedule T = 1000, L2 on the config's ``prediction``
                 target (Eq. 5: epsilon; "sample" = x0, see configs/dual_timepoint_ac.json); K = 0 is the ablation
                 without CT prior (STMDiff Fig. 5), K = 1..3 the k ablation
    decoder:kK   (only with a ``decoder`` block) the autoencoder's decoder fine-tuned on the latents
                 the trained diffusion K samples (``decoder.ddim_steps`` DDIM steps), L1 to the
                 target image; the encoder stays frozen, so the condition is unchanged. The paper
                 fine-tunes Stable Diffusion's VAE for its AC images; this adapts the decoder to the
                 diffusion's own latents (the decoder then sees what it decodes at inference)
    detail:kK    (only with a ``detail`` block; not in the paper) networks.DetailHead trained on
                 the images diffusion K's samples decode to (by decoder:kK when the run has it),
                 with the NAC slice as a second input, L1 to the target image; the decoder and
                 the diffusion stay frozen
    unet         the NAC -> AC U-Net baseline (Table 1) in image space, the same steps and batch

Batches come from batch functions ``batch_fn(step, rng)`` (the Trainer's per-step generator).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.methods.stmdiff.inference import build_condition, ct_features, slice_similarity, top_k
from PETDiffusionLib.methods.stmdiff.losses import TAU, contour_dice, matching_infonce
from PETDiffusionLib.methods.stmdiff.networks import (autoencoder_spec, denoiser_spec, detail_spec,
                                                      encoder_spec, unet_spec)
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.training.loop import StepInfo, TrainConfig, Trainer, TrainOptions, stage_done
from PETDiffusionLib.training.recipes.dual_timepoint_ac.data import body_slices, load_cases

log = logging.getLogger(__name__)

K_MAX = 3


def network_specs(cfg: dict) -> dict[str, dict]:
    m, ae, df = cfg["matching"], cfg["autoencoder"], cfg["diffusion"]
    enc = encoder_spec(m["width"], m["dim"], m["feature_channels"])
    out = {"g1": enc, "g2": enc, "autoencoder": autoencoder_spec(ae["channels"], ae["latent_channels"]),
           "unet": unet_spec(cfg["unet"]["features"])}
    for k in cfg["diffusion"]["k_values"]:
        out[f"diffusion:k{k}"] = denoiser_spec(ae["latent_channels"], m["feature_channels"], k, df["channels"])
    if cfg.get("detail"):  # detail.ct_prior: diffusion K's head also sees its K matched CT slices
        b = cfg["detail"]
        for k in cfg["diffusion"]["k_values"]:
            out[f"detail:k{k}"] = detail_spec(b.get("channels", 16), b.get("blocks", 2),
                                              int(k) if b.get("ct_prior") else 0)
    return out


def init_from_run(nets: dict[str, nn.Module], run_dir: str | Path, stage_folder: str) -> dict:
    """Load the EMA weights of the same stage of an earlier run (``RUN/<stage>/checkpoint/
    ema.safetensors``) into ``nets``, strictly (same architectures); returns what the summary
    records: the run, its stage's steps and the weights' sha256."""
    import hashlib
    path = Path(run_dir) / stage_folder / "checkpoint" / "ema.safetensors"
    if not path.is_file():
        raise InputError(f"init_from: the run has no trained {stage_folder} stage (no {path.name})",
                         path.parent)
    weights = load_file(str(path))
    for name, net in nets.items():
        own = {k[len(name) + 1:]: v for k, v in weights.items() if k.startswith(name + ".")}
        try:
            net.load_state_dict(own)
        except RuntimeError as err:
            raise InputError(f"init_from: the run's {name} is not the network this config builds "
                             f"({str(err).splitlines()[0]})", path) from err
    summary_path = Path(run_dir) / stage_folder / "summary.json"
    steps = json.loads(summary_path.read_text()).get("steps") if summary_path.is_file() else None
    return {"run": str(run_dir), "steps": steps,
            "ema_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def fit_stage(cfg: dict, options: TrainOptions, folder: Path, nets: dict[str, nn.Module], block: dict,
              loss_fn, batch_fn, ema_decay: float) -> tuple[Trainer, dict]:
    """Train ``nets`` for ``block["steps"]`` at ``block["lr"]``: constant unless the block gives
    ``min_lr_ratio`` < 1 (then cosine decay to that fraction, with ``warmup`` linear steps first);
    ``init_from`` (an earlier run folder) starts from that run's EMA weights of this stage."""
    start = init_from_run(nets, block["init_from"], folder.name) if block.get("init_from") else None
    settings = {"lr": float(block["lr"]), "max_steps": int(block["steps"]),
                "warmup": int(block.get("warmup", 0)),
                "min_lr_ratio": float(block.get("min_lr_ratio", 1.0)), "ema_decay": float(ema_decay),
                "seed": int(cfg["seed"]),
                "num_threads": int(cfg.get("threads", 1)), "log_every": 25,
                "device": options.device or cfg.get("device", "auto"), **cfg.get("trainer", {})}
    trainer = Trainer(TrainConfig.from_dict(settings), nets, loss_fn, batch_fn, run_dir=folder)
    has_checkpoint = (trainer.checkpoint_dir / "state.pt").is_file()
    t0 = time.monotonic()
    trainer.fit(resume=bool(options.resume and has_checkpoint))
    if trainer.step < trainer.config.max_steps:
        raise InputError(f"stage {folder.name} stopped at step {trainer.step} of {trainer.config.max_steps} "
                         "(trainer.max_minutes); run the same command with --resume to continue", folder)
    recs = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()
            if x.strip() and "loss" in json.loads(x)]
    return trainer, {"steps": trainer.step, "seconds": round(time.monotonic() - t0, 1),
                     "first_loss": recs[0]["loss"] if recs else None,
                     "final_loss": recs[-1]["loss"] if recs else None,
                     "parameters": int(sum(p.numel() for n in nets.values() for p in n.parameters())),
                     "lr": settings["lr"], "min_lr_ratio": settings["min_lr_ratio"],
                     **({"init_from": start} if start else {})}


def load_stage_nets(run_dir: Path, stage: str, specs: dict[str, dict]) -> dict[str, nn.Module]:
    path = Path(run_dir) / stage.replace(":", "_") / "checkpoint" / "ema.safetensors"
    if not path.is_file():
        raise InputError(f"stage {stage} has not been trained (no {path.name})", path.parent)
    weights = load_file(str(path))
    out = {}
    for name, spec in specs.items():
        net = build_network(spec)
        net.load_state_dict({k[len(name) + 1:]: v for k, v in weights.items() if k.startswith(name + ".")})
        out[name] = net.eval()
    return out


STAGE_NETWORKS = {"matching": ("g1", "g2"), "autoencoder": ("autoencoder",)}
# per-diffusion stages a model folder of that k holds (its card's preprocessing.k): the stage's
# network name in the folder -> its key in network_specs
K_STAGE_NETWORKS = {"diffusion": ("denoiser",), "decoder": ("autoencoder",)}


def _stage_networks(cfg: dict, stage: str) -> dict[str, str]:
    """{network name in a model folder: network_specs key} of ``stage``."""
    if stage in STAGE_NETWORKS:
        return {n: n for n in STAGE_NETWORKS[stage]}
    kind, _, k = stage.partition(":k")
    if kind in K_STAGE_NETWORKS and k.isdigit():
        return {n: (stage if n == "denoiser" else n) for n in K_STAGE_NETWORKS[kind]}
    raise InputError(f"stages_from_model: stage {stage!r} cannot be taken from a model folder "
                     f"(matching, autoencoder, diffusion:kK, decoder:kK)")


def stage_from_model(cfg: dict, model_dir: str | Path, stage: str, folder: Path) -> dict:
    """The networks of ``stage`` copied from an exported model folder into the stage's
    checkpoint/ema.safetensors, checked against this config's network specs (the folder's card must
    describe the same architectures); returns the stage summary."""
    model_dir = Path(model_dir)
    card_path, weights_path = model_dir / "card.json", model_dir / "model.safetensors"
    if not (card_path.is_file() and weights_path.is_file()):
        raise InputError("stages_from_model: not a model folder (card.json + model.safetensors)", model_dir)
    card = json.loads(card_path.read_text())
    specs = network_specs(cfg)
    keys = _stage_networks(cfg, stage)
    names = tuple(keys)
    if ":k" in stage and int(card.get("preprocessing", {}).get("k", -1)) != int(stage.partition(":k")[2]):
        raise InputError(f"stages_from_model: {stage} needs a model of k = {stage.partition(':k')[2]}, "
                         f"the folder's is k = {card.get('preprocessing', {}).get('k')}", card_path)
    for n, key in keys.items():
        if card.get("networks", {}).get(n) != specs[key]:
            raise InputError(f"stages_from_model: the folder's {n} is not the network this config "
                             f"builds ({card.get('networks', {}).get(n)} vs {specs[key]})", card_path)
    weights = load_file(str(weights_path))
    keep = {k: v for k, v in weights.items() if k.split(".", 1)[0] in names}
    for n, key in keys.items():  # the weights must load into the config's network
        build_network(specs[key]).load_state_dict({k[len(n) + 1:]: v for k, v in keep.items()
                                                   if k.startswith(n + ".")})
    (folder / "checkpoint").mkdir(parents=True, exist_ok=True)
    save_file(keep, str(folder / "checkpoint" / "ema.safetensors"))
    src = card.get("training", {}).get("stages", {}).get(stage, {})
    return {"from_model": str(model_dir), "model_version": card.get("version"),
            "weights_sha256": card.get("weights_sha256"), "networks": list(names),
            "steps": src.get("steps"), "trained_seconds": src.get("seconds"),
            "parameters": src.get("parameters")}


def _move_inplane(x: torch.Tensor, rng: np.random.Generator, max_deg: float, max_px: float) -> torch.Tensor:
    """Random in-plane rigid motion of a batch of slices [B, 1, H, W] (bilinear)."""
    b, _, h, w = x.shape
    ang = np.deg2rad(rng.uniform(-max_deg, max_deg, b))
    sh = rng.uniform(-max_px, max_px, (b, 2)) * 2.0 / np.array([w, h])
    theta = np.zeros((b, 2, 3), np.float32)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = np.cos(ang), -np.sin(ang), np.sin(ang), np.cos(ang)
    theta[:, :, 2] = sh
    grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
    fill = x.amin((1, 2, 3), keepdim=True)
    return F.grid_sample(x - fill, grid, align_corners=False, padding_mode="zeros") + fill


# ------------------------------------------------------------------------------------------------
def train_matching(cfg: dict, options: TrainOptions, run_dir: Path, folder: Path) -> dict:
    m = cfg["matching"]
    cases = load_cases(run_dir / "prepare")
    spec = network_specs(cfg)
    nets = {"g1": build_network(spec["g1"]), "g2": build_network(spec["g2"])}
    per_case, n_cases = int(m["slices_per_case"]), int(m["cases_per_batch"])
    feature_weight = float(m.get("feature_ct_weight", 0.0))

    def batch_fn(step: int, rng: np.random.Generator):
        pet, ct, bp, bc = [], [], [], []
        for ci in rng.choice(len(cases), n_cases, replace=False):
            c = cases[ci]
            idx = rng.choice(body_slices(c), per_case, replace=False)
            pet.append(c["nac"][idx]); ct.append(c["ct"][idx])
            bp.append(c["body_nac"][idx]); bc.append(c["body_ct"][idx])
        pet = _move_inplane(torch.from_numpy(np.concatenate(pet))[:, None], rng, m["aug_deg"], m["aug_px"])
        return {"pet": pet, "ct": torch.from_numpy(np.concatenate(ct))[:, None],
                "body_pet": torch.from_numpy(np.concatenate(bp))[:, None],
                "body_ct": torch.from_numpy(np.concatenate(bc))[:, None]}

    def loss_fn(batch, networks):
        g1, g2 = networks["g1"], networks["g2"]
        zx, zy = g1(batch["pet"]), g2(batch["ct"])
        nce = matching_infonce(zx, zy, float(m.get("tau", TAU)))
        dice = contour_dice(g1.contour_logits(zx), g2.contour_logits(zy), batch["body_pet"], batch["body_ct"])
        logs = {"infonce": float(nce.detach()), "dice": float(dice.detach())}
        loss = nce + dice
        if feature_weight > 0:
            # G2's feature map is the diffusion's CT prior (Eq. 6) but neither loss of the paper reaches
            # its 1x1 head; this term makes the channel mean reproduce the CT at the latent grid (the
            # attenuation the AC network needs). Off (0) in the shipped 0.1.0 config.
            ct_cells = F.avg_pool2d(batch["ct"], g2.features_stride)
            feat = F.l1_loss(g2.features(batch["ct"]).mean(1, keepdim=True), ct_cells)
            loss = loss + feature_weight * feat
            logs["feature_ct"] = float(feat.detach())
        return loss, logs

    trainer, summary = fit_stage(cfg, options, folder, nets, m, loss_fn, batch_fn, 0.0)
    return summary


def train_autoencoder(cfg: dict, options: TrainOptions, run_dir: Path, folder: Path) -> dict:
    a = cfg["autoencoder"]
    cases = load_cases(run_dir / "prepare")
    nets = {"autoencoder": build_network(network_specs(cfg)["autoencoder"])}

    def batch_fn(step: int, rng: np.random.Generator):
        out = []
        for _ in range(int(a["batch"])):
            c = cases[rng.integers(len(cases))]
            key = ("ac", "nac", "dac", "dnac")[rng.integers(4)]
            out.append(c[key][rng.choice(body_slices(c))])
        return torch.from_numpy(np.stack(out))[:, None]

    def loss_fn(x, networks):
        loss = F.l1_loss(networks["autoencoder"](x), x)
        return loss, {}

    trainer, summary = fit_stage(cfg, options, folder, nets, a, loss_fn, batch_fn, 0.0)
    return summary


@torch.no_grad()
def encode_latents(cfg: dict, run_dir: Path, folder: Path) -> dict:
    spec = network_specs(cfg)
    ae = load_stage_nets(run_dir, "autoencoder", {"autoencoder": spec["autoencoder"]})["autoencoder"]
    match = load_stage_nets(run_dir, "matching", {"g1": spec["g1"], "g2": spec["g2"]})
    cases = load_cases(run_dir / "prepare")
    k_max = max([K_MAX, *[int(k) for k in cfg["diffusion"]["k_values"]]])
    enc = lambda a: torch.cat([ae.encode(torch.from_numpy(a[i:i + 64])[:, None]) for i in range(0, len(a), 64)])
    lat = {c["name"]: {k: enc(c[k]) for k in ("ac", "nac", "dac", "dnac")} for c in cases}
    scale = float(1.0 / torch.cat([v["ac"] for v in lat.values()]).std())
    hits = {1: [], 2: [], 3: []}
    for c in cases:
        feats = ct_features(match["g2"], c["ct"])
        topk_first = top_k(slice_similarity(match["g1"], match["g2"], c["nac"], c["ct"]), k_max)
        topk_del = top_k(slice_similarity(match["g1"], match["g2"], c["dnac"], c["ct"]), k_max)
        body = body_slices(c, "body_dnac")
        for k in hits:
            hits[k].append(float(np.mean([c["truth"][i] in topk_del[i, :k] for i in body])))
        np.savez(folder / f"{c['name']}.npz", feats=feats.numpy(), topk_first=topk_first, topk_delayed=topk_del,
                 body=body_slices(c, "body_ct"), body_d=body,
                 **{k: (v * scale).numpy() for k, v in lat[c["name"]].items()})
    return {"latent_scale": scale, "training_retrieval_top_k": {k: round(float(np.mean(v)), 3)
                                                                for k, v in hits.items()}}


def train_diffusion(cfg: dict, options: TrainOptions, run_dir: Path, folder: Path, k: int) -> dict:
    d = cfg["diffusion"]
    cases = _latent_cases(run_dir)
    net = build_network(network_specs(cfg)[f"diffusion:k{k}"])
    diff = ConditionalDiffusion(int(d["num_train_timesteps"]), d["schedule"], d.get("prediction", "epsilon"))

    def batch_fn(step: int, rng: np.random.Generator):
        _, x0, cond = _pair_batch(cases, d, rng, k)
        return x0, cond

    image_weight = float(d.get("image_l1_weight", 0.0))
    if image_weight > 0:
        if d.get("prediction", "epsilon") != "sample":
            raise InputError("diffusion.image_l1_weight needs prediction \"sample\" (the x0 the decoder sees)",
                             run_dir)
        # the frozen decoder of the autoencoder stage; latents are stored times latent_scale
        decoder = load_stage_nets(run_dir, "autoencoder", {"autoencoder": network_specs(cfg)["autoencoder"]}
                                  )["autoencoder"].requires_grad_(False)
        scale = float(json.loads((run_dir / "latents" / "summary.json").read_text())["latent_scale"])

    def loss_fn(batch, networks, info: StepInfo):
        x0, cond = batch
        t = torch.randint(0, diff.num_train_timesteps, (len(x0),), generator=info.generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=info.generator).to(x0.device)
        if image_weight <= 0:
            return diff.training_loss(networks["denoiser"], x0, cond, loss="l2", t=t, noise=noise), {}
        # Eq. 5's L2 on the latent x0 plus an L1 between the decoded prediction and the decoded
        # target (the image-space L1 the U-Net baseline is trained with)
        x_t = diff.scheduler.add_noise(x0, noise, t)
        out = networks["denoiser"](torch.cat([x_t, cond.to(x_t.dtype)], 1), t).float()
        latent = F.mse_loss(out, x0.float())
        dec = decoder.to(x0.device)
        image = F.l1_loss(dec.decode(out / scale), dec.decode(x0.float() / scale))
        return latent + image_weight * image, {"latent_l2": float(latent.detach()),
                                               "image_l1": float(image.detach())}

    trainer, summary = fit_stage(cfg, options, folder, {"denoiser": net}, d, loss_fn, batch_fn,
                                 float(d.get("ema_decay", 0.999)))
    return summary | {"k": k} | ({"image_l1_weight": image_weight} if image_weight > 0 else {})


def _latent_cases(run_dir: Path) -> list[dict]:
    """The latents stage's cases (tensors for the latents and CT features), each with its ``name``."""
    files = sorted((run_dir / "latents").glob("case_*.npz"))
    return [{key: torch.from_numpy(v) if key in ("feats", "ac", "nac", "dac", "dnac") else v
             for key, v in np.load(f).items()} | {"name": f.stem} for f in files]


def _pair_batch(cases: list[dict], d: dict, rng: np.random.Generator, k: int):
    """(picks, the latent targets x0 [B, C, h, w], the conditions [B, *, h, w]) of one diffusion
    batch: ``d["cases_per_batch"]`` cases, first or delayed scan (``delayed_fraction``), body
    slices; picks = [(case index, slice indices, target key "ac" | "dac")] per case, in batch order."""
    x0, cond, picks = [], [], []
    per = int(d["batch"]) // int(d["cases_per_batch"])
    for ci in rng.choice(len(cases), int(d["cases_per_batch"]), replace=False):
        c = cases[ci]
        delayed = rng.random() < float(d.get("delayed_fraction", 0.5))
        idx = rng.choice(c["body_d"] if delayed else c["body"], per)
        tgt, src, tk = (("dac", "dnac", c["topk_delayed"]) if delayed else ("ac", "nac", c["topk_first"]))
        x0.append(c[tgt][idx])
        cond.append(build_condition(c[src][idx], c["feats"], tk[idx], k))
        picks.append((int(ci), idx, tgt))
    return picks, torch.cat(x0), torch.cat(cond)


class _SampledLatents:
    """Batches of (latents diffusion ``k`` samples with ``ddim_steps`` DDIM steps, decoder units;
    the target images [B, 1, H, W]; the NAC images of the same slices [B, 1, H, W]; the k matched
    first-scan CT slices of each [B, k, H, W], None for k = 0) for the decoder and detail stages."""

    def __init__(self, cfg: dict, run_dir: Path, k: int, block: dict, stage: str):
        d = cfg["diffusion"]
        self.k = k
        self.denoiser = load_stage_nets(run_dir, f"diffusion:k{k}",
                                        {"denoiser": network_specs(cfg)[f"diffusion:k{k}"]})["denoiser"]
        self.denoiser.requires_grad_(False)
        self.latents = _latent_cases(run_dir)
        self.images = load_cases(run_dir / "prepare")
        if [c["name"] for c in self.images] != [c["name"] for c in self.latents]:
            raise InputError(f"{stage}: the latents and the prepared cases differ; rerun the latents stage", run_dir)
        self.scale = float(json.loads((run_dir / "latents" / "summary.json").read_text())["latent_scale"])
        self.diff = ConditionalDiffusion(int(d["num_train_timesteps"]), d["schedule"], d.get("prediction", "epsilon"))
        self.ddim_steps = int(block.get("ddim_steps", cfg.get("default_steps", 2)))
        self.block = {"batch": int(block.get("batch", d["batch"])), "cases_per_batch": int(d["cases_per_batch"]),
                      "delayed_fraction": d.get("delayed_fraction", 0.5)}

    @torch.no_grad()
    def __call__(self, step: int, rng: np.random.Generator):
        picks, x0, cond = _pair_batch(self.latents, self.block, rng, self.k)
        z = self.diff.sample(self.denoiser, cond, steps=self.ddim_steps, sampler="ddim",
                             seed=int(rng.integers(2 ** 31)), shape=tuple(x0.shape), eta=0.0).samples[0]

        def images(source: bool) -> torch.Tensor:
            keys = {"ac": "nac", "dac": "dnac"}
            return torch.from_numpy(np.concatenate(
                [self.images[ci][keys[key] if source else key][idx] for ci, idx, key in picks]))[:, None]

        ct = None
        if self.k > 0:  # the CT slices the condition matched, as the inference picks them
            ct = torch.from_numpy(np.concatenate(
                [self.images[ci]["ct"][self.latents[ci]["topk_delayed" if key == "dac" else "topk_first"][idx][:, :self.k]]
                 for ci, idx, key in picks]))
        return z / self.scale, images(False), images(True), ct


def train_decoder(cfg: dict, options: TrainOptions, run_dir: Path, folder: Path, k: int) -> dict:
    """The autoencoder's decoder fine-tuned on what diffusion ``k`` samples (module docstring)."""
    b = cfg["decoder"]
    ae = load_stage_nets(run_dir, "autoencoder", {"autoencoder": network_specs(cfg)["autoencoder"]})["autoencoder"]
    ae.train().enc.requires_grad_(False)
    batches = _SampledLatents(cfg, run_dir, k, b, "decoder")

    def loss_fn(batch, networks):
        z, target = batch[:2]
        return F.l1_loss(networks["autoencoder"].decode(z), target), {}

    trainer, summary = fit_stage(cfg, options, folder, {"autoencoder": ae}, b, loss_fn, batches,
                                 float(b.get("ema_decay", 0.999)))
    return summary | {"k": k, "ddim_steps": batches.ddim_steps, "trained": "decoder (the encoder frozen)"}


def train_detail(cfg: dict, options: TrainOptions, run_dir: Path, folder: Path, k: int) -> dict:
    """networks.DetailHead on the images diffusion ``k``'s latents decode to (module docstring)."""
    b = cfg["detail"]
    spec = network_specs(cfg)
    source = f"decoder:k{k}" if stage_done(run_dir, f"decoder:k{k}") else "autoencoder"
    ae = load_stage_nets(run_dir, source, {"autoencoder": spec["autoencoder"]})["autoencoder"].requires_grad_(False)
    head = build_network(spec[f"detail:k{k}"])
    batches = _SampledLatents(cfg, run_dir, k, b, "detail")

    def loss_fn(batch, networks):
        z, target, nac, ct = batch
        with torch.no_grad():
            decoded = ae.to(z.device).decode(z)
        extra = (ct.to(z.device),) if head.ct_slices else ()
        return F.l1_loss(networks["detail"](decoded, nac, *extra), target), {}

    trainer, summary = fit_stage(cfg, options, folder, {"detail": head}, b, loss_fn, batches,
                                 float(b.get("ema_decay", 0.999)))
    return summary | {"k": k, "ddim_steps": batches.ddim_steps, "decoder_from": source,
                      "ct_slices": head.ct_slices,
                      "trained": "detail head (decoder and diffusion frozen)"}


def train_unet(cfg: dict, options: TrainOptions, run_dir: Path, folder: Path) -> dict:
    u, d = cfg["unet"], cfg["diffusion"]
    cases = load_cases(run_dir / "prepare")
    net = build_network(network_specs(cfg)["unet"])
    # equal budget: the diffusion's steps and batch, unless the config gives the U-Net its own
    # steps (alone on this 2-core machine an image-space U-Net step took 0.19 s, a latent diffusion
    # step 0.053 s: configs/dual_timepoint_ac_v4.json states both budgets in time)
    block = {"steps": int(u.get("steps", d["steps"])), "lr": u["lr"],
             **{k: u[k] for k in ("min_lr_ratio", "warmup", "init_from") if k in u}}

    def batch_fn(step: int, rng: np.random.Generator):
        x, y = [], []
        for _ in range(int(d["batch"])):
            c = cases[rng.integers(len(cases))]
            delayed = rng.random() < float(d.get("delayed_fraction", 0.5))
            i = rng.choice(body_slices(c, "body_dnac" if delayed else "body_ct"))
            x.append(c["dnac" if delayed else "nac"][i]); y.append(c["dac" if delayed else "ac"][i])
        return torch.from_numpy(np.stack(x))[:, None], torch.from_numpy(np.stack(y))[:, None]

    def loss_fn(batch, networks):
        x, y = batch
        return F.l1_loss(networks["unet"](x), y), {}

    trainer, summary = fit_stage(cfg, options, folder, {"unet": net}, block, loss_fn, batch_fn,
                                 float(d.get("ema_decay", 0.999)))
    return summary
