"""Training recipe for the ct-to-pet task (CPDM, Nguyen et al. 2024, arXiv:2410.21932).

Stages, each resumable (a checkpoint every ``checkpoint_seconds`` under ``run_dir/<stage>/``):

    prepare      cohort cases -> working grid (spacing in the config), axial slices cropped to
                 ``slice_size``; CT in HU, PET (pet_ac) in SUV; tissue-class floor (training means)
    autoencoder  one KL autoencoder for CT and PET slices (CPDM §4.1: one encoder/decoder for both)
    attention    M_sigma U-Net, Dice loss on masks PET SUV > attention_suv_threshold (CPDM §4.2)
    latents      encode every slice; attention and attenuation maps pooled to the latent grid
    bridge:<v>   the Brownian-bridge denoiser for variant v in cpdm | no_sigma | no_mu (CPDM Alg. 1,
                 'grad' objective, L1 loss; the two ablations of CPDM Table 4)
    regression   the plain U-Net regression baseline: the same network class and size, the same
                 latents, maps, steps, batch and seed, predicting the PET latent directly (t = 0)
    export       model folders: the shipped CPDM model and one folder per ablation (run_dir/models)

Run:  petdiffusion train ct-to-pet --config configs/ct_to_pet.json [--stage NAME]
or    python -m PETDiffusionLib.training.recipes.ct_to_pet --config ... --stage ...
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from PETDiffusionLib.networks import cpdm

log = logging.getLogger(__name__)

VARIANTS = {  # variant -> (use M_sigma, use M_mu); CPDM Table 4 rows
    "cpdm": (True, True),
    "no_sigma": (False, True),
    "no_mu": (True, False),
}
STAGES = ["prepare", "autoencoder", "attention", "latents", "bridge:cpdm", "bridge:no_sigma",
          "bridge:no_mu", "regression", "export"]
OPTIONAL_STAGES = ["prepare_real", "latents_real"]  # real paired PET/CT mix-in (cfg "real_pairs")


# ------------------------------------------------------------------------------------------------
# data

def list_cases(cohort: Path) -> list[Path]:
    cases = sorted(p for p in Path(cohort).iterdir()
                   if p.is_dir() and (p / "ct.nii.gz").is_file() and (p / "case.json").is_file())
    if not cases:
        raise FileNotFoundError(f"{cohort}: no case_*/ct.nii.gz found")
    return cases


def prepare(cfg: dict, run_dir: Path) -> Path:
    """Cache every training case on the working grid as float16 slices (one npz per case)."""
    from PETDiffusionLib.io.images import read_image
    out = run_dir / "prepare"
    out.mkdir(parents=True, exist_ok=True)
    spacing = tuple(cfg["working_spacing_mm"])
    size = int(cfg["slice_size"])
    cases = list_cases(Path(cfg["cohort"]))[:int(cfg.get("max_cases", 10 ** 6))]
    for case in cases:
        dst = out / f"{case.name}.npz"
        if dst.is_file():
            continue
        ct = cpdm.to_working_array(read_image(case / "ct.nii.gz"), spacing, default=cpdm.CT_HU_MIN)
        pet = cpdm.to_working_array(read_image(case / cfg.get("target", "pet_ac.nii.gz")), spacing)
        ct, pet = cpdm.crop_or_pad(ct, size, cpdm.CT_HU_MIN), cpdm.crop_or_pad(pet, size, 0.0)
        np.savez(dst, ct=ct.astype(np.float32), pet=np.maximum(pet, 0).astype(np.float32))
        log.info("prepared %s: %s slices", case.name, ct.shape[0])
    # the non-learned floor: training-set mean SUV per CT tissue class (issue 7 "Evaluation")
    sums = np.zeros(len(cpdm.TISSUE_CLASSES)), np.zeros(len(cpdm.TISSUE_CLASSES))
    for f in sorted(out.glob("*.npz")):
        d = np.load(f)
        cls = cpdm.tissue_classes(d["ct"])
        for k in range(len(cpdm.TISSUE_CLASSES)):
            m = cls == k
            sums[0][k] += d["pet"][m].sum()
            sums[1][k] += m.sum()
    floor = {name: float(sums[0][k] / max(sums[1][k], 1)) for k, name in enumerate(cpdm.TISSUE_CLASSES)}
    (out / "floor.json").write_text(json.dumps(floor, indent=2))
    log.info("tissue-class floor (training mean SUV): %s", floor)
    return out


def load_slices(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All prepared slices: CT (N,S,S) HU, PET (N,S,S) SUV, and the case index of each slice."""
    cts, pets, idx = [], [], []
    for i, f in enumerate(sorted((run_dir / "prepare").glob("*.npz"))):
        d = np.load(f)
        cts.append(d["ct"]), pets.append(d["pet"]), idx.append(np.full(len(d["ct"]), i))
    return np.concatenate(cts), np.concatenate(pets), np.concatenate(idx)


def _real_pair_arrays(case_dir: Path, spacing, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A real PET/CT crop (IBSI STS layout: CT_image HU, PET_image SUVbw) on the working grid.

    The PET is resampled onto the CT; CT voxels outside the PET's extent become air, so that the
    pair never shows tissue without a PET value."""
    import SimpleITK as sitk
    from PETDiffusionLib.io.images import array_and_image, read_image, resample_to
    ct = read_image(case_dir / "CT_image.nii.gz")
    pet_img = read_image(case_dir / "PET_image.nii.gz")
    pet = resample_to(pet_img, ct, default_value=0.0)
    ones = sitk.Image(pet_img.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(pet_img)
    inside = sitk.GetArrayFromImage(resample_to(ones, ct, is_label=True)) > 0.5
    ct_a = np.where(inside, sitk.GetArrayFromImage(ct).astype(np.float32), cpdm.CT_HU_MIN)
    ct = array_and_image(ct_a.astype(np.float32), ct)
    ct_w = cpdm.to_working_array(ct, spacing, default=cpdm.CT_HU_MIN)
    pet_w = cpdm.to_working_array(pet, spacing)
    return (cpdm.crop_or_pad(ct_w, size, cpdm.CT_HU_MIN),
            np.maximum(cpdm.crop_or_pad(pet_w, size, 0.0), 0.0))


def prepare_real(cfg: dict, run_dir: Path) -> Path:
    """Optional real paired PET/CT crops (cfg['real_pairs']: root, train_cases) -> prepare_real/."""
    rp = cfg["real_pairs"]
    out = run_dir / "prepare_real"
    out.mkdir(parents=True, exist_ok=True)
    for cid in rp["train_cases"]:
        dst = out / f"{cid}.npz"
        if not dst.is_file():
            ct, pet = _real_pair_arrays(Path(rp["root"]) / cid, tuple(cfg["working_spacing_mm"]),
                                        int(cfg["slice_size"]))
            np.savez(dst, ct=ct, pet=pet.astype(np.float32))
            log.info("prepared real pair %s: %s slices", cid, ct.shape[0])
    return out


# ------------------------------------------------------------------------------------------------
# CT-domain augmentation (issue 7, real CT): the simulated CTs are clean, whole-body-in-FOV phantoms;
# real CTs differ in noise, sharpness, HU calibration, patient size/position and field of view.

AUG_DEFAULTS = {
    "noise_hu_max": 25.0,      # additive white noise, sigma ~ U(0, 25) HU (brief; clinical CT ~10-30 HU)
    "blur_sigma_max_px": 0.8,  # in-plane Gaussian blur sigma ~ U(0, 0.8) px (softer reconstruction kernels)
    "hu_scale": 0.03,          # HU * (1 + U(-3 %, 3 %)): kVp / calibration differences of a few per cent
    "hu_offset": 15.0,         # + U(-15, 15) HU: real liver 44 HU vs phantom 50 (measured, issue 7 note)
    "zoom": 0.1,               # in-plane scale U(0.9, 1.1): patient size
    "shift_px": 8,             # in-plane shift U(-8, 8) px (32 mm at 4 mm): patient position
    "flip": True,              # left-right mirror with p = 0.5 (anterior-posterior is fixed by LPS)
    "fov_crop_p": 0.3,         # p of a truncated field of view (real CTs cut the body at the FOV edge)
    "fov_crop_max": 0.2,       # ... removing up to 20 % of the slice on each side (set to air, PET 0)
}


def augment_params(rng: np.random.Generator, aug: dict) -> dict:
    """One draw of the augmentation parameters (applied alike to every slice of one sample/volume)."""
    a = {**AUG_DEFAULTS, **aug}
    fc = float(a["fov_crop_max"])
    crop = (rng.uniform(0, fc, 4) if rng.random() < float(a["fov_crop_p"]) else np.zeros(4))
    return {"noise": float(rng.uniform(0, a["noise_hu_max"])),
            "blur": float(rng.uniform(0, a["blur_sigma_max_px"])),
            "scale": float(1 + rng.uniform(-a["hu_scale"], a["hu_scale"])),
            "offset": float(rng.uniform(-a["hu_offset"], a["hu_offset"])),
            "zoom": float(1 + rng.uniform(-a["zoom"], a["zoom"])),
            "shift": rng.uniform(-a["shift_px"], a["shift_px"], 2).astype(float),
            "flip": bool(a["flip"] and rng.random() < 0.5),
            "crop": crop.astype(float),  # fraction cut from top, bottom, left, right
            "noise_seed": int(rng.integers(0, 2 ** 31 - 1))}


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable in-plane Gaussian blur of [B, C, H, W] (reflect padding keeps edges unbiased)."""
    if sigma < 0.05:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def augment_ct(ct_hu: np.ndarray, others: list[np.ndarray], params: dict
               ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Augment CT slices (Z, H, W) in HU and, geometrically only, paired maps (PET, masks) (Z, H, W).

    The geometry (zoom, shift, flip, FOV truncation) is applied alike to the CT and ``others``
    (bilinear; outside the image the CT is air and the others 0); blur, HU scale/offset and noise
    to the CT only. Returns float32 arrays of the input shapes, CT clipped to the 12-bit range.
    """
    z, h, w = ct_hu.shape
    p = params
    theta = torch.zeros(1, 2, 3, dtype=torch.float32)
    # output -> input coordinates in [-1, 1]: x_in = x_out / zoom (* -1 when flipped) - shift
    theta[0, 0, 0] = (-1.0 if p["flip"] else 1.0) / p["zoom"]
    theta[0, 1, 1] = 1.0 / p["zoom"]
    theta[0, 0, 2] = -2.0 * p["shift"][1] / w
    theta[0, 1, 2] = -2.0 * p["shift"][0] / h
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)

    def warp(a: np.ndarray, fill: float) -> torch.Tensor:  # a: (any number of slices, h, w)
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[:, None] - fill
        g = grid.expand(len(t), h, w, 2)
        return F.grid_sample(t, g, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0] + fill

    ct = warp(ct_hu, cpdm.CT_HU_MIN)
    outs = [warp(o, 0.0) for o in others]
    top, bottom, left, right = (int(round(f * n)) for f, n in zip(p["crop"], (h, h, w, w)))
    if top or bottom or left or right:
        keep = torch.zeros(h, w, dtype=torch.bool)
        keep[top:h - bottom, left:w - right] = True
        ct = torch.where(keep, ct, torch.tensor(cpdm.CT_HU_MIN))
        outs = [torch.where(keep, o, torch.tensor(0.0)) for o in outs]
    air = ct <= cpdm.CT_HU_MIN + 1.0  # padding and truncated FOV stay exact air, as in a real scan
    ct = _gaussian_blur(ct[:, None], p["blur"])[:, 0]
    ct = ct * p["scale"] + p["offset"]
    g = torch.Generator().manual_seed(p["noise_seed"])
    ct = ct + p["noise"] * torch.randn(ct.shape, generator=g)
    ct = torch.where(air, torch.tensor(cpdm.CT_HU_MIN), ct).clamp(cpdm.CT_HU_MIN, cpdm.CT_HU_MAX)
    return ct.numpy().astype(np.float32), [o.numpy().astype(np.float32) for o in outs]


def _aug_cfg(cfg: dict) -> dict | None:
    a = cfg.get("augment") or {}
    return a if a.get("enabled") else None


# ------------------------------------------------------------------------------------------------
# a small resumable loop (steps, Adam, EMA, checkpoint every N seconds)

class _Loop:
    def __init__(self, stage_dir: Path, nets: dict[str, torch.nn.Module], lr: float, steps: int,
                 seed: int, ema_decay: float | None = None, checkpoint_seconds: float = 60.0):
        self.dir, self.nets, self.steps = stage_dir, nets, int(steps)
        self.dir.mkdir(parents=True, exist_ok=True)
        params = [p for n in nets.values() for p in n.parameters()]
        self.opt = torch.optim.Adam(params, lr=lr)
        self.ema = ({k: {n: p.detach().clone() for n, p in v.state_dict().items()}
                     for k, v in nets.items()} if ema_decay else None)
        self.ema_decay = ema_decay
        self.step, self.seconds = 0, 0.0
        self.ckpt_s = checkpoint_seconds
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        ck = self.dir / "checkpoint.pt"
        if ck.is_file():  # our own checkpoint (tensors and numbers only)
            state = torch.load(ck, weights_only=True)  # tensors, numbers, strings only
            for k, v in nets.items():
                v.load_state_dict(state["nets"][k])
            self.opt.load_state_dict(state["opt"])
            self.ema = state.get("ema")
            self.step, self.seconds = state["step"], state["seconds"]
            self.gen.set_state(state["gen"])
            self.rng.bit_generator.state = state["rng"]
            log.info("%s: resumed at step %d", self.dir.name, self.step)

    def save(self) -> None:
        state = {"nets": {k: v.state_dict() for k, v in self.nets.items()}, "opt": self.opt.state_dict(),
                 "ema": self.ema, "step": self.step, "seconds": self.seconds,
                 "gen": self.gen.get_state(), "rng": self.rng.bit_generator.state}
        tmp = self.dir / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.dir / "checkpoint.pt")

    def run(self, loss_fn) -> dict:
        """``loss_fn(step, gen, rng) -> (loss, logs)``; returns the summary written to summary.json."""
        last = time.monotonic()
        logf = open(self.dir / "log.jsonl", "a")
        window = []
        for n in self.nets.values():
            n.train()
        while self.step < self.steps:
            t0 = time.monotonic()
            loss, logs = loss_fn(self.step, self.gen, self.rng)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.ema is not None:
                d = min(self.ema_decay, (1 + self.step) / (10 + self.step))  # EMA warm-up (DDPM practice)
                with torch.no_grad():
                    for k, v in self.nets.items():
                        for name, p in v.state_dict().items():
                            if p.dtype.is_floating_point:
                                self.ema[k][name].mul_(d).add_(p.detach(), alpha=1 - d)
                            else:
                                self.ema[k][name].copy_(p)
            self.step += 1
            self.seconds += time.monotonic() - t0
            window.append(float(loss.detach()))
            if self.step % 50 == 0 or self.step == self.steps:
                rec = {"step": self.step, "loss": float(np.mean(window)), "seconds": round(self.seconds, 1),
                       **{k: float(v) for k, v in logs.items()}}
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log.info("%s %s", self.dir.name, rec)
                window = []
            if time.monotonic() - last > self.ckpt_s:
                self.save()
                last = time.monotonic()
        self.save()
        logf.close()
        recs = [json.loads(x) for x in (self.dir / "log.jsonl").read_text().splitlines() if x.strip()]
        summary = {"steps": self.step, "seconds": round(self.seconds, 1),
                   "final_loss": recs[-1]["loss"] if recs else None,
                   "first_loss": recs[0]["loss"] if recs else None}
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def final_state(self, name: str) -> dict:
        return self.ema[name] if self.ema is not None else self.nets[name].state_dict()


def _stage_done(run_dir: Path, stage: str) -> bool:
    return (run_dir / stage.replace(":", "_") / "summary.json").is_file()


def _load_net(run_dir: Path, stage: str, name: str, spec: dict) -> torch.nn.Module:
    net = cpdm.build(spec["class"], spec["args"])
    state = torch.load(run_dir / stage.replace(":", "_") / "checkpoint.pt", weights_only=True)
    net.load_state_dict(state["ema"][name] if state.get("ema") else state["nets"][name])
    return net.eval()


def _random_crops(arrs: list[np.ndarray], idx: np.ndarray, crop: int, rng) -> list[torch.Tensor]:
    size = arrs[0].shape[-1]
    out = [[] for _ in arrs]
    for i in idx:
        y0, x0 = rng.integers(0, size - crop + 1, 2)
        for k, a in enumerate(arrs):
            out[k].append(a[i, ..., y0:y0 + crop, x0:x0 + crop])
    return [torch.from_numpy(np.stack(o)).float() for o in out]


# ------------------------------------------------------------------------------------------------
# stages

def specs(cfg: dict) -> dict[str, dict]:
    ae, at, br = cfg["autoencoder"], cfg["attention"], cfg["bridge"]
    out = {"autoencoder": {"class": cpdm.AUTOENCODER_CLASS,
                           "args": cpdm.autoencoder_args(ae["channels"], ae["latent_channels"])},
           "attention": {"class": cpdm.ATTENTION_CLASS,
                         "args": cpdm.attention_unet_args(cfg["context"], at["features"])}}
    for v, (s, m) in VARIANTS.items():
        out[f"bridge:{v}"] = {"class": cpdm.BRIDGE_CLASS, "args": cpdm.bridge_unet_args(
            ae["latent_channels"], cfg["context"], s, m, br["channels"])}
    out["regression"] = {"class": cpdm.BRIDGE_CLASS, "args": cpdm.bridge_unet_args(
        ae["latent_channels"], cfg["context"], True, True, br["channels"])}
    return out


def _body_slices(ct: np.ndarray) -> np.ndarray:
    """Indices of slices with more than 2 % body (CT above cpdm.BODY_HU), so training crops hold anatomy."""
    return np.where((ct > cpdm.BODY_HU).reshape(len(ct), -1).mean(1) > 0.02)[0]


def train_autoencoder(cfg: dict, run_dir: Path) -> dict:
    c = cfg["autoencoder"]
    torch.manual_seed(cfg["seed"])
    spec = specs(cfg)["autoencoder"]
    ae = cpdm.build(spec["class"], spec["args"])
    ct, pet, _ = load_slices(run_dir)
    ct_n, pet_n = cpdm.ct_to_net(ct), cpdm.pet_to_net(pet)
    keep = _body_slices(ct)
    loop = _Loop(run_dir / "autoencoder", {"autoencoder": ae}, c["lr"], c["steps"], cfg["seed"],
                 None, cfg.get("checkpoint_seconds", 60))

    aug = _aug_cfg(cfg)

    def loss_fn(step, gen, rng):
        i = rng.choice(keep, c["batch"])
        a, b = _random_crops([ct_n, pet_n], i, c["crop"], rng)
        if aug:  # the autoencoder must also encode noisy/blurred/shifted CTs faithfully
            ct_aug = np.stack([augment_ct(ct[k:k + 1], [], augment_params(rng, aug))[0][0] for k in i])
            a = _random_crops([cpdm.ct_to_net(ct_aug)], np.arange(len(i)), c["crop"], rng)[0]
        x = torch.cat([a, b])[:, None]  # CT and PET slices through the same autoencoder
        recon, mu, sigma = ae(x)
        l1 = F.l1_loss(recon, x)
        # KL to N(0, I) (MONAI generative tutorials' AutoencoderKL loss, weight 1e-6 there)
        kl = 0.5 * torch.mean(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1)
        return l1 + c["kl_weight"] * kl, {"l1": l1.detach(), "kl": kl.detach()}

    summary = loop.run(loss_fn)
    # reconstruction error on whole held-back slices, in physical units (the card states it)
    ae.eval()
    rng = np.random.default_rng(123)
    i = rng.choice(keep, min(64, len(keep)), replace=False)
    with torch.no_grad():
        xc = torch.from_numpy(ct_n[i])[:, None]
        xp = torch.from_numpy(pet_n[i])[:, None]
        rc = ae.decode(ae.encode(xc)[0])
        rp = ae.decode(ae.encode(xp)[0])
    hu_err = np.abs(rc.numpy()[:, 0] * cpdm.CT_HU_SCALE - np.clip(ct[i], cpdm.CT_HU_MIN, cpdm.CT_HU_MAX))
    suv_rec = cpdm.net_to_pet(rp.numpy()[:, 0])
    suv_err = np.abs(suv_rec - pet[i])
    b = ct[i] > -500
    summary["reconstruction"] = {
        "slices": int(len(i)), "note": "64 random training slices (the autoencoder sees no labels)",
        "ct_mae_hu_body": float(hu_err[b].mean()), "pet_mae_suv_body": float(suv_err[b].mean()),
        "pet_mean_suv_body": float(pet[i][b].mean())}
    (run_dir / "autoencoder" / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("autoencoder: %s", summary)
    return summary


def attention_target(pet_suv: np.ndarray | torch.Tensor, threshold: float):
    """CPDM §4.2: the ground-truth attention mask is PET above a threshold, here in SUV."""
    return (pet_suv > threshold)


def train_attention(cfg: dict, run_dir: Path) -> dict:
    from monai.losses import DiceLoss
    c = cfg["attention"]
    torch.manual_seed(cfg["seed"])
    spec = specs(cfg)["attention"]
    net = cpdm.build(spec["class"], spec["args"])
    ct, pet, case = load_slices(run_dir)
    stacks = cpdm.stacks_25d(cpdm.ct_to_net(ct), case, cfg["context"])
    target = attention_target(pet, cfg["attention_suv_threshold"]).astype(np.float32)[:, None]
    keep = _body_slices(ct)
    dice = DiceLoss(sigmoid=True, batch=True)  # CPDM §4.2: L = 1 - 2|P∩G| / (|P| + |G|)
    loop = _Loop(run_dir / "attention", {"attention": net}, c["lr"], c["steps"], cfg["seed"],
                 None, cfg.get("checkpoint_seconds", 60))

    aug = _aug_cfg(cfg)
    stacks_hu = cpdm.stacks_25d(ct, case, cfg["context"]) if aug else None

    def loss_fn(step, gen, rng):
        i = rng.choice(keep, c["batch"])
        if aug:  # one draw per sample, alike for its 2*context+1 slices and its target mask
            xs, ys = [], []
            for k in i:
                a, (m,) = augment_ct(stacks_hu[k], [target[k]], augment_params(rng, aug))
                xs.append(cpdm.ct_to_net(a)), ys.append((m > 0.5).astype(np.float32))
            x, y = _random_crops([np.stack(xs), np.stack(ys)], np.arange(len(i)), c["crop"], rng)
        else:
            x, y = _random_crops([stacks, target], i, c["crop"], rng)
        return dice(net(x), y), {"positive_fraction": y.mean()}

    summary = loop.run(loss_fn)
    net.eval()
    i = np.random.default_rng(7).choice(keep, min(64, len(keep)), replace=False)
    with torch.no_grad():
        p = torch.sigmoid(net(torch.from_numpy(stacks[i]))).numpy() > 0.5
    t = target[i] > 0.5
    summary["train_slice_dice"] = float(2 * (p & t).sum() / max(p.sum() + t.sum(), 1))
    (run_dir / "attention" / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("attention: %s", summary)
    return summary


def encode_latents(cfg: dict, run_dir: Path) -> dict:
    """Latents of every CT and PET slice, the pooled maps, and the latent scale factor.

    With augmentation on, ``augment.latent_copies`` copies of every case are encoded: copy 0 as
    it is, the others each with one augmentation draw for the whole volume (so the 2.5D neighbours
    and the maps agree); every copy gets its own case id so that neighbours never cross copies.
    """
    sp = specs(cfg)
    ae = _load_net(run_dir, "autoencoder", "autoencoder", sp["autoencoder"])
    att = _load_net(run_dir, "attention", "attention", sp["attention"])
    ct_all, pet_all, case_all = load_slices(run_dir)
    factor = 2 ** (len(cfg["autoencoder"]["channels"]) - 1)
    aug = _aug_cfg(cfg)
    copies = int(aug.get("latent_copies", 1)) if aug else 1
    n_cases = int(case_all.max()) + 1
    rng = np.random.default_rng(cfg["seed"] + 1)  # a stream of its own (the loops use seed)
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
                case = np.full(len(ct), ci + copy * n_cases)
                stacks = cpdm.stacks_25d(cpdm.ct_to_net(ct), np.zeros(len(ct), int), cfg["context"])
                for s in range(0, len(ct), 64):
                    sl = slice(s, s + 64)
                    c = torch.from_numpy(cpdm.ct_to_net(ct[sl]))[:, None]
                    p = torch.from_numpy(cpdm.pet_to_net(pet[sl]))[:, None]
                    out["y"].append(ae.encode(c)[0])
                    out["x0"].append(ae.encode(p)[0])
                    m = torch.sigmoid(att(torch.from_numpy(stacks[sl])))
                    out["msig"].append(cpdm.downsample_map(m, factor))
                    mu = torch.from_numpy(cpdm.attenuation_condition(ct[sl], cfg["kvp"]))[:, None]
                    out["mmu"].append(cpdm.downsample_map(mu, factor))
                out["case"].append(case)
            log.info("latents: copy %d of %d done (%.0f s)", copy + 1, copies, time.monotonic() - t0)
    y, x0 = torch.cat(out["y"]), torch.cat(out["x0"])
    scale = float(1.0 / torch.cat([y, x0]).std())  # unit-variance latents (Rombach et al. 2022 §4.3.2)
    np.savez(run_dir / "latents.npz", y=(y * scale).numpy(), x0=(x0 * scale).numpy(),
             msig=torch.cat(out["msig"]).numpy(), mmu=torch.cat(out["mmu"]).numpy(),
             case=np.concatenate(out["case"]))
    info = {"latent_scale": scale, "slices": int(len(y)), "copies": copies,
            "seconds": round(time.monotonic() - t0, 1)}
    (run_dir / "latents.json").write_text(json.dumps(info, indent=2))
    log.info("latents: %s", info)
    return info


def encode_real_latents(cfg: dict, run_dir: Path) -> dict:
    """Latents of the real pairs (prepare_real/) with the run's autoencoder, attention and latent scale."""
    sp = specs(cfg)
    ae = _load_net(run_dir, "autoencoder", "autoencoder", sp["autoencoder"])
    att = _load_net(run_dir, "attention", "attention", sp["attention"])
    scale = json.loads((run_dir / "latents.json").read_text())["latent_scale"]
    factor = 2 ** (len(cfg["autoencoder"]["channels"]) - 1)
    out = {k: [] for k in ("y", "x0", "msig", "mmu", "case")}
    files = sorted((run_dir / "prepare_real").glob("*.npz"))
    with torch.no_grad():
        for ci, f in enumerate(files):
            d = np.load(f)
            ct, pet = d["ct"], d["pet"]
            stacks = cpdm.stacks_25d(cpdm.ct_to_net(ct), np.zeros(len(ct), int), cfg["context"])
            out["y"].append(ae.encode(torch.from_numpy(cpdm.ct_to_net(ct))[:, None])[0] * scale)
            out["x0"].append(ae.encode(torch.from_numpy(cpdm.pet_to_net(pet))[:, None])[0] * scale)
            out["msig"].append(cpdm.downsample_map(torch.sigmoid(att(torch.from_numpy(stacks))), factor))
            mu = torch.from_numpy(cpdm.attenuation_condition(ct, cfg["kvp"]))[:, None]
            out["mmu"].append(cpdm.downsample_map(mu, factor))
            out["case"].append(np.full(len(ct), ci))
    np.savez(run_dir / "latents_real.npz", **{k: (torch.cat(v).numpy() if k != "case" else np.concatenate(v))
                                              for k, v in out.items()})
    info = {"cases": [f.stem for f in files], "slices": int(sum(len(c) for c in out["case"]))}
    (run_dir / "latents_real.json").write_text(json.dumps(info, indent=2))
    log.info("real latents: %s", info)
    return info


def _latent_condition(lat: dict, i: np.ndarray, context: int, use_sigma: bool, use_mu: bool
                      ) -> torch.Tensor:
    """cond = [CT latents of the 2*context neighbours, M_sigma?, M_mu?] for slices ``i``."""
    case = lat["case"]
    n = len(case)
    parts = []
    for off in [o for o in range(-context, context + 1) if o != 0]:
        j = np.clip(i + off, 0, n - 1)
        j = np.where(case[j] == case[i], j, i)
        parts.append(lat["y"][j])
    if use_sigma:
        parts.append(lat["msig"][i])
    if use_mu:
        parts.append(lat["mmu"][i])
    return torch.from_numpy(np.concatenate(parts, 1)).float()


def train_bridge(cfg: dict, run_dir: Path, variant: str) -> dict:
    from PETDiffusionLib.diffusion.bridge import BrownianBridge
    c = cfg["bridge"]
    use_sigma, use_mu = VARIANTS[variant] if variant in VARIANTS else (True, True)
    stage = f"bridge:{variant}" if variant in VARIANTS else "regression"
    torch.manual_seed(cfg["seed"])
    spec = specs(cfg)[stage]
    net = cpdm.build(spec["class"], spec["args"])
    lat = dict(np.load(run_dir / "latents.npz"))
    bb = BrownianBridge(c["num_train_timesteps"], c["max_var"], c["objective"])
    loop = _Loop(run_dir / stage.replace(":", "_"), {"net": net}, c["lr"], c["steps"], cfg["seed"],
                 c.get("ema_decay", 0.999), cfg.get("checkpoint_seconds", 60))
    n = len(lat["case"])
    real_frac = float((cfg.get("real_pairs") or {}).get("fraction", 0.0))
    real = dict(np.load(run_dir / "latents_real.npz")) if real_frac > 0 else None
    n_real = int(round(real_frac * c["batch"])) if real is not None else 0

    def loss_fn(step, gen, rng):
        i = rng.integers(0, n, c["batch"] - n_real)
        x0 = torch.from_numpy(lat["x0"][i]).float()
        y = torch.from_numpy(lat["y"][i]).float()
        cond = _latent_condition(lat, i, cfg["context"], use_sigma, use_mu)
        if n_real:  # a fixed share of every batch from the real pairs (cfg real_pairs.fraction)
            j = rng.integers(0, len(real["case"]), n_real)
            x0 = torch.cat([x0, torch.from_numpy(real["x0"][j]).float()])
            y = torch.cat([y, torch.from_numpy(real["y"][j]).float()])
            cond = torch.cat([cond, _latent_condition(real, j, cfg["context"], use_sigma, use_mu)])
            i = np.concatenate([i, j])
        if stage == "regression":  # same net, input [y-context..., y, maps] without x_t, t = 0
            inp = torch.cat([y, cond], 1)
            out = net(inp, torch.zeros(len(i), dtype=torch.long))
            return F.l1_loss(out, x0), {}
        t = torch.randint(0, bb.num_train_timesteps, (len(i),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        return bb.training_loss(net, x0, y, cond, t=t, noise=noise), {}

    summary = loop.run(loss_fn)
    summary["parameters"] = int(sum(p.numel() for p in net.parameters()))
    (loop.dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def export(cfg: dict, run_dir: Path, args_cmd: str = "") -> list[Path]:
    """The shipped CPDM folder (cfg['export']) and one folder per ablation under run_dir/models."""
    from PETDiffusionLib.models.registry import save_model_folder
    sp = specs(cfg)
    ae = _load_net(run_dir, "autoencoder", "autoencoder", sp["autoencoder"])
    att = _load_net(run_dir, "attention", "attention", sp["attention"])
    lat_info = json.loads((run_dir / "latents.json").read_text())
    floor = json.loads((run_dir / "prepare" / "floor.json").read_text())
    summaries = {s: json.loads((run_dir / s.replace(":", "_") / "summary.json").read_text())
                 for s in STAGES[1:-1] if _stage_done(run_dir, s) and s != "latents"}
    written = []
    for stage in ["bridge:cpdm", "bridge:no_sigma", "bridge:no_mu", "regression"]:
        if not _stage_done(run_dir, stage):
            log.warning("export: stage %s not trained; skipped", stage)
            continue
        variant = stage.split(":")[-1]
        net = _load_net(run_dir, stage, "net", sp[stage])
        use_sigma, use_mu = VARIANTS.get(variant, (True, True))
        card = model_card(cfg, variant, use_sigma, use_mu, lat_info, floor, summaries, args_cmd)
        card["networks"] = {"autoencoder": sp["autoencoder"], "attention": sp["attention"],
                            "denoiser": sp[stage]}
        card["training"]["cases"] = sorted(f.stem for f in (run_dir / "prepare").glob("*.npz"))
        early = run_dir / "prepare_stage1"  # see runs/ct_to_pet/stage2.sh
        if early.is_dir():
            card["training"]["autoencoder_attention_cases"] = (
                sorted(f.stem for f in early.glob("*.npz")) + [
                    "note: the autoencoder and the attention U-Net were trained on these cases of an "
                    "earlier run of the same simulator (regenerated afterwards with a faster OSEM and "
                    "kidney parenchyma); latents, bridges and baselines use 'cases'"])
        folder = (Path(cfg["export"]) if variant == "cpdm"
                  else run_dir / "models" / f"cpdm-{variant.replace('_', '-')}")
        save_model_folder(folder, {"autoencoder": ae, "attention": att, "denoiser": net}, card)
        written.append(folder)
    return written


def model_card(cfg: dict, variant: str, use_sigma: bool, use_mu: bool, lat_info: dict, floor: dict,
               summaries: dict, command: str) -> dict:
    model_id = Path(cfg["export"]).name if variant == "cpdm" else f"cpdm-{variant.replace('_', '-')}"
    aug, real = _aug_cfg(cfg), cfg.get("real_pairs") or {}
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
            "ct": f"clip HU to [{cpdm.CT_HU_MIN}, {cpdm.CT_HU_MAX}], divide by {cpdm.CT_HU_SCALE}",
            "pet": f"2 log(1+SUV)/log(1+{cpdm.PET_SUV_REF}) - 1; inverse exact; no upper clip",
            "latent_scale": lat_info["latent_scale"],
            "latent_factor": 2 ** (len(cfg["autoencoder"]["channels"]) - 1),
            "attention_suv_threshold": cfg["attention_suv_threshold"],
            "attenuation": "M_mu = exp(-mu), mu from HU by Abella 2012 trilinear (PHYSICS.md §3); "
                           f"fed as (M_mu - {cpdm.MU_MAP_CENTRE}) * {cpdm.MU_MAP_GAIN}",
            "use_sigma": use_sigma, "use_mu": use_mu,
            "tissue_floor_suv": floor, "tissue_hu_edges": list(cpdm.TISSUE_HU_EDGES)},
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


def record_evaluation(model_folder: str | Path, evaluation_json: str | Path, notes: dict | None = None
                      ) -> dict:
    """Copy the measured figures of ``petdiffusion evaluate ct-to-pet`` into the card's "evaluation"
    (the weights hash is untouched: card.json is not part of the hashed weights)."""
    from PETDiffusionLib.io.atomic import atomic_write_text
    folder = Path(model_folder)
    card = json.loads((folder / "card.json").read_text())
    ev = json.loads(Path(evaluation_json).read_text())
    card["evaluation"] = {
        "command": f"petdiffusion evaluate ct-to-pet --cohort {ev['cohort']}",
        "cohort": ev["cohort"], "cases": ev["cases"], "steps": ev["steps"],
        "metrics_inside": ev["metrics_inside"], "reference": ev["reference"],
        "summary": ev["summary"], "steps_curve": ev.get("steps_curve"),
        "real_data": ev.get("real_data"), "threads": ev.get("threads"), **(notes or {})}
    atomic_write_text(folder / "card.json", json.dumps(card, indent=2) + "\n")
    return card


# ------------------------------------------------------------------------------------------------

def train(config: dict, args=None) -> int:
    """Entry point of ``petdiffusion train ct-to-pet --config FILE`` (runs the stages not yet done)."""
    cfg = dict(config)
    run_dir = Path(cfg["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(cfg.get("threads", 1)))
    wanted = getattr(args, "stage", None) or "all"
    stages = STAGES if wanted == "all" else [s.strip() for s in wanted.split(",")]
    cmd = f"petdiffusion train ct-to-pet --config {getattr(args, 'config', '?')}"
    for s in stages:
        t0 = time.monotonic()
        if s == "prepare":
            prepare(cfg, run_dir)
        elif s == "autoencoder" and not _stage_done(run_dir, s):
            train_autoencoder(cfg, run_dir)
        elif s == "attention" and not _stage_done(run_dir, s):
            train_attention(cfg, run_dir)
        elif s == "latents" and not (run_dir / "latents.json").is_file():
            encode_latents(cfg, run_dir)
        elif s == "prepare_real":
            prepare_real(cfg, run_dir)
        elif s == "latents_real" and not (run_dir / "latents_real.json").is_file():
            encode_real_latents(cfg, run_dir)
        elif s.startswith("bridge:") and not _stage_done(run_dir, s):
            train_bridge(cfg, run_dir, s.split(":", 1)[1])
        elif s == "regression" and not _stage_done(run_dir, s):
            train_bridge(cfg, run_dir, "regression")
        elif s == "export":
            export(cfg, run_dir, cmd)
        log.info("stage %s finished in %.1f s", s, time.monotonic() - t0)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--stage", default="all",
                   help="comma-separated stages: " + ", ".join(STAGES + OPTIONAL_STAGES))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return train(json.loads(Path(args.config).read_text()), args)


if __name__ == "__main__":
    raise SystemExit(main())
