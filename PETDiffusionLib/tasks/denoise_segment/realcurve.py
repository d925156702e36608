"""Sampling steps and the uncertainty map of denoise-segment on real PET (issue 13).

``petdiffusion evaluate denoise-segment --mode real-steps-curve [--model M] [--max-cases N] [--out F]``

- Steps curve: body NRMSE against the full-count real PET of the validation sarcoma crops
  (:func:`realval.sts_cases` "validation", the same fixed split and low-count versions as
  ``--mode real-validation``) at the first ``--fractions`` level, for each sampler, start fraction
  and number of steps; the card's default is chosen from it (the fewest steps within 1 % of the best
  body NRMSE).
- Uncertainty: at the card's default settings with ``samples`` draws, the per-voxel SD map's mean
  in the body relative to the mean SUV, and the Spearman correlation between the SD and the
  absolute error of the mean image in the body, per case: whether the map points at where the
  output is wrong on real data.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.stats import spearmanr

from PETDiffusionLib.io.images import array_and_image
from PETDiffusionLib.quant.metrics import nrmse
from PETDiffusionLib.tasks.denoise_segment import realval
from PETDiffusionLib.tasks.denoise_segment.pipeline import (card_defaults, denoise_segment_image,
                                                            load_model)

log = logging.getLogger(__name__)

MODES = (("ddim", 1.0), ("ddim", 0.5), ("dpmpp2m", 1.0))
"""(sampler, start fraction): from noise (1.0) or from the low-count image noised half-way."""
STEPS = (1, 2, 4, 8)
WITHIN_BEST = 0.01
"""The default is the fewest steps whose body NRMSE is within 1 % of the best point's."""
UNCERTAINTY_SAMPLES = 4


def _run(case, low, nets, card, params) -> dict:
    return denoise_segment_image(array_and_image(low, case.image), None, nets, card, params)


def real_steps_curve(model_path: str | Path | None = None, fraction: int = 10, max_cases: int = 5,
                     modes=MODES, steps_list=STEPS, samples: int = UNCERTAINTY_SAMPLES,
                     data_dir: str | Path = realval.STS_DATA) -> dict:
    """The study of the module docstring on the first ``max_cases`` validation crops."""
    nets, card = load_model(model_path, "cpu")
    dirs = realval.sts_cases(data_dir, "validation")[:max_cases or None]
    cases = [realval.load_crop(d) for d in dirs]
    lows = [realval.low_count(c, fraction) for c in cases]
    curve = []
    for sampler, start in modes:
        for steps in steps_list:
            params = {"samples": 1, "seed": 0, "steps": steps, "sampler": sampler,
                      "start_fraction": start}
            scores, secs = [], []
            for c, low in zip(cases, lows):
                t0 = time.monotonic()
                out = _run(c, low, nets, card, params)
                secs.append(time.monotonic() - t0)
                scores.append(nrmse(c.suv, sitk.GetArrayFromImage(out["pet_denoised"]), c.body))
            rec = {"sampler": sampler, "start_fraction": start, "steps": steps,
                   "body_nrmse_median": round(float(np.median(scores)), 5),
                   "body_nrmse_mean": round(float(np.mean(scores)), 5),
                   "seconds_per_case": round(float(np.mean(secs)), 2)}
            log.info("%s", rec)
            curve.append(rec)
    best = min(r["body_nrmse_median"] for r in curve)
    ok = [r for r in curve if r["body_nrmse_median"] <= best * (1 + WITHIN_BEST)]
    chosen = min(ok, key=lambda r: (r["steps"], r["body_nrmse_median"]))
    defaults = card_defaults(card)
    params = {"samples": samples, "seed": 0}
    unc = []
    for c, low in zip(cases, lows):
        out = _run(c, low, nets, card, params)
        mean = sitk.GetArrayFromImage(out["pet_denoised"])
        sd = sitk.GetArrayFromImage(out["uncertainty"])
        err = np.abs(mean - c.suv)[c.body]
        rho = spearmanr(sd[c.body], err).correlation if sd[c.body].std() > 0 else None
        unc.append({"case": c.name,
                    "sd_mean_over_suv_mean": round(float(sd[c.body].mean() / max(c.suv[c.body].mean(),
                                                                                  1e-6)), 5),
                    "abs_error_mean_over_suv_mean": round(float(err.mean() / max(c.suv[c.body].mean(),
                                                                                 1e-6)), 5),
                    "spearman_sd_vs_abs_error": None if rho is None else round(float(rho), 3)})
    rhos = [u["spearman_sd_vs_abs_error"] for u in unc if u["spearman_sd_vs_abs_error"] is not None]
    return {"study": "denoise-segment sampling steps and uncertainty on real PET (issue 13)",
            "model_id": card["id"], "model_version": card["version"], "fraction_percent": fraction,
            "cases": [c.name for c in cases],
            "what": "body NRMSE vs the full-count real PET, validation sarcoma crops (realval.py "
                    "split), low-count versions of --mode real-validation",
            "points": curve,
            "chosen": {k: chosen[k] for k in ("sampler", "start_fraction", "steps")},
            "chosen_rule": f"fewest steps within {WITHIN_BEST:.0%} of the best median body NRMSE",
            "card_default": {k: defaults[k] for k in ("sampler", "start_fraction", "steps")},
            "uncertainty": {"samples": samples, "settings": "the card's defaults",
                            "per_case": unc,
                            "spearman_median": round(float(np.median(rhos)), 3) if rhos else None,
                            "sd_over_suv_median": round(float(np.median(
                                [u["sd_mean_over_suv_mean"] for u in unc])), 5)}}


def format_table(res: dict) -> str:
    lines = [f"{res['model_id']} {res['model_version']}, {res['fraction_percent']} % counts, "
             f"{len(res['cases'])} real validation crops",
             f"{'sampler':8s} {'start':>5s} {'steps':>5s} {'NRMSE med':>10s} {'mean':>8s} {'s/case':>7s}"]
    for r in res["points"]:
        lines.append(f"{r['sampler']:8s} {r['start_fraction']:5.2f} {r['steps']:5d} "
                     f"{r['body_nrmse_median']:10.5f} {r['body_nrmse_mean']:8.5f} "
                     f"{r['seconds_per_case']:7.2f}")
    u = res["uncertainty"]
    lines.append(f"chosen {res['chosen']} ({res['chosen_rule']}); card default {res['card_default']}")
    lines.append(f"uncertainty ({u['samples']} samples): SD / SUV mean in the body, median "
                 f"{u['sd_over_suv_median']}; Spearman(SD, |error|) median {u['spearman_median']}")
    return "\n".join(lines)
