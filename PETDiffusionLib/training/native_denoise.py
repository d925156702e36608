"""Training recipe of the native-resolution AMDiff denoiser on real PET texture (issue 13).

``petdiffusion train denoise-segment --config configs/denoise_segment_native.json`` (a config with
``"recipe": "native"``) runs three stages in ``run_dir``:

- ``bank``: pairs (low-count image, standard image) at many voxel sizes, count levels and
  reconstructions, made from REAL PET (:mod:`PETDiffusionLib.physics.lowcount`):
  - the sarcoma crops of the "finetune" split (``tasks.denoise_segment.realval.split_of``), with
    attenuation from their CT where they have one;
  - the training part of the real whole-body study petwb_sts001 (slices below
    ``realval.PETWB_VALIDATION_FROM_Z``);
  - each at its own grid (reference = the real image) and re-gridded finer in-plane
    (``fine_spacing_mm``), where the reference is a full-count reconstruction of the re-gridded real
    image, so that it has a scanner's noise grain at that voxel size as a real standard image does;
  - phantom pairs of ``phantom_cohort`` (noise-free truth, 4 x 4 x 5 mm) so the phantom world is not
    forgotten.
  Per pair the count level is log-uniform in ``fraction_range``; OSEM (2-4 iterations, 8-16 subsets)
  or MLEM, PSF blur with or without its modelling, post-filter 0-6 mm, all drawn per pair (issue 13:
  "a noise model that matches real scanners, not one simulator"). The network is blind to the count
  level: it estimates it from the image (the card says so and keeps the training range of
  :func:`PETDiffusionLib.quant.noise.noise_index` for the out-of-range warning).
- ``train``: the AMDiff denoiser f_den (x0-prediction, Eq. 2) on 2.5D patches through
  :class:`~PETDiffusionLib.training.loop.Trainer`. Half the samples are drawn at t = T - 1, where the
  x0 prediction is the posterior mean given the low-count input (the one-step estimate the card's
  steps curve compares with multi-step sampling).
- ``export``: f_den (EMA) with the paper's revision skip (f_rev with its zero-initialised body: the
  part of the input above the cut-off passes through) and the shipped segmenter of ``segmenter_from``
  (trained on the 4 x 4 x 5 mm working grid, where the pipeline runs it).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from safetensors.torch import load_file
from scipy.ndimage import zoom

from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.io.dicom import read_pet_suv
from PETDiffusionLib.methods.amdiff import networks as amdiff_networks
from PETDiffusionLib.methods.amdiff.networks import LESION_CLASSES, ORGAN_CLASSES, SUVNormalisation
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.models.registry import load_model_folder, save_model_folder
from PETDiffusionLib.physics.attenuation import hu_to_mu
from PETDiffusionLib.physics.lowcount import ReconSettings, body_outline, simulate_low_count
from PETDiffusionLib.quant.noise import noise_index
from PETDiffusionLib.tasks.denoise_segment.realval import PETWB_VALIDATION_FROM_Z, split_of
from PETDiffusionLib.training.loop import Stage, StepInfo, TrainConfig, Trainer, TrainOptions, run_stages

log = logging.getLogger(__name__)

TASK = "denoise-segment"
CT_AIR_HU = -1000.0   # PHYSICS.md §3


@dataclass
class NativeConfig:
    recipe: str = "native"
    run_dir: str = "runs/denoise_native"
    sts_data: str = "../shared/data/petct_sts_more"
    petwb: str = "../shared/data/petwb_sts001/PET/image"
    phantom_cohort: str = "cohorts/train"
    phantom_cases: list[int] = field(default_factory=lambda: list(range(2, 14)))
    phantom_fractions: list[int] = field(default_factory=lambda: [25, 10, 5])
    crop_native_variants: int = 1
    crop_fine_variants: int = 1
    petwb_native_variants: int = 3
    petwb_fine_variants: int = 2
    require_ct: bool = False           # only crops with a CT (restore's native bank: the CT guide)
    fine_spacing_mm: list[float] = field(default_factory=lambda: [1.8, 3.2])
    fraction_range: list[float] = field(default_factory=lambda: [0.01, 0.5])
    mlem_probability: float = 0.3
    psf_probability: float = 0.4
    bank_workers: int = 2
    phantom_weight: float = 0.25       # probability that a training sample is a phantom pair
    patch: int = 64
    batch: int = 12
    max_steps: int = 4000
    max_minutes: float = 0.0
    lr: float = 5e-4
    warmup: int = 100
    ema: float = 0.999
    num_train_timesteps: int = 250     # AMDiff Sec. 3.2: T = 250
    top_t_fraction: float = 0.5        # share of samples at t = T - 1 (the posterior-mean estimate)
    denoiser: dict = field(default_factory=lambda: {"context": 2, "channels": [24, 48, 96, 96]})
    residual: bool = True              # f_den corrects the low-count slice (ResidualDenoiser)
    hot_patch_fraction: float = 0.3    # patches centred on the hottest voxels (lesions, bladder)
    loss_weight_power: float = 2.0     # weight (1 + SUV)^p of the log-unit error; p = 2 is the SUV MSE
    revision: dict = field(default_factory=lambda: {"hidden": 16, "layers": 3})
    segmenter_from: str = "PETDiffusionLib/models/amdiff-sts-2p5d"
    init_from: str = ""                # a model folder whose denoiser starts the training (fine-tune)
    supported_spacing_mm: dict = field(default_factory=lambda: {"inplane": [1.5, 6.0],
                                                                "slice": [1.5, 6.0]})
    segment_spacing_mm: list[float] = field(default_factory=lambda: [4.0, 4.0, 5.0])
    ckpt_every: int = 200
    log_every: int = 50
    export_id: str = "amdiff-native-2p5d"
    export_version: str = "0.3.0"
    seed: int = 0
    threads: int = 2
    device: str = "cpu"

    @classmethod
    def from_dict(cls, d: dict) -> "NativeConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if not k.startswith("_")}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Bank
# --------------------------------------------------------------------------------------------
def _random_settings(rng: np.random.Generator, cfg: NativeConfig) -> ReconSettings:
    if rng.random() < cfg.mlem_probability:
        iterations, subsets = int(rng.integers(10, 31)), 1
    else:
        iterations, subsets = int(rng.integers(2, 5)), int(rng.choice([8, 16]))
    psf = float(rng.uniform(2.0, 5.0)) if rng.random() < cfg.psf_probability else 0.0
    post = float(rng.uniform(0.0, 6.0)) if rng.random() < 0.8 else 0.0
    return ReconSettings(iterations, subsets, psf, bool(psf > 0 and rng.random() < 0.5), post)


def _load_real(job: dict) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float],
                                   np.ndarray | None]:
    """[Z,Y,X] SUV, the attenuation map (or None), the spacing (x, y, z) and the CT in HU on the
    PET grid (or None) of a bank source."""
    if job["kind"] == "petwb":
        img = read_pet_suv(job["path"])
        img = img[0] if isinstance(img, tuple) else img
        suv = sitk.GetArrayFromImage(img)[: PETWB_VALIDATION_FROM_Z].astype(np.float32)
        return suv, None, tuple(img.GetSpacing()), None
    pet = sitk.ReadImage(str(Path(job["path"]) / "PET_image.nii.gz"), sitk.sitkFloat32)
    suv = np.clip(sitk.GetArrayFromImage(pet), 0, None).astype(np.float32)
    mu = hu = None
    ct_path = Path(job["path"]) / "CT_image.nii.gz"
    if ct_path.is_file():
        ct = sitk.Resample(sitk.ReadImage(str(ct_path), sitk.sitkFloat32), pet, sitk.Transform(),
                           sitk.sitkLinear, CT_AIR_HU, sitk.sitkFloat32)
        hu = sitk.GetArrayFromImage(ct).astype(np.float32)
        mu = hu_to_mu(hu, 120.0).astype(np.float32)
    return suv, mu, tuple(pet.GetSpacing()), hu


def _regrid(arr: np.ndarray, sp, s: float) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Re-grid [Z,Y,X] in-plane to square voxels of about ``s`` mm (linear): both axes get the x
    axis's exact spacing, the y extent is kept to within half a voxel (a training image only)."""
    ny, nx = arr.shape[1:]
    nx2 = max(1, round(nx * sp[0] / s))
    s2 = sp[0] * nx / nx2
    ny2 = max(1, round(ny * sp[1] / s2))
    return zoom(arr, (1, ny2 / ny, nx2 / nx), order=1, grid_mode=True, mode="nearest"), (s2, s2, sp[2])


def make_pair(job: dict) -> dict:
    """One bank pair from a real source (run in a worker process): writes ``job["out"]`` (with the
    CT in HU on the pair's grid, ``ct``, when the source has one); a pair already written by an
    interrupted bank stage is reused (the draws are the same: same seed)."""
    torch.set_num_threads(1)
    cfg = NativeConfig.from_dict(job["cfg"])
    rng = np.random.default_rng(job["seed"])
    done = Path(job["out"]).is_file()
    suv, mu, sp, hu = (None, None, None, None) if done else _load_real(job)
    meta = {"source": job["source"], "fine": job["fine"]}
    if job["fine"]:
        s = float(rng.uniform(*cfg.fine_spacing_mm))
        sref = _random_settings(rng, cfg)
        ref_seed = int(rng.integers(1 << 30))
        if not done:
            suv, sp2 = _regrid(suv, sp, s)
            suv = np.clip(suv, 0, None)
            mu = None if mu is None else _regrid(mu, sp, s)[0]
            hu = None if hu is None else _regrid(hu, sp, s)[0]
            sp = sp2
            ref = simulate_low_count(suv, sp, 1.0, sref, ref_seed, mu)
        meta["reference"] = {"full_count_recon": sref.to_dict()}
    else:
        ref = suv
        meta["reference"] = "the real image"
    lo, hi = cfg.fraction_range
    frac = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    slow = _random_settings(rng, cfg)
    low_seed = int(rng.integers(1 << 30))
    if done:
        z = np.load(job["out"])
        low, ref, body = z["low"].astype(np.float32), z["ref"].astype(np.float32), z["body"]
        sp = tuple(float(v) for v in z["spacing"])
    else:
        low = simulate_low_count(ref, sp, frac, slow, low_seed, mu)
        body = body_outline(ref, sp)
    meta.update({"fraction": frac, "settings": slow.to_dict(), "spacing_mm_xyz": list(sp),
                 "shape_zyx": list(ref.shape), "noise_index": noise_index(low, ref, body)})
    if not done:
        tmp = job["out"] + ".tmp.npz"
        extra = {} if hu is None else {"ct": hu.astype(np.float16)}
        np.savez(tmp, low=low.astype(np.float16), ref=ref.astype(np.float16),
                 body=body, spacing=np.asarray(sp, np.float32), **extra)
        Path(tmp).replace(job["out"])
    return meta


def bank_jobs(cfg: NativeConfig, folder: Path) -> list[dict]:
    crops = sorted(p for p in Path(cfg.sts_data).glob("STS_*") if split_of(p.name) == "finetune"
                   and (not cfg.require_ct or (p / "CT_image.nii.gz").is_file()))
    if not crops:
        raise InputError("no sarcoma crops of the finetune split"
                         + (" with a CT" if cfg.require_ct else ""), cfg.sts_data)
    jobs = []
    sources = [(p, "crop", cfg.crop_native_variants, cfg.crop_fine_variants) for p in crops]
    if cfg.petwb_native_variants + cfg.petwb_fine_variants > 0:
        sources.append((Path(cfg.petwb), "petwb", cfg.petwb_native_variants, cfg.petwb_fine_variants))
    for path, kind, n_native, n_fine in sources:
        for fine, n in ((False, n_native), (True, n_fine)):
            for _ in range(n):
                i = len(jobs)
                jobs.append({"kind": kind, "path": str(path), "fine": fine, "seed": cfg.seed * 100003 + i,
                             "source": f"{kind}:{path.name if kind == 'crop' else 'petwb_sts001'}",
                             "out": str(folder / f"pair_{i:04d}.npz"), "cfg": asdict(cfg)})
    return jobs


def build_bank(cfg: NativeConfig, folder: Path) -> dict:
    jobs = bank_jobs(cfg, folder)
    # big jobs first so the two workers finish together
    jobs.sort(key=lambda j: (j["kind"] != "petwb", not j["fine"]))
    with ProcessPoolExecutor(max_workers=cfg.bank_workers) as pool:
        metas = list(pool.map(make_pair, jobs))
    items = [{"file": Path(j["out"]).name, **m} for j, m in zip(jobs, metas)]
    idx = [m["noise_index"] for m in metas if np.isfinite(m["noise_index"])]
    summary = {"pairs": len(items), "noise_index_range": [float(min(idx)), float(max(idx))],
               "sources": sorted({m["source"] for m in metas}), "items": items}
    atomic_write_text(folder / "bank.json", json.dumps(summary, indent=1))
    return {k: summary[k] for k in ("pairs", "noise_index_range")}


# --------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------
class PairSampler:
    """Random 2.5D patches of (low, reference) pairs, real and phantom."""

    def __init__(self, cfg: NativeConfig, bank: Path):
        self.k, self.p = int(cfg.denoiser.get("context", 1)), cfg.patch
        self.real = [self._load(np.load(bank / it["file"])) for it in
                     json.loads((bank / "bank.json").read_text())["items"]]
        self.phantom = []
        for i in cfg.phantom_cases:
            d = Path(cfg.phantom_cohort) / f"case_{i:04d}"
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "suv_true.nii.gz"), sitk.sitkFloat32))
            for f in cfg.phantom_fractions:
                low = sitk.GetArrayFromImage(sitk.ReadImage(str(d / f"pet_low_{f}.nii.gz"),
                                                            sitk.sitkFloat32))
                self.phantom.append(self._pad(low.astype(np.float16), ref.astype(np.float16),
                                              ref > 0.05))
        self.phantom_weight = cfg.phantom_weight if self.phantom else 0.0
        self.hot_fraction = cfg.hot_patch_fraction
        log.info("sampler: %d real pairs, %d phantom pairs", len(self.real), len(self.phantom))

    def _load(self, z) -> tuple:
        return self._pad(z["low"], z["ref"], z["body"])

    def _pad(self, low, ref, body) -> tuple:
        _, ny, nx = low.shape
        py, px = max(0, self.p - ny), max(0, self.p - nx)
        pads = ((0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2))
        low, ref, body = (np.pad(a, pads) for a in (low, ref, body))
        zs = np.nonzero(body.any((1, 2)))[0]
        r = ref.astype(np.float32)
        hot = np.argwhere(r >= max(float(np.percentile(r[body], 99.5)) if body.any() else 1.0, 1.0))
        return low, ref, body, zs, hot

    def batch(self, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        conds, targets = [], []
        for _ in range(n):
            pool = self.phantom if rng.random() < self.phantom_weight else self.real
            low, ref, body, zs, hot = pool[int(rng.integers(len(pool)))]
            h = self.p // 2
            if len(hot) and rng.random() < self.hot_fraction:
                z, yc, xc = (int(v) for v in hot[int(rng.integers(len(hot)))])
                y0 = int(np.clip(yc - h + rng.integers(-h // 2, h // 2 + 1), 0, low.shape[1] - self.p))
                x0 = int(np.clip(xc - h + rng.integers(-h // 2, h // 2 + 1), 0, low.shape[2] - self.p))
            else:
                z = None
            for _try in range(6 if z is None else 0):
                z = int(zs[int(rng.integers(len(zs)))])
                y0 = int(rng.integers(0, low.shape[1] - self.p + 1))
                x0 = int(rng.integers(0, low.shape[2] - self.p + 1))
                if body[z, y0:y0 + self.p, x0:x0 + self.p].mean() > 0.3:
                    break
            zz = np.clip(np.arange(z - self.k, z + self.k + 1), 0, low.shape[0] - 1)
            c = low[zz, y0:y0 + self.p, x0:x0 + self.p].astype(np.float32)
            t = ref[z, y0:y0 + self.p, x0:x0 + self.p].astype(np.float32)[None]
            rot, flip = int(rng.integers(4)), bool(rng.integers(2))
            c, t = np.rot90(c, rot, (1, 2)), np.rot90(t, rot, (1, 2))
            if flip:
                c, t = c[:, :, ::-1], t[:, :, ::-1]
            conds.append(np.ascontiguousarray(c))
            targets.append(np.ascontiguousarray(t))
        return {"low": torch.from_numpy(np.stack(conds)), "ref": torch.from_numpy(np.stack(targets))}


def native_loss(batch: dict, nets: dict, diffusion: ConditionalDiffusion, norm: SUVNormalisation,
                top_fraction: float, gen: torch.Generator, power: float = 2.0
                ) -> tuple[torch.Tensor, dict]:
    """x0-prediction loss of f_den, the log-unit error weighted by (1 + SUV)^power: the metric is in
    SUV and dSUV = (1 + SUV) log(21) du, so power 2 is (to first order) the SUV mean squared error."""
    den = nets["denoiser"]
    low, ref = batch["low"], batch["ref"]
    cond = norm.to_x(low)
    x0 = norm.to_x(ref)
    b = x0.shape[0]
    T = diffusion.num_train_timesteps
    t = torch.randint(0, T, (b,), generator=gen)
    top = torch.rand(b, generator=gen) < top_fraction
    t = torch.where(top, torch.full_like(t, T - 1), t)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = diffusion.scheduler.add_noise(x0, noise, t)
    pred = den(torch.cat([x_t, cond], 1), t)
    w = (1.0 + ref.clamp(0, norm.cutoff)) ** power
    loss = ((pred - x0) ** 2 * w).sum() / w.sum()
    err = ((pred - x0) ** 2 * w).detach()
    return loss, {"loss_top": float(err[top].sum() / w[top].sum().clamp_min(1e-6))}


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------
def _networks(cfg: NativeConfig, revision: bool = False) -> dict:
    """f_den (trained here) and, for the export, f_rev: its body ends in a zero-initialised layer,
    so untrained it is exactly the paper's skip of the input above the cut-off (Eq. 6)."""
    specs = amdiff_networks.network_specs(cfg.denoiser, cfg.revision, {}, cfg.residual)
    torch.manual_seed(cfg.seed)
    nets = {"denoiser": build_network(specs["denoiser"])}
    if revision:
        nets["revision"] = build_network(specs["revision"])
    return nets


def initial_networks(cfg: NativeConfig) -> dict:
    """The networks a training starts from: freshly initialised, or with the denoiser of the
    model folder ``cfg.init_from`` (a fine-tune; same architecture, the state dict must match)."""
    nets = _networks(cfg)
    if cfg.init_from:
        init_nets, init_card = load_model_folder(cfg.init_from, task=TASK)
        try:
            nets["denoiser"].load_state_dict(init_nets["denoiser"].state_dict())
        except RuntimeError as exc:
            raise InputError(f"{cfg.init_from}: its denoiser does not match the configured "
                             f"architecture {cfg.denoiser} ({str(exc).splitlines()[0]})") from exc
        log.info("denoiser initialised from %s %s", init_card["id"], init_card["version"])
    return nets


def model_card(cfg: NativeConfig, steps: int, command: str, bank: dict, seg_card: dict) -> dict:
    specs = amdiff_networks.network_specs(cfg.denoiser, cfg.revision,
                                          seg_card["networks"]["segmenter"]["args"], cfg.residual)
    return {"id": cfg.export_id, "version": cfg.export_version, "task": TASK, "networks": specs,
            "preprocessing": {"suv_cutoff": SUVNormalisation().cutoff,
                              "context_slices": int(cfg.denoiser.get("context", 1)),
                              "grid": "native",
                              "supported_spacing_mm": cfg.supported_spacing_mm,
                              "spacing_mm": list(cfg.segment_spacing_mm),
                              "spacing_note": "the denoiser runs on the input's own grid; the "
                                              "segmenter on spacing_mm (the grid it was trained on)"},
            "diffusion": {"schedule": "cosine", "prediction": "sample",
                          "num_train_timesteps": cfg.num_train_timesteps},
            "inference": {"steps": 1, "sampler": "ddim", "start_fraction": 1.0,
                          "count_preserving": True,
                          "noise_index_range": bank["noise_index_range"],
                          "count_level": "estimated by the network from the image (blind); the "
                                         "noise index range of the training pairs is kept for the "
                                         "out-of-range warning"},
            "classes": {"organs": list(ORGAN_CLASSES), "lesions": list(LESION_CLASSES)},
            "training": {"config": asdict(cfg), "steps": steps, "command": command,
                         "segmenter": f"copied from {seg_card['id']} {seg_card['version']}"}}


def stages(cfg: NativeConfig, options: TrainOptions) -> list[Stage]:
    run = Path(cfg.run_dir)
    norm = SUVNormalisation()

    def bank(folder: Path) -> dict:
        return build_bank(cfg, folder)

    def train_networks(folder: Path) -> dict:
        nets = initial_networks(cfg)
        sampler = PairSampler(cfg, run / "bank")
        diffusion = ConditionalDiffusion(cfg.num_train_timesteps, "cosine", "sample")

        def loss_fn(batch, networks, info: StepInfo):
            return native_loss(batch, networks, diffusion, norm, cfg.top_t_fraction, info.generator,
                               cfg.loss_weight_power)

        tcfg = TrainConfig(lr=cfg.lr, max_steps=cfg.max_steps, batch_size=cfg.batch, warmup=cfg.warmup,
                           ema_decay=cfg.ema, grad_clip=1.0, ckpt_every=cfg.ckpt_every,
                           log_every=cfg.log_every, seed=cfg.seed, num_threads=cfg.threads,
                           device=cfg.device, max_minutes=cfg.max_minutes, progress_bar=False)
        trainer = Trainer(tcfg, nets, loss_fn, lambda step, rng: sampler.batch(cfg.batch, rng),
                          run_dir=folder)
        resume = bool(options.resume and (folder / "checkpoint" / "state.pt").is_file())
        logs = trainer.fit(resume=resume)
        return {"steps": trainer.step, "last": logs}

    def export(folder: Path) -> dict:
        ckpt = run / "train" / "checkpoint"
        tensors = load_file(str(ckpt / "ema.safetensors"))
        nets = _networks(cfg, revision=True)
        nets["denoiser"].load_state_dict({k[len("denoiser."):]: v for k, v in tensors.items()
                                          if k.startswith("denoiser.")})
        seg_nets, seg_card = load_model_folder(cfg.segmenter_from, task=TASK)
        nets["segmenter"] = seg_nets["segmenter"]
        step = int(torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)["step"])
        bank_info = json.loads((run / "bank" / "bank.json").read_text())
        out = save_model_folder(folder / "model", nets,
                                model_card(cfg, step, options.command(TASK), bank_info, seg_card))
        return {"model": str(out), "steps": step}

    return [Stage("bank", bank, rank0_only=True), Stage("train", train_networks),
            Stage("export", export, rank0_only=True)]


def train_native(config: dict, options: TrainOptions | None = None) -> int:
    options = options or TrainOptions()
    cfg = NativeConfig.from_dict(config)
    if options.run_dir:
        cfg.run_dir = options.run_dir
    if options.device:
        cfg.device = options.device
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "config.json", json.dumps(asdict(cfg), indent=2))
    summaries = run_stages(run, stages(cfg, options), options.stages)
    log.info("%s", json.dumps(summaries, default=str))
    return 0
