"""Training recipe for the denoise-segment task (AMDiff), sized for a CPU.

``petdiffusion train denoise-segment --config configs/denoise_segment.json`` calls :func:`train`.
What it does (paper section in brackets):

- Reads a simulator cohort (``case_XXXX/`` with ``suv_true``, ``pet_low_{25,10,5}``, ``organs``,
  ``lesions``, ``ct``, ``case.json``), maps the simulator's organ names onto the organ branch's
  classes (:data:`~PETDiffusionLib.networks.amdiff.ORGAN_CLASSES`) and keeps the volumes in memory.
- Draws 2.5D training samples: one axial slice of the full-count reference, the low-count slice with
  its neighbours (count fraction drawn from the config, 5-25 %), labels and CT; a random square crop;
  half of the samples centred on lesion slices (the "adaptive patch sampling ... to balance
  lesion-present and lesion-absent samples", Sec. 3.2).
- Loss (Eq. 10): ``L_diff + lambda_warm (L_lor + L_rev + L_seg)``; lambda_warm by Eq. 11 over the
  training "epochs" (here: fractions of the step budget, e_T/e_max = 100/800 as in Sec. 3.2).
- Saves a resumable checkpoint every few minutes; ``export`` writes the model folder (EMA weights).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn as nn

from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.networks.amdiff import (LESION_CLASSES, ORGAN_CLASSES, DenoisingRevision,
                                             Denoiser, DualBranchSegmenter, SUVNormalisation,
                                             lambda_warm, lesion_organ_regularizer, revision_loss,
                                             segmentation_loss, segmenter_input)

log = logging.getLogger(__name__)

# Simulator organ names -> organ-branch class (substring match, first hit wins). Lungs and kidneys
# are single classes as in the paper's evaluation (Sec. 3.1).
ORGAN_NAME_MAP: tuple[tuple[str, str], ...] = (
    ("liver", "liver"), ("lung", "lung"), ("kidney", "kidney"), ("spleen", "spleen"),
    ("aorta", "aorta"), ("bone", "bone"), ("skelet", "bone"), ("spine", "bone"),
    ("vertebra", "bone"), ("rib", "bone"), ("pelvi", "bone"), ("femur", "bone"),
    ("marrow", "bone"), ("skull", "bone"), ("muscle", "muscle"),
)


def organ_class_lut(organ_labels: dict) -> np.ndarray:
    """A lookup table simulator label id -> organ-branch class index (0 for unmapped organs)."""
    ids = [int(k) for k in organ_labels]
    lut = np.zeros(max(ids + [0]) + 1, dtype=np.uint8)
    for k, name in organ_labels.items():
        low = str(name).lower()
        for key, cls in ORGAN_NAME_MAP:
            if key in low:
                lut[int(k)] = ORGAN_CLASSES.index(cls)
                break
    return lut


@dataclass
class DenoiseSegmentConfig:
    cohort: str = "cohorts/train"
    run_dir: str = "runs/denoise_segment"
    fractions: list[int] = field(default_factory=lambda: [25, 10, 5])  # % counts (issue: 5-25 %)
    val_cases: int = 4                # last N cases of the cohort kept for validation
    val_case_indices: list[int] = field(default_factory=list)  # explicit validation cases
                                      # (overrides val_cases); every other case trains
    rescan_minutes: float = 4.0       # while the cohort has no COMPLETE marker, new cases join
    resume: bool = True               # this recipe always resumes from run_dir/checkpoint.pt
    device: str = "cpu"               # CPU recipe (the GPU path is the engine's Trainer)
    patch: int = 64                   # square crop side (voxels) for training
    batch: int = 8
    minutes: float = 50.0             # wall-clock budget
    max_steps: int = 100000
    lr_denoiser: float = 1e-3
    lr_segmenter: float = 1e-3
    ema: float = 0.995
    e_t_fraction: float = 100 / 800   # Sec. 3.2: e_T = 100 of e_max = 800 epochs
    lor_max_t_fraction: float = 0.5  # x0 estimates from noisier steps are mostly noise
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
    # real sarcoma PET of PETDiffusionLib.training.real_sts); "" / 0 = off
    init_model: str = ""              # model folder (card.json + model.safetensors) to start from
    extra_cohort: str = ""            # second cohort in the same layout
    extra_split: str = "finetune"     # its cases whose case.json "split" equals this train
    extra_fraction: float = 0.0       # probability that a training sample comes from it
    fixed_lambda: float = -1.0        # >= 0: lambda_warm held at this value (no Eq. 11 warm-up)
    checkpoint_minutes: float = 3.0
    seed: int = 0
    threads: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "DenoiseSegmentConfig":
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in d.items() if not k.startswith("_")}  # "_comment" keys document
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class CaseArrays:
    name: str
    suv: np.ndarray                   # full-count reference, float32 [Z,Y,X]
    low: dict[int, np.ndarray]        # fraction -> low-count SUV, float16
    organs: np.ndarray                # organ-branch classes, uint8
    lesions: np.ndarray               # binary, uint8
    ct: np.ndarray | None             # HU, float16
    lesion_slices: np.ndarray
    organs_annotated: bool = True     # False: the organ map is empty, not a label map (real PET)


def _read(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError("cohort file missing", path)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def load_case(case_dir: Path, fractions: list[int]) -> CaseArrays:
    info = json.loads((case_dir / "case.json").read_text())
    lut = organ_class_lut(info.get("organ_labels", {}))
    organs_raw = _read(case_dir / "organs.nii.gz").astype(np.int64)
    organs = lut[np.clip(organs_raw, 0, len(lut) - 1)]
    lesions = (_read(case_dir / "lesions.nii.gz") > 0).astype(np.uint8)
    ct = _read(case_dir / "ct.nii.gz").astype(np.float16) if (case_dir / "ct.nii.gz").is_file() else None
    return CaseArrays(
        name=case_dir.name, suv=_read(case_dir / "suv_true.nii.gz").astype(np.float32),
        low={f: _read(case_dir / f"pet_low_{f}.nii.gz").astype(np.float16) for f in fractions},
        organs=organs, lesions=lesions, ct=ct,
        lesion_slices=np.nonzero(lesions.reshape(lesions.shape[0], -1).any(1))[0],
        organs_annotated=bool(info.get("organs_annotated", True)))


def pad_case(c: CaseArrays, size: int) -> CaseArrays:
    """Pad a case in-plane to at least ``size`` x ``size`` (SUV 0, air in the CT, no labels), so
    that crops of small real volumes stack with the phantom's."""
    _, ny, nx = c.suv.shape
    py, px = max(0, size - ny), max(0, size - nx)
    if not py and not px:
        return c
    pads = ((0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2))
    pad = lambda a, v=0: np.pad(a, pads, constant_values=v)  # noqa: E731
    return CaseArrays(c.name, pad(c.suv), {f: pad(v) for f, v in c.low.items()}, pad(c.organs),
                      pad(c.lesions), None if c.ct is None else pad(c.ct, -1000),
                      c.lesion_slices, c.organs_annotated)


def extra_case_dirs(cfg: "DenoiseSegmentConfig", split: str | None = None) -> list[Path]:
    """The extra cohort's cases whose case.json ``split`` is ``split`` (default: the config's)."""
    if not cfg.extra_cohort:
        return []
    want = split or cfg.extra_split
    return [d for d in list_cases(cfg.extra_cohort)
            if json.loads((d / "case.json").read_text()).get("split") == want]


def case_index(d: Path) -> int:
    return int(d.name.split("_")[-1])


def validation_case_dirs(cfg: "DenoiseSegmentConfig") -> list[Path]:
    dirs = list_cases(cfg.cohort)
    if cfg.val_case_indices:
        return [d for d in dirs if case_index(d) in cfg.val_case_indices]
    return dirs[len(dirs) - cfg.val_cases:] if cfg.val_cases else []


def training_case_dirs(cfg: "DenoiseSegmentConfig") -> list[Path]:
    dirs = list_cases(cfg.cohort)
    if cfg.val_case_indices:
        return [d for d in dirs if case_index(d) not in cfg.val_case_indices]
    n_val = min(cfg.val_cases, max(0, len(dirs) - 1))
    return dirs[:len(dirs) - n_val]


def list_cases(cohort: str | Path) -> list[Path]:
    cases = sorted(p for p in Path(cohort).glob("case_*") if (p / "case.json").is_file())
    if not cases:
        raise InputError("no case_*/case.json folders in the cohort", cohort)
    return cases


def cases_by_index(cohort: str | Path, case_indices) -> list[Path]:
    """The cohort's ``case_XXXX`` folders with the given indices; InputError if there is none."""
    dirs = [d for d in list_cases(cohort) if case_index(d) in set(case_indices)]
    if not dirs:
        raise InputError(f"none of the cases {sorted(case_indices)} exists", cohort)
    return dirs


class SliceSampler:
    """Random 2.5D training samples (see module docstring)."""

    def __init__(self, cases: list[CaseArrays], cfg: DenoiseSegmentConfig, seed: int,
                 extra: list[CaseArrays] | None = None):
        self.cases, self.cfg = cases, cfg
        self.extra = extra or []
        self.rng = np.random.default_rng(seed)
        self.k = int(cfg.denoiser.get("context", 1))

    def _one(self):
        cfg, rng, k = self.cfg, self.rng, self.k
        pool = self.extra if self.extra and rng.random() < cfg.extra_fraction else self.cases
        c = pool[rng.integers(len(pool))]
        frac = cfg.fractions[rng.integers(len(cfg.fractions))]
        z_n, y_n, x_n = c.suv.shape
        on_lesion = len(c.lesion_slices) and rng.random() < cfg.lesion_slice_fraction
        z = int(rng.choice(c.lesion_slices)) if on_lesion else int(rng.integers(z_n))
        p = min(cfg.patch, y_n, x_n)
        if on_lesion:
            ys, xs = np.nonzero(c.lesions[z])
            i = rng.integers(len(ys))
            y0 = int(np.clip(ys[i] - rng.integers(p), 0, y_n - p))
            x0 = int(np.clip(xs[i] - rng.integers(p), 0, x_n - p))
        else:
            y0, x0 = int(rng.integers(y_n - p + 1)), int(rng.integers(x_n - p + 1))
        zs = np.clip(np.arange(z - k, z + k + 1), 0, z_n - 1)
        sl = (slice(y0, y0 + p), slice(x0, x0 + p))
        low = c.low[frac][zs][(slice(None),) + sl].astype(np.float32)
        ct_ok = c.ct is not None and rng.random() >= cfg.ct_dropout
        ct = c.ct[z][sl].astype(np.float32) if ct_ok else None
        out = [low, c.suv[z][sl][None], c.organs[z][sl][None], c.lesions[z][sl][None]]
        if rng.random() < 0.5:  # left-right flip
            out = [a[..., ::-1] for a in out]
            ct = None if ct is None else ct[..., ::-1]
        return out, ct, c.organs_annotated

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        items = [self._one() for _ in range(n)]
        low = torch.from_numpy(np.stack([it[0][0] for it in items]).copy())
        suv = torch.from_numpy(np.stack([it[0][1] for it in items]).copy())
        organs = torch.from_numpy(np.stack([it[0][2] for it in items]).astype(np.int64))
        lesions = torch.from_numpy(np.stack([it[0][3] for it in items]).astype(np.int64))
        ct = torch.zeros_like(suv)
        has_ct = torch.zeros(n)
        for i, (_, c, _) in enumerate(items):
            if c is not None:
                ct[i, 0] = torch.from_numpy(c.copy())
                has_ct[i] = 1
        annotated = torch.tensor([it[2] for it in items], dtype=torch.bool)
        return {"low": low, "suv": suv, "organs": organs, "lesions": lesions, "ct": ct,
                "has_ct": has_ct, "organs_annotated": annotated}


# --------------------------------------------------------------------------------------------
# Networks and loss (Eq. 10)
# --------------------------------------------------------------------------------------------
def network_specs(cfg: DenoiseSegmentConfig) -> dict[str, dict]:
    return {
        "denoiser": {"class": "PETDiffusionLib.networks.amdiff.Denoiser", "args": dict(cfg.denoiser)},
        "revision": {"class": "PETDiffusionLib.networks.amdiff.DenoisingRevision",
                     "args": dict(cfg.revision)},
        "segmenter": {"class": "PETDiffusionLib.networks.amdiff.DualBranchSegmenter",
                      "args": dict(cfg.segmenter)},
    }


def build_networks(cfg: DenoiseSegmentConfig) -> dict[str, nn.Module]:
    from PETDiffusionLib.models.card import build_network
    return {name: build_network(spec) for name, spec in network_specs(cfg).items()}


def seg_input_from_batch(u_hcr, u_lc, batch, use_ct: bool) -> torch.Tensor:
    x = segmenter_input(u_hcr, u_lc, None, use_ct)
    if use_ct:
        flag = batch["has_ct"].view(-1, 1, 1, 1).to(x.dtype)
        x[:, 2:3] = (batch["ct"] / 1000.0).clamp(-1.0, 2.0) * flag
        x[:, 3:4] = flag.expand_as(x[:, 3:4])
    return x


def amdiff_loss(batch: dict, networks: dict[str, nn.Module], diffusion: ConditionalDiffusion,
                norm: SUVNormalisation, cfg: DenoiseSegmentConfig, lam: float
                ) -> tuple[torch.Tensor, dict]:
    """Eq. 10 on one batch; returns (loss, logs)."""
    den, rev, seg = networks["denoiser"], networks["revision"], networks["segmenter"]
    k = den.context
    low = batch["low"]
    cond = norm.to_x(low)                                    # I_LC slices, clipped at the cut-off
    u_lc = norm.to_u(low[:, k:k + 1])                        # centre slice, unclipped
    x0 = norm.to_x(batch["suv"])
    u_ref_clip = norm.x_to_u(x0)
    u_ref = norm.to_u(batch["suv"])
    use_ct = seg.use_ct
    logs: dict[str, float] = {}
    if cfg.segmenter_only:
        les_logits, org_logits = seg(seg_input_from_batch(u_lc, u_lc, batch, use_ct))
        l_seg = segmentation_loss(les_logits, org_logits, batch["lesions"], batch["organs"],
                                  cfg.lesion_class_weights, cfg.organ_class_weights,
                                  batch.get("organs_annotated"))
        return l_seg, {"seg": float(l_seg.detach())}
    b = x0.shape[0]
    T = diffusion.num_train_timesteps
    t = torch.randint(0, T, (b,))
    eps = torch.randn_like(x0)
    x_t = diffusion.scheduler.add_noise(x0, eps, t)
    eps_hat = den(torch.cat([x_t, cond], 1), t)
    l_diff = (eps_hat - eps).abs().mean()                    # Eq. 3
    logs["diff"] = float(l_diff.detach())
    loss = l_diff
    if lam > 0:
        sel = t < max(1, int(cfg.lor_max_t_fraction * T))
        if sel.any():
            ab = diffusion.alphas_cumprod[t[sel]].float().view(-1, 1, 1, 1)
            x0_hat = ((x_t[sel] - (1 - ab).sqrt() * eps_hat[sel]) / ab.sqrt()).clamp(-1, 1)
            u_hc = norm.x_to_u(x0_hat)                       # P_HC
            org, les = batch["organs"][sel], batch["lesions"][sel]
            l_lor = lesion_organ_regularizer(u_hc, u_ref_clip[sel], org, les, cfg.lor_weights)
            u_hcr = rev(u_hc, u_lc[sel])                     # P_HCR, Eq. 6
            l_rev = revision_loss(u_hcr, u_ref[sel], org, les, cfg.lor_weights,
                                  cfg.background_weight)     # Eq. 7
            sub = {kk: v[sel] for kk, v in batch.items()}
            les_logits, org_logits = seg(seg_input_from_batch(u_hcr, u_lc[sel], sub, use_ct))
            ann = batch.get("organs_annotated")
            l_seg = segmentation_loss(les_logits, org_logits, les, org,
                                      cfg.lesion_class_weights, cfg.organ_class_weights,
                                      None if ann is None else ann[sel])
            loss = loss + lam * (l_lor + l_rev + l_seg)
            logs.update(lor=float(l_lor.detach()), rev=float(l_rev.detach()), seg=float(l_seg.detach()))
    logs["lambda"] = lam
    return loss, logs


# --------------------------------------------------------------------------------------------
# Loop (resumable)
# --------------------------------------------------------------------------------------------
def _ema_update(ema: dict[str, nn.Module], nets: dict[str, nn.Module], decay: float) -> None:
    with torch.no_grad():
        for name, net in nets.items():
            for pe, p in zip(ema[name].parameters(), net.parameters()):
                pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
            for be, b in zip(ema[name].buffers(), net.buffers()):
                be.copy_(b)


def train(config: dict, args=None) -> int:
    cfg = DenoiseSegmentConfig.from_dict(config)
    torch.set_num_threads(max(1, int(cfg.threads)))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    t_load = time.time()
    train_dirs = training_case_dirs(cfg)
    cases = [load_case(d, cfg.fractions) for d in train_dirs]
    log.info("loaded %d training cases in %.0f s: %s", len(cases), time.time() - t_load,
             ", ".join(d.name for d in train_dirs))
    cases = [pad_case(c, cfg.patch) for c in cases]
    extra = [pad_case(load_case(d, cfg.fractions), cfg.patch) for d in extra_case_dirs(cfg)]
    if cfg.extra_cohort:
        if not extra:
            raise InputError(f"no cases with split {cfg.extra_split!r}", cfg.extra_cohort)
        log.info("extra cohort: %d cases (%s), drawn with probability %.2f", len(extra),
                 ", ".join(c.name for c in extra), cfg.extra_fraction)
    sampler = SliceSampler(cases, cfg, cfg.seed, extra)
    nets = build_networks(cfg)
    if cfg.init_model and not (run / "checkpoint.pt").is_file():
        from PETDiffusionLib.models.registry import load_model_folder
        start, start_card = load_model_folder(cfg.init_model)
        if start_card.get("task") != "denoise-segment":
            raise InputError("init_model is not a denoise-segment model", cfg.init_model)
        for k in nets:
            nets[k].load_state_dict(start[k].state_dict())
        log.info("initialised from %s (%s %s)", cfg.init_model, start_card.get("id"),
                 start_card.get("version"))
    import copy
    ema = {k: copy.deepcopy(v).eval() for k, v in nets.items()}
    params_den = list(nets["denoiser"].parameters())
    params_seg = list(nets["revision"].parameters()) + list(nets["segmenter"].parameters())
    opt = torch.optim.Adam([{"params": params_den, "lr": cfg.lr_denoiser},
                            {"params": params_seg, "lr": cfg.lr_segmenter}])
    diffusion = ConditionalDiffusion(cfg.num_train_timesteps, "cosine", "epsilon")
    norm = SUVNormalisation()
    ckpt = run / "checkpoint.pt"
    step, elapsed = 0, 0.0
    history: list[dict] = []
    if ckpt.is_file():  # resume (our own checkpoint, written by this function)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        for k in nets:
            nets[k].load_state_dict(state["nets"][k])
            ema[k].load_state_dict(state["ema"][k])
        opt.load_state_dict(state["opt"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        sampler.rng = np.random.default_rng(cfg.seed + step)
        history = json.loads((run / "history.json").read_text()) if (run / "history.json").is_file() else []
        log.info("resumed at step %d (%.1f min)", step, elapsed / 60)
    budget = cfg.minutes * 60
    t0 = time.time() - elapsed
    last_ckpt = time.time()
    last_scan = time.time()
    all_loaded = False
    acc: dict[str, list[float]] = {}
    for m in nets.values():
        m.train()

    def save():
        state = {"nets": {k: v.state_dict() for k, v in nets.items()},
                 "ema": {k: v.state_dict() for k, v in ema.items()},
                 "opt": opt.state_dict(), "step": step, "elapsed": time.time() - t0}
        torch.save(state, run / "checkpoint.tmp")
        os.replace(run / "checkpoint.tmp", ckpt)
        (run / "history.json").write_text(json.dumps(history))

    while step < cfg.max_steps and time.time() - t0 < budget:
        progress = (time.time() - t0) / budget                  # e / e_max
        lam = lambda_warm(progress, 1.0, cfg.e_t_fraction)
        if cfg.segmenter_only:
            lam = 1.0
        elif cfg.fixed_lambda >= 0:
            lam = cfg.fixed_lambda
        batch = sampler.batch(cfg.batch)
        loss, logs = amdiff_loss(batch, nets, diffusion, norm, cfg, lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        _ema_update(ema, nets, cfg.ema)
        step += 1
        for k, v in logs.items():
            acc.setdefault(k, []).append(v)
        if step % 50 == 0:
            rec = {"step": step, "minutes": round((time.time() - t0) / 60, 2),
                   **{k: round(float(np.mean(v)), 5) for k, v in acc.items()}}
            history.append(rec)
            log.info("%s", rec)
            acc = {}
        if not all_loaded and cfg.rescan_minutes > 0 and \
                time.time() - last_scan > cfg.rescan_minutes * 60:
            last_scan = time.time()
            all_loaded = (Path(cfg.cohort) / "COMPLETE").is_file()
            have = {c.name for c in cases}
            for d in training_case_dirs(cfg):
                if d.name not in have:
                    cases.append(pad_case(load_case(d, cfg.fractions), cfg.patch))
                    log.info("added training case %s at step %d (%d cases)", d.name, step,
                             len(cases))
            history.append({"step": step, "cases": len(cases)})
        if time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
            save()
            last_ckpt = time.time()
    save()
    log.info("training stopped at step %d after %.1f min", step, (time.time() - t0) / 60)
    return 0


def export(run_dir: str | Path, folder: str | Path, card_extra: dict) -> Path:
    """Write the EMA networks of a run as a model folder (card.json + model.safetensors)."""
    from PETDiffusionLib.models.registry import save_model_folder
    run = Path(run_dir)
    cfg = DenoiseSegmentConfig.from_dict(json.loads((run / "config.json").read_text()))
    nets = build_networks(cfg)
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    for k in nets:
        nets[k].load_state_dict(state["ema"][k])
    card = {"task": "denoise-segment", "networks": network_specs(cfg),
            "preprocessing": {"suv_cutoff": SUVNormalisation().cutoff,
                              "context_slices": int(cfg.denoiser.get("context", 1))},
            "diffusion": {"schedule": "cosine", "prediction": "epsilon",
                          "num_train_timesteps": cfg.num_train_timesteps},
            "classes": {"organs": list(ORGAN_CLASSES), "lesions": list(LESION_CLASSES)},
            "training": {"config": asdict(cfg), "steps": int(state["step"]),
                         "minutes": round(float(state["elapsed"]) / 60, 1)}}
    for key, value in card_extra.items():
        if isinstance(value, dict) and isinstance(card.get(key), dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    return save_model_folder(folder, nets, card)


@torch.no_grad()
def validate_segmenter(run_dir: str | Path, fraction: int = 10, max_slices: int = 48,
                       seed: int = 0) -> dict:
    """Dice per class of a segmenter-only run on its validation cases (whole slices, low-count
    input at ``fraction`` %, no CT): the encoder comparison's figure."""
    from PETDiffusionLib.models.card import build_network
    run = Path(run_dir)
    cfg = DenoiseSegmentConfig.from_dict(json.loads((run / "config.json").read_text()))
    val_dirs = validation_case_dirs(cfg)
    seg = build_network(network_specs(cfg)["segmenter"])
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    seg.load_state_dict(state["ema"]["segmenter"])
    seg.eval()
    norm = SUVNormalisation()
    rng = np.random.default_rng(seed)
    inter = np.zeros(len(ORGAN_CLASSES) + 1)
    total = np.zeros(len(ORGAN_CLASSES) + 1)
    t0 = time.time()
    n_slices = 0
    for d in val_dirs:
        c = load_case(d, [fraction])
        zs = np.sort(rng.choice(c.suv.shape[0], min(max_slices, c.suv.shape[0]), replace=False))
        low = torch.from_numpy(c.low[fraction][zs].astype(np.float32))[:, None]
        u = norm.to_u(low)
        x = segmenter_input(u, u, None, seg.use_ct)
        les_logits, org_logits = seg(x)
        les_p = les_logits.argmax(1).numpy()
        org_p = org_logits.argmax(1).numpy()
        les_t, org_t = c.lesions[zs], c.organs[zs]
        inter[0] += np.logical_and(les_p == 1, les_t == 1).sum()
        total[0] += (les_p == 1).sum() + (les_t == 1).sum()
        for k in range(1, len(ORGAN_CLASSES)):
            inter[k] += np.logical_and(org_p == k, org_t == k).sum()
            total[k] += (org_p == k).sum() + (org_t == k).sum()
        n_slices += len(zs)
    names = ["lesion"] + list(ORGAN_CLASSES[1:])
    dice = {n: round(float(2 * inter[i] / total[i]), 4) if total[i] else None
            for i, n in enumerate(names)}
    organ_vals = [v for n, v in dice.items() if n != "lesion" and v is not None]
    return {"encoder": cfg.segmenter.get("encoder"), "steps": int(state["step"]),
            "minutes": round(float(state["elapsed"]) / 60, 2),
            "parameters": int(sum(p.numel() for p in seg.parameters())),
            "dice": dice, "mean_organ_dice": round(float(np.mean(organ_vals)), 4),
            "val_cases": [d.name for d in val_dirs], "slices": n_slices,
            "inference_seconds": round(time.time() - t0, 1)}


def steps_curve(model: str | Path, cohort: str | Path, case_indices: list[int], fraction: int = 10,
                slices: int = 32, steps_list=(1, 2, 4, 8, 16, 32),
                modes=(("ddim", 1.0), ("ddim", 0.5), ("ddim", 0.3), ("ddim", 0.15), ("dpmpp2m", 1.0)),
                png: str | Path | None = None) -> dict:
    """Quality (NRMSE of the revised output vs the true SUV) against sampling steps, per sampler
    and start fraction, on central slabs of validation cases (never training or held-out cases)."""
    from PETDiffusionLib.models.registry import load_model_folder
    from PETDiffusionLib.tasks.denoise_segment import _nrmse, denoise_segment_arrays
    nets, card = load_model_folder(model)
    dirs = cases_by_index(cohort, case_indices)
    data = []
    for d in dirs:
        c = load_case(d, [fraction])
        z0 = max(0, c.suv.shape[0] // 2 - slices // 2)
        zs = slice(z0, z0 + slices)
        ct = c.ct[zs].astype(np.float32) if c.ct is not None else None
        data.append((d.name, c.suv[zs], c.low[fraction][zs].astype(np.float32), ct, c.lesions[zs] > 0))
    curve = []
    for sampler, start in modes:
        for steps in steps_list:
            nr, nr_les, secs = [], [], []
            for name, ref, low, ct, les in data:
                t0 = time.time()
                out = denoise_segment_arrays(low, ct, nets, card, steps, sampler, 1, 0, start)
                secs.append(time.time() - t0)
                nr.append(_nrmse(ref, out["suv"]))
                if les.any():
                    nr_les.append(_nrmse(ref, out["suv"], les))
            rec = {"sampler": sampler, "start_fraction": start, "steps": steps,
                   "nrmse": round(float(np.mean(nr)), 5),
                   "nrmse_lesion": round(float(np.mean(nr_les)), 5) if nr_les else None,
                   "seconds_per_slab": round(float(np.mean(secs)), 2)}
            log.info("%s", rec)
            curve.append(rec)
    base = [_nrmse(ref, low) for _, ref, low, _, _ in data]
    result = {"cases": [d[0] for d in data], "fraction": fraction, "slices": slices,
              "input_nrmse": round(float(np.mean(base)), 5), "curve": curve}
    if png:
        plot_steps_curve(result, png)
    return result


def plot_steps_curve(result: dict, png: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curve = result["curve"]
    modes = list(dict.fromkeys((r["sampler"], r["start_fraction"]) for r in curve))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for sampler, start in modes:
        pts = [(r["steps"], r["nrmse"]) for r in curve
               if r["sampler"] == sampler and r["start_fraction"] == start]
        label = f"{sampler}, from pure noise" if start >= 1 else f"{sampler}, from input noised to {start:g} T"
        ax.plot(*zip(*pts), marker="o", label=label)
    ax.axhline(result["input_nrmse"], color="grey", ls="--", label="low-count input")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sampling steps (network evaluations)")
    ax.set_ylabel("NRMSE vs true SUV (log scale)")
    ax.set_title(f"AMDiff quality vs steps ({result['fraction']} % counts, "
                 f"{len(result['cases'])} validation cases)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def real_check(model: str | Path, data_dir: str | Path, cases=("STS_001", "STS_002")) -> list[dict]:
    """Run the task's pipeline on real sarcoma PET (as acquired) and compare with the expert GTV."""
    from PETDiffusionLib.models.registry import load_model_folder
    from PETDiffusionLib.tasks.denoise_segment import denoise_segment_image
    nets, card = load_model_folder(model)
    rows = []
    for name in cases:
        d = Path(data_dir) / name
        pet = sitk.ReadImage(str(d / "PET_image.nii.gz"), sitk.sitkFloat32)
        gtv = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "PET_mask.nii.gz"))) > 0
        ct = sitk.ReadImage(str(d / "CT_image.nii.gz"), sitk.sitkFloat32) \
            if (d / "CT_image.nii.gz").is_file() else None
        row = {"case": name}
        for use_ct in ((False, True) if ct is not None else (False,)):
            t0 = time.time()
            res = denoise_segment_image(pet, ct if use_ct else None, nets, card, {})
            den = sitk.GetArrayFromImage(res["pet_denoised"])
            les = sitk.GetArrayFromImage(res["lesions"]) > 0
            inp = sitk.GetArrayFromImage(pet)
            inter = float(np.logical_and(les, gtv).sum())
            row["with_ct" if use_ct else "pet_only"] = {
                "dice": round(2 * inter / max(1.0, float(les.sum() + gtv.sum())), 4),
                "predicted_voxels": int(les.sum()), "gtv_voxels": int(gtv.sum()),
                "suvmax_predicted_lesion": round(float(den[les].max()), 2) if les.any() else None,
                "suvmax_denoised_in_gtv": round(float(den[gtv].max()), 2),
                "suvmax_input_in_gtv": round(float(inp[gtv].max()), 2),
                "seconds": round(time.time() - t0, 1)}
        log.info("%s", row)
        rows.append(row)
    return rows


CALIBRATION_THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(14))  # 0.30 ... 0.95


def calibrate_lesion_threshold(model: str | Path, cohort: str | Path, case_indices: list[int],
                               fractions=(10, 5), thresholds=CALIBRATION_THRESHOLDS,
                               write_card: bool = False) -> dict:
    """Choose the lesion-probability threshold on validation cases (never training or held-out
    cases): the value with the highest mean lesion Dice over cases and count levels. The MTV error
    at each threshold is reported beside it. With ``write_card`` the value goes into the model
    card's ``inference.lesion_threshold`` (the weights, and so their sha256, are unchanged)."""
    from PETDiffusionLib.io.atomic import atomic_write_text
    from PETDiffusionLib.models.registry import load_model_folder
    from PETDiffusionLib.tasks.denoise_segment import denoise_segment_image, lesion_mask_from_prob
    nets, card = load_model_folder(model)
    dirs = cases_by_index(cohort, case_indices)
    runs = []
    for d in dirs:
        ref_img = sitk.ReadImage(str(d / "suv_true.nii.gz"))
        vox_ml = float(np.prod(ref_img.GetSpacing())) / 1000.0
        les = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "lesions.nii.gz"))) > 0
        ct = sitk.ReadImage(str(d / "ct.nii.gz"), sitk.sitkFloat32) \
            if (d / "ct.nii.gz").is_file() else None
        for f in fractions:
            low = sitk.ReadImage(str(d / f"pet_low_{f}.nii.gz"), sitk.sitkFloat32)
            res = denoise_segment_image(low, ct, nets, card, {}, keep_hc=True)
            prob = sitk.GetArrayFromImage(res["lesion_prob"])
            runs.append((d.name, f, prob, les, vox_ml))
    table = []
    for thr in thresholds:
        dice, mtv_err = [], []
        for _, _, prob, les, vox_ml in runs:
            m = lesion_mask_from_prob(prob, thr, 0.2, vox_ml) > 0
            tot = int(m.sum() + les.sum())
            if tot:
                dice.append(2.0 * float(np.logical_and(m, les).sum()) / tot)
            if les.any():
                mtv_err.append(100.0 * (float(m.sum()) - float(les.sum())) / float(les.sum()))
        table.append({"threshold": thr, "mean_dice": round(float(np.mean(dice)), 4),
                      "median_mtv_error_pct": round(float(np.median(mtv_err)), 1)})
        log.info("%s", table[-1])
    best = max(table, key=lambda r: r["mean_dice"])
    result = {"model": str(model), "cohort": str(cohort), "cases": [d.name for d in dirs],
              "fractions": list(fractions), "rule": "highest mean lesion Dice", "table": table,
              "chosen": best}
    if write_card:
        card_path = Path(model) / "card.json"
        full = json.loads(card_path.read_text())
        full.setdefault("inference", {})["lesion_threshold"] = best["threshold"]
        full["lesion_threshold_calibration"] = result
        atomic_write_text(card_path, json.dumps(full, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m PETDiffusionLib.training.recipes.denoise_segment train|export ...``."""
    import argparse
    p = argparse.ArgumentParser(prog="denoise_segment recipe")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--config", required=True)
    t.add_argument("--set", nargs="*", default=[], help="overrides key=json_value")
    e = sub.add_parser("export")
    e.add_argument("--run", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--card-extra", default=None, help="JSON file merged into the card")
    v = sub.add_parser("validate-segmenter")
    v.add_argument("--run", required=True)
    v.add_argument("--json", default=None)
    c = sub.add_parser("steps-curve")
    c.add_argument("--model", required=True)
    c.add_argument("--cohort", required=True)
    c.add_argument("--cases", default="0,1")
    c.add_argument("--fraction", type=int, default=10)
    c.add_argument("--slices", type=int, default=32)
    c.add_argument("--steps", default="1,2,4,8,16,32")
    c.add_argument("--png", default=None)
    c.add_argument("--json", default=None)
    k = sub.add_parser("calibrate-lesions")
    k.add_argument("--model", required=True)
    k.add_argument("--cohort", default="cohorts/train")
    k.add_argument("--cases", default="0,1")
    k.add_argument("--fractions", default="10,5")
    k.add_argument("--write-card", action="store_true")
    k.add_argument("--json", default=None)
    rc = sub.add_parser("real-cohort", help="low-count versions of the real sarcoma PET")
    rc.add_argument("--data", default="../shared/data/petct_sts_more")
    rc.add_argument("--out", default="cohorts/sts_real")
    rc.add_argument("--seed", type=int, default=7)
    r = sub.add_parser("real-check")
    r.add_argument("--model", required=True)
    r.add_argument("--data", default="../shared/data/petct_sts/nifti")
    r.add_argument("--json", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.cmd == "train":
        cfg = json.loads(Path(args.config).read_text())
        for kv in args.set:
            k, v = kv.split("=", 1)
            cfg[k] = json.loads(v)
        return train(cfg)
    if args.cmd == "real-cohort":
        from PETDiffusionLib.training.real_sts import build_cohort
        infos = build_cohort(args.data, args.out, seed=args.seed)
        log.info("%d cases (%d validation, %d with CT) in %s", len(infos),
                 sum(i["split"] == "validation" for i in infos), sum(i["ct"] for i in infos),
                 args.out)
        return 0
    if args.cmd in ("steps-curve", "real-check", "calibrate-lesions"):
        if args.cmd == "calibrate-lesions":
            res = calibrate_lesion_threshold(args.model, args.cohort,
                                             [int(x) for x in args.cases.split(",")],
                                             tuple(int(x) for x in args.fractions.split(",")),
                                             write_card=args.write_card)
        elif args.cmd == "steps-curve":
            res = steps_curve(args.model, args.cohort, [int(x) for x in args.cases.split(",")],
                              args.fraction, args.slices,
                              tuple(int(x) for x in args.steps.split(",")), png=args.png)
        else:
            res = real_check(args.model, args.data)
        text = json.dumps(res, indent=1)
        log.info("%s", text)
        if args.json:
            Path(args.json).write_text(text)
        return 0
    if args.cmd == "validate-segmenter":
        res = validate_segmenter(args.run)
        text = json.dumps(res, indent=1)
        log.info("%s", text)
        if args.json:
            Path(args.json).write_text(text)
        return 0
    extra = json.loads(Path(args.card_extra).read_text()) if args.card_extra else {}
    export(args.run, args.out, extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
