"""Training recipe for the denoise-segment task (AMDiff), sized for a CPU.

``petdiffusion train denoise-segment --config configs/denoise_segment.json [--resume] [--stage S]``
calls :func:`train`, which runs these stages (:func:`PETDiffusionLib.training.loop.run_stages`, one
folder each in ``run_dir``; a finished stage is skipped on the next call):

- ``real-cohort`` (only when the config names ``real_cohort_data``): low-count versions of the real
  sarcoma PET (:mod:`PETDiffusionLib.training.real_sts`) written to ``extra_cohort``.
- ``train``: the three networks through :class:`~PETDiffusionLib.training.loop.Trainer`. Batches of
  2.5D slices from :class:`~PETDiffusionLib.methods.amdiff.cases.SliceSampler` (half of them on
  lesion slices, Sec. 3.2), drawn from the Trainer's per-step generator; the loss is Eq. 10,
  ``L_diff + lambda_warm (L_lor + L_rev + L_seg)``, with lambda_warm (Eq. 11) over the training
  progress e / e_max = step / max_steps and e_T / e_max = 100 / 800 (Sec. 3.2). The denoiser and
  the revision + segmenter have their own learning rates; constant rates, EMA, gradient clip 1.0.
- ``export``: the EMA networks as a model folder ``run_dir/export/model`` (card.json +
  model.safetensors) whose card cites the command.
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
from PETDiffusionLib.methods.amdiff import networks as amdiff_networks
from PETDiffusionLib.methods.amdiff.cases import SliceSampler, load_case, pad_case, split_cases
from PETDiffusionLib.methods.amdiff.losses import LossSettings, amdiff_loss, lambda_warm
from PETDiffusionLib.methods.amdiff.networks import LESION_CLASSES, ORGAN_CLASSES, SUVNormalisation
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.models.registry import load_model_folder, save_model_folder
from PETDiffusionLib.phantom.cohort import cases_in_split
from PETDiffusionLib.training.loop import Stage, StepInfo, TrainConfig, Trainer, TrainOptions, run_stages
from PETDiffusionLib.training.native_denoise import train_native
from PETDiffusionLib.training.real_sts import build_cohort

log = logging.getLogger(__name__)

TASK = "denoise-segment"


@dataclass
class DenoiseSegmentConfig:
    cohort: str = "cohorts/train"
    run_dir: str = "runs/denoise_segment"
    fractions: list[int] = field(default_factory=lambda: [25, 10, 5])  # % counts (issue: 5-25 %)
    val_cases: int = 4                # last N cases of the cohort kept for validation
    val_case_indices: list[int] = field(default_factory=list)  # explicit validation cases
                                      # (overrides val_cases); every other case trains
    device: str = "cpu"               # sized for a CPU; `--device` overrides
    spacing_mm: list[float] = field(default_factory=lambda: [4.0, 4.0, 5.0])  # the cohort's grid
    patch: int = 64                   # square crop side (voxels) for training
    batch: int = 8
    max_steps: int = 100000           # optimizer steps; lambda_warm runs over them (Eq. 11)
    max_minutes: float = 0.0          # 0 = no limit; else checkpoint and stop (--resume continues)
    ckpt_every: int = 400             # steps between checkpoints
    log_every: int = 50               # steps between lines of metrics.jsonl
    lr_denoiser: float = 1e-3
    lr_segmenter: float = 1e-3        # revision and segmenter
    ema: float = 0.995
    e_t_fraction: float = 100 / 800   # Sec. 3.2: e_T = 100 of e_max = 800 epochs
    lor_max_t_fraction: float = 0.5   # x0 estimates from noisier steps are mostly noise
    lesion_slice_fraction: float = 0.5
    ct_dropout: float = 0.5
    num_train_timesteps: int = 250    # Sec. 3.2: T = 250
    lor_weights: list[float] = field(default_factory=lambda: [4.0, 1, 1, 1, 1, 1, 1, 1])
    background_weight: float = 0.5
    lesion_class_weights: list[float] = field(default_factory=lambda: [1.0, 4.0])
    organ_class_weights: list[float] = field(default_factory=lambda: [1.0] * len(ORGAN_CLASSES))
    denoiser: dict = field(default_factory=lambda: {"context": 1, "channels": [16, 32, 64, 64]})
    revision: dict = field(default_factory=lambda: {"hidden": 16, "layers": 3})
    segmenter: dict = field(default_factory=lambda: {"channels": [16, 32, 48, 64],
                                                     "encoder": "conv", "use_ct": True})
    segmenter_only: bool = False      # encoder comparison: train f_seg alone on the low-count input
    # fine-tuning: start from a model folder's weights and mix in a second cohort (for example the
    # real sarcoma PET of the real-cohort stage); "" / 0 = off
    init_model: str = ""              # model folder (card.json + model.safetensors) to start from
    extra_cohort: str = ""            # second cohort in the same layout
    extra_split: str = "finetune"     # its cases whose case.json "split" equals this train
    extra_fraction: float = 0.0       # probability that a training sample comes from it
    real_cohort_data: str = ""        # STS_* folders: the real-cohort stage builds extra_cohort
    real_cohort_seed: int = 7
    fixed_lambda: float = -1.0        # >= 0: lambda_warm held at this value (no Eq. 11 warm-up)
    export_id: str = "amdiff-2p5d"    # id and version of the exported model folder
    export_version: str = "0.0.0"
    seed: int = 0
    threads: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "DenoiseSegmentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if not k.startswith("_")}  # "_comment" keys document
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Networks, data, loss
# --------------------------------------------------------------------------------------------
def network_specs(cfg: DenoiseSegmentConfig) -> dict[str, dict]:
    return amdiff_networks.network_specs(cfg.denoiser, cfg.revision, cfg.segmenter)


def build_networks(cfg: DenoiseSegmentConfig) -> dict[str, nn.Module]:
    return {name: build_network(spec) for name, spec in network_specs(cfg).items()}


def slice_sampler(cfg: DenoiseSegmentConfig) -> SliceSampler:
    """The training cases (and the extra cohort's) in memory, padded to the patch size."""
    train_dirs, _ = split_cases(cfg.cohort, cfg.val_case_indices, cfg.val_cases)
    cases = [pad_case(load_case(d, cfg.fractions), cfg.patch) for d in train_dirs]
    log.info("%d training cases: %s", len(cases), ", ".join(d.name for d in train_dirs))
    extra = []
    if cfg.extra_cohort:
        extra_dirs = cases_in_split(cfg.extra_cohort, cfg.extra_split)
        if not extra_dirs:
            raise InputError(f"no cases with split {cfg.extra_split!r}", cfg.extra_cohort)
        extra = [pad_case(load_case(d, cfg.fractions), cfg.patch) for d in extra_dirs]
        log.info("extra cohort: %d cases, drawn with probability %.2f", len(extra), cfg.extra_fraction)
    return SliceSampler(cases, cfg.fractions, cfg.patch, int(cfg.denoiser.get("context", 1)),
                        cfg.lesion_slice_fraction, cfg.ct_dropout, extra, cfg.extra_fraction)


def loss_settings(cfg: DenoiseSegmentConfig) -> LossSettings:
    return LossSettings(tuple(cfg.lor_weights), cfg.background_weight, tuple(cfg.lesion_class_weights),
                        tuple(cfg.organ_class_weights), cfg.lor_max_t_fraction, cfg.segmenter_only,
                        bool(cfg.segmenter.get("use_ct", True)))


def warm_lambda(cfg: DenoiseSegmentConfig, info: StepInfo) -> float:
    """lambda of Eq. 10 at this step: Eq. 11 over e / e_max = step / max_steps (never wall-clock)."""
    if cfg.segmenter_only:
        return 1.0
    if cfg.fixed_lambda >= 0:
        return cfg.fixed_lambda
    return lambda_warm(info.progress, 1.0, cfg.e_t_fraction)


def make_trainer(cfg: DenoiseSegmentConfig, run_dir: Path, init: bool = True) -> Trainer:
    """The Trainer of the train stage (networks from ``init_model`` when ``init``)."""
    torch.manual_seed(cfg.seed)
    nets = build_networks(cfg)
    if init and cfg.init_model:
        start, card = load_model_folder(cfg.init_model, task=TASK)
        for k in nets:
            nets[k].load_state_dict(start[k].state_dict())
        log.info("initialised from %s (%s %s)", cfg.init_model, card.get("id"), card.get("version"))
    sampler = slice_sampler(cfg)
    diffusion = ConditionalDiffusion(cfg.num_train_timesteps, "cosine", "epsilon")
    norm, settings = SUVNormalisation(), loss_settings(cfg)

    def batch_fn(step, rng):
        return sampler.batch(cfg.batch, rng)

    def loss_fn(batch, networks, info: StepInfo):
        return amdiff_loss(batch, networks, diffusion, norm, settings, warm_lambda(cfg, info),
                           info.generator)

    tcfg = TrainConfig(lr=cfg.lr_denoiser, max_steps=cfg.max_steps, batch_size=cfg.batch,
                       warmup=0, min_lr_ratio=1.0, ema_decay=cfg.ema, grad_clip=1.0,
                       ckpt_every=cfg.ckpt_every, log_every=cfg.log_every, seed=cfg.seed,
                       num_threads=cfg.threads, device=cfg.device, max_minutes=cfg.max_minutes,
                       lr_per_network={"denoiser": cfg.lr_denoiser, "revision": cfg.lr_segmenter,
                                       "segmenter": cfg.lr_segmenter},
                       frozen=["denoiser", "revision"] if cfg.segmenter_only else [])
    return Trainer(tcfg, nets, loss_fn, batch_fn, run_dir=run_dir)


def model_card(cfg: DenoiseSegmentConfig, steps: int, command: str) -> dict:
    return {"id": cfg.export_id, "version": cfg.export_version, "task": TASK,
            "networks": network_specs(cfg),
            "preprocessing": {"suv_cutoff": SUVNormalisation().cutoff,
                              "context_slices": int(cfg.denoiser.get("context", 1)),
                              "spacing_mm": list(cfg.spacing_mm)},
            "diffusion": {"schedule": "cosine", "prediction": "epsilon",
                          "num_train_timesteps": cfg.num_train_timesteps},
            "classes": {"organs": list(ORGAN_CLASSES), "lesions": list(LESION_CLASSES)},
            "training": {"config": asdict(cfg), "steps": steps, "command": command}}


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------
def stages(cfg: DenoiseSegmentConfig, options: TrainOptions) -> list[Stage]:
    run = Path(cfg.run_dir)

    def real_cohort(folder: Path) -> dict:
        infos = build_cohort(cfg.real_cohort_data, cfg.extra_cohort, seed=cfg.real_cohort_seed)
        return {"cohort": cfg.extra_cohort, "cases": len(infos),
                "validation": sum(i["split"] == "validation" for i in infos),
                "with_ct": sum(bool(i["ct"]) for i in infos)}

    def train_networks(folder: Path) -> dict:
        resume = bool(options.resume and (folder / "checkpoint" / "state.pt").is_file())
        trainer = make_trainer(cfg, folder, init=not resume)
        logs = trainer.fit(resume=resume)
        if trainer.step < cfg.max_steps:
            raise PETDiffusionError(f"{folder}: training stopped at step {trainer.step} of "
                                    f"{cfg.max_steps} (the {cfg.max_minutes:g}-minute limit); "
                                    "run the same command with --resume to continue")
        return {"steps": trainer.step, "last": logs}

    def export(folder: Path) -> dict:
        ckpt = run / "train" / "checkpoint"
        tensors = load_file(str(ckpt / "ema.safetensors"))
        nets = build_networks(cfg)
        for name, net in nets.items():
            net.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items()
                                 if k.startswith(f"{name}.")})
        step = int(torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)["step"])
        out = save_model_folder(folder / "model", nets, model_card(cfg, step, options.command(TASK)))
        return {"model": str(out), "steps": step}

    out = [Stage("real-cohort", real_cohort, rank0_only=True)] if cfg.real_cohort_data else []
    return out + [Stage("train", train_networks), Stage("export", export, rank0_only=True)]


def train(config: dict, options: TrainOptions | None = None) -> int:
    """``petdiffusion train denoise-segment``: the stages above; returns 0. A config with
    ``"recipe": "native"`` trains the native-resolution denoiser on real PET texture instead
    (:mod:`PETDiffusionLib.training.native_denoise`)."""
    if config.get("recipe") == "native":
        return train_native(config, options)
    options = options or TrainOptions()
    cfg = DenoiseSegmentConfig.from_dict(config)
    if options.run_dir:
        cfg.run_dir = options.run_dir
    if options.device:
        cfg.device = options.device
    if cfg.real_cohort_data and not cfg.extra_cohort:
        raise InputError("real_cohort_data needs extra_cohort (the folder the stage writes)")
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "config.json", json.dumps(asdict(cfg), indent=2))
    summaries = run_stages(run, stages(cfg, options), options.stages)
    log.info("%s", json.dumps(summaries, default=str))
    return 0
