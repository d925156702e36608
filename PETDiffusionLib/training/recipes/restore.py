"""Training recipe for the restore task (MFdiff), sized for a CPU: two-stage supervise-assisted
learning (MFdiff Sec. 3.3).

``petdiffusion train restore --config configs/restore.json [--resume] [--stage S]`` runs these
stages (:func:`PETDiffusionLib.training.loop.run_stages`, one folder each in ``run_dir``):

- ``real-cohort``: low-dose versions of the real sarcoma PET/CT (``../shared/data/petct_sts_more``)
  made with the project's acquisition simulator (:func:`PETDiffusionLib.training.real_sts.build_cohort`,
  reused as is: fixed split by case id, every third id held apart as ``validation``).
- ``external``: Eq. 9 on the simulated cohort (standard-dose ``pet_ac`` vs ``pet_low_<f>``, MR T1
  and CT guides drawn with probability 1/2 each), from scratch.
- ``internal``: Eq. 9 on the real cohort's ``finetune`` cases that have a CT (CT guide), starting
  from the external stage's EMA weights (``internal_init: "external"``) or from scratch
  (``internal_init: ""``: the "internal only" row of Table 6).
- ``mixed`` (``mixed_real_fraction`` > 0): the single-stage mixed training of Table 7, simulated and
  real cases in one run (a real case drawn with that probability).
- ``export``: each trained stage's EMA networks as a model folder ``run_dir/export/<stage>``.

``internal_data: "native"`` makes the internal stage native-resolution (issue 15: the independent
check is on a real whole-body PET at its own 2-5 mm grid, where a 4 x 4 x 5 mm working grid alone
costs about 0.010 body NRMSE, issue 13): a ``native-bank`` stage writes (low-count, reference, CT)
triples from the real crops of the finetune split that have a CT, at their own grid and re-gridded
finer, with the scanner-like count levels and reconstructions of the native denoiser's bank
(:mod:`PETDiffusionLib.training.native_denoise`, ``native_bank`` overrides its options), and the
internal stage trains on those. ``external_from`` names a model folder whose networks start the
internal stage (an external stage trained earlier, e.g. the shipped ``mfdiff-2p5d-external``).

``model: "munet"`` trains the M-UNet baseline (ref. [40], concatenated guide, L1) with the same
data, batch and steps instead (``use_guide: false``: the PET-only UNet row).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion
from PETDiffusionLib.errors import InputError, PETDiffusionError
from PETDiffusionLib.io.atomic import atomic_write_text
import numpy as np

from PETDiffusionLib.methods.mfdiff.cases import PatchSampler, RestoreCase, load_case
from PETDiffusionLib.methods.mfdiff.losses import mfdiff_loss, mfdiff_x0_loss, munet_loss
from PETDiffusionLib.methods.mfdiff.networks import GUIDES, SUV_CUTOFF, guide_to_x, pet_to_x
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.models.registry import load_model_folder, save_model_folder
from PETDiffusionLib.phantom.cohort import cases_in_split, list_cases
from PETDiffusionLib.training.loop import Stage, StepInfo, TrainConfig, Trainer, TrainOptions, run_stages
from PETDiffusionLib.training.native_denoise import NativeConfig, build_bank
from PETDiffusionLib.training.real_sts import build_cohort

log = logging.getLogger(__name__)

TASK = "restore"
NET_MODULE = "PETDiffusionLib.methods.mfdiff.networks"


@dataclass
class RestoreConfig:
    cohort: str = "cohorts/train"            # simulated cohort of the external stage
    real_cohort_data: str = "../shared/data/petct_sts_more"
    real_cohort: str = "cohorts/restore_sts"  # written by the real-cohort stage
    real_cohort_seed: int = 7                 # real_sts.build_cohort default
    run_dir: str = "runs/restore"
    model: str = "mfdiff"                     # mfdiff | munet
    fractions: list[int] = field(default_factory=lambda: [25, 10, 5])  # % counts (issue: 1-25 %)
    spacing_mm: list[float] = field(default_factory=lambda: [4.0, 4.0, 5.0])
    context: int = 1                          # 2.5D: 2k+1 slices of PET and guide
    patch: int = 64
    batch: int = 8
    ct_probability: float = 0.5               # external stage: CT guide, else MR T1
    external_steps: int = 1000
    internal_steps: int = 300
    mixed_steps: int = 0
    mixed_real_fraction: float = 0.0
    internal_init: str = "external"           # "" = internal only, from scratch
    external_from: str = ""                   # a model folder that starts the internal stage
    internal_data: str = "cohort"             # cohort (4x4x5 mm real_cohort) | native (native-bank)
    native_bank: dict = field(default_factory=dict)   # NativeConfig overrides of the native bank
    supported_spacing_mm: dict = field(default_factory=lambda: {"inplane": [1.5, 6.0],
                                                                "slice": [1.5, 6.0]})
    lr: float = 1e-3
    internal_lr: float = 3e-4
    ema: float = 0.995
    max_minutes: float = 0.0                  # per training stage; 0 = no limit
    ckpt_every: int = 200
    log_every: int = 25
    num_train_timesteps: int = 1000           # Sec. 4.1.3: 1000 time steps, DDPM (Ho et al.) schedule
    prediction: str = "epsilon"               # epsilon (Eq. 9) | sample (x0; losses.mfdiff_x0_loss)
    top_t_fraction: float = 0.5               # sample: share of t = T - 1 (the posterior mean)
    loss_weight_power: float = 2.0            # sample: (1 + SUV)^p weights (SUV mean squared error)
    schedule: str = "linear"
    t_max_fraction: float = 0.3               # train t < 0.3 T (losses.draw_timesteps)
    start_fraction: float = 0.1               # inference defaults written into the card
    steps: int = 5
    fusion: dict = field(default_factory=lambda: {"channels": 16, "encoder_blocks": 1, "heads": 2,
                                                  "pool": 4, "out_channels": 8,
                                                  "use_global": True, "use_detail": True})
    unet: dict = field(default_factory=lambda: {"channels": [16, 32, 64], "heads": 2})
    use_guide: bool = True                    # munet only
    export_id: str = "mfdiff-2p5d"
    export_version: str = "0.1.0"
    device: str = "cpu"                       # sized for a CPU; `--device` overrides
    seed: int = 0
    threads: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "RestoreConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if not k.startswith("_")}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        cfg = cls(**d)
        if cfg.model not in ("mfdiff", "munet"):
            raise InputError(f"model must be mfdiff or munet, not {cfg.model!r}")
        if cfg.prediction not in ("epsilon", "sample"):
            raise InputError(f"prediction must be epsilon or sample, not {cfg.prediction!r}")
        if cfg.internal_data not in ("cohort", "native"):
            raise InputError(f"internal_data must be cohort or native, not {cfg.internal_data!r}")
        return cfg

    @property
    def native(self) -> bool:
        return self.internal_data == "native"


def network_specs(cfg: RestoreConfig) -> dict[str, dict]:
    if cfg.model == "munet":
        return {"munet": {"class": f"{NET_MODULE}.MUNet",
                          "args": {"context": cfg.context, "use_guide": cfg.use_guide, **cfg.unet}}}
    fusion = {"context": cfg.context, **cfg.fusion}
    return {"fusion": {"class": f"{NET_MODULE}.FusionModule", "args": fusion},
            "denoiser": {"class": f"{NET_MODULE}.MFdiffUNet",
                         "args": {"context": cfg.context,
                                  "fusion_channels": int(cfg.fusion.get("out_channels", 8)),
                                  **cfg.unet,
                                  **({"residual": True} if cfg.prediction == "sample" else {})}}}


def build_networks(cfg: RestoreConfig) -> dict[str, nn.Module]:
    return {k: build_network(s) for k, s in network_specs(cfg).items()}


def diffusion_of(cfg: RestoreConfig) -> ConditionalDiffusion:
    return ConditionalDiffusion(cfg.num_train_timesteps, cfg.schedule, cfg.prediction)


def simulated_cases(cfg: RestoreConfig) -> list:
    dirs = list_cases(cfg.cohort, require=("pet_ac.nii.gz",))
    log.info("external: %d simulated cases from %s", len(dirs), cfg.cohort)
    return [load_case(d, cfg.fractions, GUIDES, cfg.patch) for d in dirs]


def real_cases(cfg: RestoreConfig, split: str = "finetune") -> list:
    """The real cohort's cases of ``split`` that have a CT (the CT guide is the real guide here)."""
    dirs = [d for d in cases_in_split(cfg.real_cohort, split) if (d / "ct.nii.gz").is_file()]
    if not dirs:
        raise InputError(f"no {split!r} cases with a CT", cfg.real_cohort)
    log.info("internal: %d real %s cases with CT: %s", len(dirs), split, ", ".join(d.name for d in dirs))
    return [load_case(d, cfg.fractions, ("ct",), cfg.patch) for d in dirs]


def native_bank_config(cfg: RestoreConfig, folder: Path) -> NativeConfig:
    """The native denoiser's bank options for restore: finetune crops with a CT only, no whole-body
    study (it has no CT), ``cfg.native_bank`` on top."""
    base = {"run_dir": str(folder), "sts_data": cfg.real_cohort_data, "require_ct": True,
            "petwb_native_variants": 0, "petwb_fine_variants": 0, "crop_native_variants": 3,
            "crop_fine_variants": 3, "seed": cfg.seed}
    return NativeConfig.from_dict({**base, **cfg.native_bank})


def native_cases(bank: Path, pad_to: int) -> list[RestoreCase]:
    """The native bank's triples as restore cases (one count level each, key 0; CT guide)."""
    items = json.loads((bank / "bank.json").read_text())["items"]
    out = []
    for it in items:
        z = np.load(bank / it["file"])
        if "ct" not in z:
            continue
        ref = z["ref"].astype(np.float32)
        target = pet_to_x(torch.from_numpy(ref)).numpy()
        low = pet_to_x(torch.from_numpy(z["low"].astype(np.float32))).numpy()
        guide = guide_to_x(z["ct"].astype(np.float32), "ct")
        _, y, x = ref.shape
        py, px = max(0, pad_to - y), max(0, pad_to - x)
        if py or px:
            pads = ((0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2))
            target, low, guide = (np.pad(a, pads, constant_values=-1.0) for a in (target, low, guide))
        body = np.nonzero(z["body"].reshape(ref.shape[0], -1).mean(1) > 0.02)[0]
        out.append(RestoreCase(f"{it['source']}:{it['file']}", target, {0: low}, {"ct": guide},
                               body if body.size else np.arange(ref.shape[0])))
    if not out:
        raise InputError("the native bank holds no pair with a CT", bank)
    log.info("internal: %d native real pairs with CT from %s", len(out), bank)
    return out


def make_trainer(cfg: RestoreConfig, folder: Path, cases: list, steps: int, lr: float,
                 init: dict[str, torch.Tensor] | None, weights=None) -> Trainer:
    torch.manual_seed(cfg.seed)
    nets = build_networks(cfg)
    if init is not None:
        for name, net in nets.items():
            net.load_state_dict({k[len(name) + 1:]: v for k, v in init.items()
                                 if k.startswith(f"{name}.")})
    sampler = PatchSampler(cases, cfg.patch, cfg.context, cfg.ct_probability, weights)
    diffusion = diffusion_of(cfg)

    def batch_fn(step, rng):
        return sampler.batch(cfg.batch, rng)

    def loss_fn(batch, networks, info: StepInfo):
        if cfg.model == "munet":
            return munet_loss(batch, networks)
        if cfg.prediction == "sample":
            return mfdiff_x0_loss(batch, networks, diffusion, cfg.top_t_fraction, info.generator,
                                  cfg.loss_weight_power)
        return mfdiff_loss(batch, networks, diffusion, cfg.t_max_fraction, info.generator)

    tcfg = TrainConfig(lr=lr, max_steps=steps, batch_size=cfg.batch, warmup=min(50, steps // 10),
                       min_lr_ratio=0.1, ema_decay=cfg.ema, grad_clip=1.0,
                       ckpt_every=cfg.ckpt_every, log_every=cfg.log_every, seed=cfg.seed,
                       num_threads=cfg.threads, device=cfg.device,
                       max_minutes=cfg.max_minutes, progress_bar=False)
    return Trainer(tcfg, nets, loss_fn, batch_fn, run_dir=folder)


def model_card(cfg: RestoreConfig, stage: str, steps: int, command: str) -> dict:
    suffix = "" if stage in ("internal", "mixed") or cfg.model == "munet" else f"-{stage}"
    return {"id": cfg.export_id + suffix, "version": cfg.export_version, "task": TASK,
            "method": cfg.model, "networks": network_specs(cfg),
            "preprocessing": {"suv_cutoff": SUV_CUTOFF, "context_slices": cfg.context,
                              "spacing_mm": list(cfg.spacing_mm),
                              # the native internal stage sees CT guides only (the real data's)
                              "guides": ["ct"] if cfg.native and stage == "internal" else list(GUIDES),
                              **({"grid": "native", "supported_spacing_mm": cfg.supported_spacing_mm,
                                  "spacing_note": "the networks run on the PET's own grid "
                                                  "(internal stage trained on native real pairs); "
                                                  "spacing_mm is the external stage's grid"}
                                 if cfg.native and stage == "internal" else {})},
            "diffusion": {"schedule": cfg.schedule, "prediction": cfg.prediction,
                          "num_train_timesteps": cfg.num_train_timesteps,
                          "trained_t_max_fraction": (1.0 if cfg.prediction == "sample"
                                                     else cfg.t_max_fraction)},
            "inference": {"sampler": "ddim", "steps": cfg.steps, "start_fraction": cfg.start_fraction,
                          "slice_batch": 16,
                          # an x0 model's body total is rescaled to the input's (pipeline)
                          **({"count_preserving": True} if cfg.prediction == "sample" else {})},
            "training": {"config": asdict(cfg), "stage": stage, "steps": steps, "command": command}}


def stages(cfg: RestoreConfig, options: TrainOptions) -> list[Stage]:
    run = Path(cfg.run_dir)
    trained: list[str] = []

    def ema_of(name: str) -> dict[str, torch.Tensor]:
        path = run / name / "checkpoint" / "ema.safetensors"
        if not path.is_file():
            raise PETDiffusionError(f"{path}: stage {name!r} has no checkpoint; run it first")
        return load_file(str(path))

    def fit(folder: Path, cases, steps, lr, init, weights=None) -> dict:
        resume = bool(options.resume and (folder / "checkpoint" / "state.pt").is_file())
        trainer = make_trainer(cfg, folder, cases, steps, lr, None if resume else init, weights)
        logs = trainer.fit(resume=resume)
        if trainer.step < steps:
            raise PETDiffusionError(f"{folder}: stopped at step {trainer.step} of {steps} (the "
                                    f"{cfg.max_minutes:g}-minute limit); rerun with --resume")
        return {"steps": trainer.step, "last": logs}

    def real_cohort(folder: Path) -> dict:
        infos = build_cohort(cfg.real_cohort_data, cfg.real_cohort, seed=cfg.real_cohort_seed)
        val = sorted(i["source_id"] for i in infos if i["split"] == "validation" and i["ct"])
        return {"cohort": cfg.real_cohort, "cases": len(infos), "with_ct": sum(bool(i["ct"]) for i in infos),
                "held_apart_with_ct": val}

    def external(folder: Path) -> dict:
        return fit(folder, simulated_cases(cfg), cfg.external_steps, cfg.lr, None)

    def native_bank(folder: Path) -> dict:
        return build_bank(native_bank_config(cfg, folder), folder)

    def external_init() -> dict[str, torch.Tensor] | None:
        if cfg.internal_init != "external":
            return None
        if not cfg.external_from:
            return ema_of("external")
        nets, card = load_model_folder(cfg.external_from, task=TASK)
        want = set(network_specs(cfg))
        if set(nets) != want:
            raise InputError(f"its networks are {sorted(nets)}, the configured model has "
                             f"{sorted(want)}", cfg.external_from)
        log.info("internal stage starts from %s %s", card["id"], card["version"])
        return {f"{k}.{p}": v for k, net in nets.items() for p, v in net.state_dict().items()}

    def internal(folder: Path) -> dict:
        init = external_init()
        cases = native_cases(run / "native-bank", cfg.patch) if cfg.native else real_cases(cfg)
        return fit(folder, cases, cfg.internal_steps,
                   cfg.internal_lr if init is not None else cfg.lr, init)

    def mixed(folder: Path) -> dict:
        sim, real = simulated_cases(cfg), real_cases(cfg)
        p = cfg.mixed_real_fraction
        weights = [(1 - p) / len(sim)] * len(sim) + [p / len(real)] * len(real)
        return fit(folder, sim + real, cfg.mixed_steps, cfg.lr, None, weights)

    def export(folder: Path) -> dict:
        out = {}
        for name in [n for n in ("external", "internal", "mixed") if (run / n / "checkpoint").is_dir()]:
            tensors = ema_of(name)
            nets = build_networks(cfg)
            for k, net in nets.items():
                net.load_state_dict({p[len(k) + 1:]: v for p, v in tensors.items()
                                     if p.startswith(f"{k}.")})
            state_pt = run / name / "checkpoint" / "state.pt"
            step = int(torch.load(state_pt, map_location="cpu", weights_only=True)["step"])
            path = save_model_folder(folder / name, nets,
                                     model_card(cfg, name, step, options.command(TASK)))
            out[name] = {"model": str(path), "steps": step}
        return out

    plan = []
    if cfg.native and cfg.internal_steps > 0:
        plan.append(Stage("native-bank", native_bank, rank0_only=True))
    if cfg.mixed_steps > 0 or (cfg.internal_steps > 0 and not cfg.native):
        plan.append(Stage("real-cohort", real_cohort, rank0_only=True))
    if cfg.external_steps > 0:
        plan.append(Stage("external", external))
    if cfg.internal_steps > 0:
        plan.append(Stage("internal", internal))
    if cfg.mixed_steps > 0:
        plan.append(Stage("mixed", mixed))
    return plan + [Stage("export", export, rank0_only=True)]


def train(config: dict, options: TrainOptions | None = None) -> int:
    """``petdiffusion train restore``: the stages above; returns 0."""
    options = options or TrainOptions()
    cfg = RestoreConfig.from_dict(config)
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
