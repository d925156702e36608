"""The model studies behind the AMDiff card's figures, run as modes of
``petdiffusion evaluate denoise-segment --mode MODE``:

- ``steps-curve`` (:func:`steps_curve`): NRMSE of the revised output against the true SUV versus
  sampling steps, per sampler and start fraction, on central slabs of validation cases; the card's
  default steps are chosen from it.
- ``calibrate-lesions`` (:func:`calibrate_lesion_threshold`): the lesion-probability threshold with
  the highest mean lesion Dice on validation cases; ``--write-card`` stores it in the card.
- ``real-check`` (:func:`real_check`): the pipeline on the real sarcoma PET STS_001 and STS_002 (as
  acquired, never used in training) against their expert GTV.
- ``validate-segmenter`` (:func:`validate_segmenter`): Dice per class of a segmenter-only training
  run (the encoder comparison).

Dice follows :func:`PETDiffusionLib.quant.metrics.dice`, with the empty-mask value each figure had.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.methods.amdiff.cases import load_case, split_cases
from PETDiffusionLib.methods.amdiff.networks import (ORGAN_CLASSES, NETWORK_CLASSES,
                                                     SUVNormalisation, segmenter_input)
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.models.registry import resolve_model
from PETDiffusionLib.phantom.cohort import cases_by_index
from PETDiffusionLib.quant.metrics import dice, nrmse
from PETDiffusionLib.tasks.denoise_segment.pipeline import (denoise_segment_arrays,
                                                            denoise_segment_image,
                                                            lesion_mask_from_prob, load_model)
from PETDiffusionLib.tasks.denoise_segment.spec import MODEL_ID

log = logging.getLogger(__name__)

REAL_CHECK_DATA = "../shared/data/petct_sts/nifti"   # MANIFEST.md: the two petct_sts cases
REAL_CHECK_CASES = ("STS_001", "STS_002")            # issue 6: kept out of every training
CALIBRATION_THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(14))  # 0.30 ... 0.95
STEPS_CURVE_MODES = (("ddim", 1.0), ("ddim", 0.5), ("ddim", 0.3), ("ddim", 0.15), ("dpmpp2m", 1.0))
RECIPE_TRAIN_STAGE = "train"   # the recipe's training stage folder inside a run folder


def steps_curve(model: str | Path | None, cohort: str | Path, case_indices: list[int],
                fraction: int = 10, slices: int = 32, steps_list=(1, 2, 4, 8, 16, 32),
                modes=STEPS_CURVE_MODES, png: str | Path | None = None) -> dict:
    """Quality (NRMSE of the revised output vs the true SUV) against sampling steps, per sampler
    and start fraction, on central slabs of validation cases (never training or held-out cases)."""
    nets, card = load_model(model, "cpu")
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
                nr.append(nrmse(ref, out["suv"]))
                v = nrmse(ref, out["suv"], les, undefined=None) if les.any() else None
                if v is not None:                       # None: constant truth in the lesions
                    nr_les.append(v)
            rec = {"sampler": sampler, "start_fraction": start, "steps": steps,
                   "nrmse": round(float(np.mean(nr)), 5),
                   "nrmse_lesion": round(float(np.mean(nr_les)), 5) if nr_les else None,
                   "seconds_per_slab": round(float(np.mean(secs)), 2)}
            log.info("%s", rec)
            curve.append(rec)
    base = [nrmse(ref, low) for _, ref, low, _, _ in data]
    result = {"cases": [d[0] for d in data], "fraction": fraction, "slices": slices,
              "input_nrmse": round(float(np.mean(base)), 5), "curve": curve}
    if png:
        plot_steps_curve(result, png)
    return result


def plot_steps_curve(result: dict, png: str | Path) -> None:
    curve = result["curve"]
    modes = list(dict.fromkeys((r["sampler"], r["start_fraction"]) for r in curve))
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
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


def real_check(model: str | Path | None, data_dir: str | Path,
               cases=REAL_CHECK_CASES) -> list[dict]:
    """Run the task's pipeline on real sarcoma PET (as acquired) and compare with the expert GTV."""
    nets, card = load_model(model, "cpu")
    rows = []
    for name in cases:
        d = Path(data_dir) / name
        if not (d / "PET_image.nii.gz").is_file():
            raise InputError("no PET_image.nii.gz of a sarcoma case", d)
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
            row["with_ct" if use_ct else "pet_only"] = {
                "dice": round(dice(les, gtv, empty=0.0), 4),
                "predicted_voxels": int(les.sum()), "gtv_voxels": int(gtv.sum()),
                "suvmax_predicted_lesion": round(float(den[les].max()), 2) if les.any() else None,
                "suvmax_denoised_in_gtv": round(float(den[gtv].max()), 2),
                "suvmax_input_in_gtv": round(float(inp[gtv].max()), 2),
                "seconds": round(time.time() - t0, 1)}
        log.info("%s", row)
        rows.append(row)
    return rows


def calibrate_lesion_threshold(model: str | Path | None, cohort: str | Path,
                               case_indices: list[int], fractions=(10, 5),
                               thresholds=CALIBRATION_THRESHOLDS, write_card: bool = False) -> dict:
    """Choose the lesion-probability threshold on validation cases (never training or held-out
    cases): the value with the highest mean lesion Dice over cases and count levels. The MTV error
    at each threshold is reported beside it. With ``write_card`` the value goes into the model
    card's ``inference.lesion_threshold`` (the weights, and so their sha256, are unchanged)."""
    folder = resolve_model(model or MODEL_ID)
    nets, card = load_model(folder, "cpu")
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
        scores, mtv_err = [], []
        for _, _, prob, les, vox_ml in runs:
            m = lesion_mask_from_prob(prob, thr, 0.2, vox_ml) > 0
            d_val = dice(m, les, empty=None)        # both empty: no Dice for this run
            if d_val is not None:
                scores.append(d_val)
            if les.any():
                mtv_err.append(100.0 * (float(m.sum()) - float(les.sum())) / float(les.sum()))
        table.append({"threshold": thr, "mean_dice": round(float(np.mean(scores)), 4),
                      "median_mtv_error_pct": round(float(np.median(mtv_err)), 1)})
        log.info("%s", table[-1])
    best = max(table, key=lambda r: r["mean_dice"])
    result = {"model": str(model or MODEL_ID), "cohort": str(cohort),
              "cases": [d.name for d in dirs], "fractions": list(fractions),
              "rule": "highest mean lesion Dice", "table": table, "chosen": best}
    if write_card:
        card_path = folder / "card.json"
        full = json.loads(card_path.read_text())
        full.setdefault("inference", {})["lesion_threshold"] = best["threshold"]
        full["lesion_threshold_calibration"] = result
        atomic_write_text(card_path, json.dumps(full, indent=2))
    return result


@torch.no_grad()
def validate_segmenter(run_dir: str | Path, fraction: int = 10, max_slices: int = 48,
                       seed: int = 0) -> dict:
    """Dice per class of a segmenter-only run on its validation cases (whole slices, low-count
    input at ``fraction`` %, no CT): the encoder comparison's figure.

    ``run_dir`` is the recipe's run folder: its ``config.json`` and the EMA weights of the training
    stage's checkpoint (``train/checkpoint/ema.safetensors``, the Trainer's layout)."""
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise InputError("not a training run folder (no config.json)", run)
    cfg = json.loads((run / "config.json").read_text())
    ckpt = run / RECIPE_TRAIN_STAGE / "checkpoint"
    if not (ckpt / "ema.safetensors").is_file():
        raise InputError("the run has no checkpoint of its training stage", ckpt)
    _, val_dirs = split_cases(cfg["cohort"], cfg.get("val_case_indices", []), cfg.get("val_cases", 0))
    seg = build_network({"class": NETWORK_CLASSES["segmenter"], "args": cfg["segmenter"]})
    tensors = load_file(str(ckpt / "ema.safetensors"))
    seg.load_state_dict({k[len("segmenter."):]: v for k, v in tensors.items()
                         if k.startswith("segmenter.")})
    seg.eval()
    step = int(torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)["step"])
    norm = SUVNormalisation()
    rng = np.random.default_rng(seed)
    names = ["lesion"] + list(ORGAN_CLASSES[1:])
    pred = {n: [] for n in names}
    true = {n: [] for n in names}
    t0 = time.time()
    n_slices = 0
    for d in val_dirs:
        c = load_case(d, [fraction])
        zs = np.sort(rng.choice(c.suv.shape[0], min(max_slices, c.suv.shape[0]), replace=False))
        low = torch.from_numpy(c.low[fraction][zs].astype(np.float32))[:, None]
        u = norm.to_u(low)
        les_logits, org_logits = seg(segmenter_input(u, u, None, seg.use_ct))
        les_p, org_p = les_logits.argmax(1).numpy(), org_logits.argmax(1).numpy()
        pred["lesion"].append((les_p == 1).ravel())         # flat: cases differ in size
        true["lesion"].append((c.lesions[zs] == 1).ravel())
        for k in range(1, len(ORGAN_CLASSES)):
            pred[names[k]].append((org_p == k).ravel())
            true[names[k]].append((c.organs[zs] == k).ravel())
        n_slices += len(zs)
    # Dice of each class pooled over every validation slice; None where the class is absent
    scores = {}
    for n in names:
        s = dice(np.concatenate(pred[n]), np.concatenate(true[n]), empty=None) if pred[n] else None
        scores[n] = None if s is None else round(s, 4)
    organ_vals = [v for n, v in scores.items() if n != "lesion" and v is not None]
    return {"encoder": cfg["segmenter"].get("encoder"), "steps": step,
            "parameters": int(sum(p.numel() for p in seg.parameters())),
            "dice": scores, "mean_organ_dice": round(float(np.mean(organ_vals)), 4),
            "val_cases": [d.name for d in val_dirs], "slices": n_slices,
            "inference_seconds": round(time.time() - t0, 1)}
