"""Restore on real PET/CT at the PET's own grid: the real validation study of issue 15.

``petdiffusion evaluate restore --real-validation --models LABEL=MODEL,... --json OUT`` scores, on
the held-apart sarcoma crops that have a CT (the fixed split of denoise-segment,
:mod:`PETDiffusionLib.tasks.denoise_segment.realval`: every third STS id), at 10 % and 5 % counts:

- the low-count input, made exactly as denoise-segment's real validation makes it (the project's
  scanner-like simulator :func:`~PETDiffusionLib.physics.lowcount.simulate_low_count`, its
  ``VALIDATION_SETTINGS``, the same fixed seed per case and level, attenuation from the crop's CT), so
  both tasks' figures are on the same images;
- the classical baselines Gaussian, non-local means and BM4D, tuned per level on the same tuning
  crops (:func:`~PETDiffusionLib.tasks.denoise_segment.realval.tune_baselines`);
- the project's denoise-segment without a guide (``--denoise-segment``, default its shipped model);
- each restore model of ``--models`` with the crop's real CT as the guide (CT resampled onto the PET
  grid by the pipeline as a user's CT is), at its card's defaults.

The reference is the real PET on its own grid; body NRMSE (RMSE in the body outline over the body's
mean SUV, :func:`PETDiffusionLib.quant.metrics.nrmse`, denoise-segment's figure) and the tumour SUVmax
error in the expert GTV.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.io.images import array_and_image, set_units
from PETDiffusionLib.physics.lowcount import VALIDATION_SETTINGS
from PETDiffusionLib.quant import baselines
from PETDiffusionLib.quant.metrics import nrmse
from PETDiffusionLib.tasks.denoise_segment import realval as dsr
from PETDiffusionLib.tasks.registry import task_part
from PETDiffusionLib.tasks.restore.pipeline import RestoreModel, restore_image

log = logging.getLogger(__name__)

BASELINES = ("gaussian", "nlm", "bm4d")


def crops_with_ct(data_dir: str | Path, split: str = "validation") -> list[Path]:
    out = [d for d in dsr.sts_cases(data_dir, split) if (d / "CT_image.nii.gz").is_file()]
    if not out:
        raise InputError(f"no {split} sarcoma crop with a CT", data_dir)
    return out


def crop_ct(folder: Path) -> sitk.Image:
    """The crop's CT in HU on its own grid (the pipeline resamples it, as it does a user's CT)."""
    ct = sitk.ReadImage(str(Path(folder) / "CT_image.nii.gz"), sitk.sitkFloat32)
    return set_units(ct, "HU")


def _best(per_method: dict, label: str) -> dict:
    base = {m: per_method[m] for m in BASELINES if per_method.get(m) is not None}
    if not base or per_method.get(label) is None:
        return {"best_baseline": None, "vs_best_pct": None}
    b = min(base, key=base.get)
    return {"best_baseline": b, "vs_best_pct": round(100.0 * (per_method[label] / base[b] - 1.0), 1)}


def score_case(folder: Path, fraction: int, tuned: dict, models: dict[str, RestoreModel],
               ds_model, params: dict) -> dict:
    case = dsr.load_crop(folder)
    low = dsr.low_count(case, fraction)
    low_img = array_and_image(low, case.image)
    ct = crop_ct(folder)
    outs, secs = {"input": low}, {}
    for name in BASELINES:
        t0 = time.monotonic()
        outs[name] = baselines.apply(name, low, case.spacing_xyz, tuned[name]["best"])
        secs[name] = round(time.monotonic() - t0, 2)
    if ds_model is not None:
        t0 = time.monotonic()
        res = task_part("denoise-segment", "pipeline").denoise_segment_image(
            low_img, None, ds_model[0], ds_model[1], {"samples": 1, "seed": 0})
        outs["denoise_segment"] = sitk.GetArrayFromImage(res["pet_denoised"]).astype(np.float32)
        secs["denoise_segment"] = round(time.monotonic() - t0, 2)
    for label, model in models.items():
        t0 = time.monotonic()
        res = restore_image({"pet": low_img, "ct": ct}, params, model)
        outs[label] = sitk.GetArrayFromImage(res["pet_restored"]).astype(np.float32)
        secs[label] = round(time.monotonic() - t0, 2)
    return {"case": case.name, "fraction": int(fraction), "voxels": list(case.suv.shape),
            "spacing_mm_xyz": [round(s, 3) for s in case.spacing_xyz],
            "seed": dsr.seed_of(case.name, fraction),
            "body_nrmse": {m: round(nrmse(case.suv, o, case.body), 5) for m, o in outs.items()},
            "suvmax_error_pct": {m: dsr._suvmax_err(o, case.suv, case.gtv) for m, o in outs.items()},
            "seconds": secs}


def summarise(rows: list[dict], fractions, methods: list[str], labels: list[str]) -> dict:
    out = {}
    for f in fractions:
        rs = [r for r in rows if r["fraction"] == f]
        nr = {m: dsr._stats([r["body_nrmse"][m] for r in rs]) for m in methods}
        out[str(f)] = {
            "cases": len(rs), "body_nrmse": nr,
            "vs_best_baseline": {lab: {k: _best({m: nr[m][k] for m in methods}, lab)
                                       for k in ("median", "mean")} for lab in labels},
            "suvmax_abs_error_pct_median": {
                m: dsr._stats([abs(r["suvmax_error_pct"][m]) for r in rs
                               if r["suvmax_error_pct"][m] is not None])["median"] for m in methods},
            "seconds_mean": {m: dsr._stats([r["seconds"][m] for r in rs])["mean"]
                             for m in methods if m != "input"}}
    return out


def real_validation(models: dict[str, RestoreModel], denoise_model: str | None = "",
                    fractions=dsr.FRACTIONS, tune_cases: int = dsr.DEFAULT_TUNE_CASES,
                    data_dir: str | Path = dsr.STS_DATA, max_cases: int = 0,
                    params: dict | None = None, grids=None) -> dict:
    """The study of the module docstring. ``denoise_model`` "" = denoise-segment's shipped model,
    None = no denoise-segment row."""
    t_all = time.monotonic()
    fractions = [int(f) for f in fractions]
    tune_dirs = dsr.tuning_crops(data_dir, tune_cases)
    val_dirs = crops_with_ct(data_dir)
    if max_cases:
        val_dirs = val_dirs[:max_cases]
    tuned = dsr.tune_baselines([dsr.load_crop(d) for d in tune_dirs], fractions, grids)
    ds = None
    if denoise_model is not None:
        ds = task_part("denoise-segment", "pipeline").load_model(denoise_model or None, "cpu")
    params = params or {"samples": 1, "seed": 0}
    rows = []
    for d in val_dirs:
        for f in fractions:
            r = score_case(d, f, tuned[f], models, ds, params)
            log.info("%s %d %%: body NRMSE %s", d.name, f, r["body_nrmse"])
            rows.append(r)
    labels = list(models)
    methods = ["input", *BASELINES, *(["denoise_segment"] if ds is not None else []), *labels]
    return {"study": "restore real validation at the PET's own grid (issue 15)",
            "models": {k: {"id": m.card["id"], "version": m.card["version"]} for k, m in models.items()},
            "denoise_segment": None if ds is None else {"id": ds[1]["id"], "version": ds[1]["version"]},
            "fractions_percent": fractions, "settings": VALIDATION_SETTINGS.to_dict(),
            "guide": "the crop's real CT (CT_image.nii.gz), resampled onto the PET grid by the pipeline",
            "split": {"rule": f"denoise-segment's split: STS id % {dsr.VALIDATION_EVERY} == 0 "
                              "validates; here the validation crops that have a CT",
                      "validation_crops": [d.name for d in val_dirs],
                      "tuning_crops": [d.name for d in tune_dirs]},
            "baselines_tuned": {str(k): v for k, v in tuned.items()},
            "params": params, "torch_threads": torch.get_num_threads(),
            "summary": summarise(rows, fractions, methods, labels), "per_case": rows,
            "seconds_total": round(time.monotonic() - t_all, 1)}


def format_table(result: dict) -> str:
    lines = [f"restore real validation: {len(result['split']['validation_crops'])} held-apart crops "
             f"with CT ({', '.join(result['split']['validation_crops'])}), body NRMSE median / mean"]
    for f, s in result["summary"].items():
        lines.append(f"{f} % counts (n={s['cases']})")
        for m, v in s["body_nrmse"].items():
            vs = s["vs_best_baseline"].get(m)
            tail = "" if not vs else (f"   vs best baseline ({vs['median']['best_baseline']}) "
                                      f"{vs['median']['vs_best_pct']:+.1f} % (median)")
            sm = s["suvmax_abs_error_pct_median"].get(m)
            sm_txt = "" if sm is None else f"   |SUVmax err| {sm:.1f} %"
            lines.append(f"  {m:<16} {v['median']:.4f} / {v['mean']:.4f}{sm_txt}{tail}")
    return "\n".join(lines)


def record_in_card(model_folder: Path, result: dict, command: str) -> dict:
    """The study's summary (per case: body NRMSE only) into the card's
    ``evaluation.real_validation_native`` (card.json is not part of the hashed weights)."""
    path = Path(model_folder) / "card.json"
    card = json.loads(path.read_text())
    keep = {k: result[k] for k in ("study", "models", "denoise_segment", "fractions_percent",
                                   "settings", "guide", "split", "params", "summary")}
    keep["per_case_body_nrmse"] = [{"case": r["case"], "fraction": r["fraction"],
                                    "body_nrmse": r["body_nrmse"]} for r in result["per_case"]]
    card.setdefault("evaluation", {})["real_validation_native"] = {"command": command, **keep}
    atomic_write_text(path, json.dumps(card, indent=2) + "\n")
    return card
