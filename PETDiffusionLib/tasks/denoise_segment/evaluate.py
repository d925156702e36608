"""``petdiffusion evaluate denoise-segment --mode MODE ...``: every evaluation of an AMDiff model.

Modes (``--mode``, default ``cohort``):

- ``cohort``: the task against the full-count truth of a cohort (``--cohort``): NRMSE of the input,
  a tuned Gaussian, the model and its diffusion-only part (whole image, lesion, each organ), lesion
  and organ Dice against the rule baselines (SUV 2.5 and oracle-seeded 41 % on the Gaussian), MTV /
  TLG errors, organ SUVmean bias and SUVmax in true lesions; table on stdout, JSON in ``--out``.
- ``steps-curve``, ``calibrate-lesions`` (``--write-card``), ``real-check`` and
  ``validate-segmenter``: see :mod:`PETDiffusionLib.tasks.denoise_segment.studies`.
- ``real-validation`` (``--json PATH``): the fixed real split (sarcoma crops and the whole-body study)
  against tuned Gaussian, NLM and BM4D: see :mod:`PETDiffusionLib.tasks.denoise_segment.realval`.

Only validation cases are used to choose anything (Gaussian width, lesion threshold, steps);
held-out cases are only scored.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy.ndimage import find_objects, gaussian_filter, label

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.methods.amdiff.cases import organ_classes
from PETDiffusionLib.methods.amdiff.networks import ORGAN_CLASSES
from PETDiffusionLib.phantom.cohort import case_info, cases_by_index, cases_in_split, list_cases
from PETDiffusionLib.physics.attenuation import BODY_HU
from PETDiffusionLib.quant.metrics import dice, nrmse
from PETDiffusionLib.tasks.denoise_segment import lesion_study, realcurve, realval, studies
from PETDiffusionLib.tasks.denoise_segment.pipeline import denoise_segment_image, load_model
from PETDiffusionLib.tasks.denoise_segment.spec import SPEC

log = logging.getLogger(__name__)

MODES = ("cohort", "steps-curve", "calibrate-lesions", "real-check", "validate-segmenter",
         "real-validation", "lesion-fp", "real-steps-curve")
EVAL_CLASSES = ("lesion", "liver", "lung", "bone", "kidney", "spleen", "aorta", "muscle")
GAUSS_SIGMAS_MM = (0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)   # candidate widths (sigma, mm)
ORACLE_FRACTION = 0.41          # PHYSICS.md Sec. 2: relative 41 % of each lesion's SUVmax
FIXED_SUV_THRESHOLD = 2.5       # PHYSICS.md Sec. 2: fixed SUV >= 2.5
ORACLE_MARGIN_MM = 10.0         # VOI around each true lesion for the oracle-seeded 41 % baseline
BODY_SUV = 0.05                 # without CT or organ labels: SUV above this is body (real crops)


def add_evaluate_args(parser) -> None:
    parser.add_argument("--mode", choices=MODES, default="cohort",
                        help="cohort (default): score the task on --cohort; steps-curve: quality "
                             "vs sampling steps; calibrate-lesions: choose the lesion threshold "
                             "(--write-card stores it in the model card); real-check: the real "
                             "sarcoma PET STS_001/STS_002 against their GTV; validate-segmenter: "
                             "Dice of a segmenter-only run (--run); real-validation: the fixed "
                             "real split vs tuned Gaussian, NLM and BM4D (--json)")
    parser.add_argument("--cohort", default=None,
                        help="folder of case_XXXX/ studies (cohort, steps-curve: required; "
                             "calibrate-lesions: default cohorts/train; real-check: the folder of "
                             "STS_* cases, default ../shared/data/petct_sts/nifti)")
    parser.add_argument("--tune-cohort", default="cohorts/train",
                        help="cohort whose --tune-cases cases (kept out of training) tune the "
                             "Gaussian baseline's width")
    parser.add_argument("--tune-cases", default="0,1",
                        help="case indices in --tune-cohort (the model card's validation cases)")
    parser.add_argument("--cases", default="0,1",
                        help="steps-curve, calibrate-lesions: validation case indices in --cohort")
    parser.add_argument("--fractions", default="10,5",
                        help="count levels in %% (pet_low_<f>); steps-curve uses the first")
    parser.add_argument("--max-cases", type=int, default=0, help="0 = every case")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--start-fraction", type=float, default=0.0)
    parser.add_argument("--no-ct", action="store_true", help="evaluate without the CT input")
    parser.add_argument("--split", default=None,
                        help="only the cases whose case.json 'split' is this (real cohorts: "
                             "validation)")
    parser.add_argument("--lesion-threshold", type=float, default=0.0,
                        help="0 = the model card's calibrated value")
    parser.add_argument("--write-card", action="store_true",
                        help="calibrate-lesions: write the chosen threshold into the model card")
    parser.add_argument("--steps-list", default="1,2,4,8,16,32",
                        help="steps-curve: the sampling steps to measure")
    parser.add_argument("--slices", type=int, default=32,
                        help="steps-curve: central slices of each case")
    parser.add_argument("--png", default=None, help="steps-curve: plot file")
    parser.add_argument("--run", default=None,
                        help="validate-segmenter: run folder of a segmenter-only training")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="real-validation: write the figures (per case, tuned baselines) as JSON")


def _ints(text) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def evaluate(args) -> str:
    """Run the chosen ``--mode``; returns the text for the terminal (JSON also in ``--out``)."""
    mode = getattr(args, "mode", "cohort") or "cohort"
    if mode == "cohort":
        return evaluate_cohort(args)
    if mode == "real-validation":  # the fixed real split vs Gaussian / NLM / BM4D (realval.py)
        res = realval.real_validation(getattr(args, "model", None), _ints(args.fractions),
                                      max_cases=getattr(args, "max_cases", 0) or 0)
        if getattr(args, "json", None):
            atomic_write_text(Path(args.json), json.dumps(res, indent=1, default=float))
            return f"{realval.format_table(res)}\nwrote {args.json}"
        return realval.format_table(res)
    if mode == "real-steps-curve":  # steps and the uncertainty map on real crops (realcurve.py)
        res = realcurve.real_steps_curve(getattr(args, "model", None), _ints(args.fractions)[0],
                                         getattr(args, "max_cases", 0) or 5,
                                         steps_list=tuple(_ints(args.steps_list)))
        if getattr(args, "out", None):
            atomic_write_text(Path(args.out), json.dumps(res, indent=1, default=float))
            return f"{realcurve.format_table(res)}\nwrote {args.out}"
        return realcurve.format_table(res)
    if mode == "lesion-fp":  # FP / FN volumes with and without physiological uptake (lesion_study.py)
        res = lesion_study.lesion_fp_study(getattr(args, "model", None),
                                           args.cohort or lesion_study.PHANTOM_COHORT,
                                           _ints(args.fractions)[0], args.max_cases or 0)
        if getattr(args, "out", None):
            atomic_write_text(Path(args.out), json.dumps(res, indent=1, default=float))
            return f"{lesion_study.format_table(res)}\nwrote {args.out}"
        return lesion_study.format_table(res)
    model = getattr(args, "model", None)
    if mode == "steps-curve":
        if not getattr(args, "cohort", None):
            raise InputError("--mode steps-curve needs --cohort (the validation cases' cohort)")
        res = studies.steps_curve(model, args.cohort, _ints(args.cases), _ints(args.fractions)[0],
                                  args.slices, tuple(_ints(args.steps_list)), png=args.png)
    elif mode == "calibrate-lesions":
        res = studies.calibrate_lesion_threshold(model, args.cohort or "cohorts/train",
                                                 _ints(args.cases), tuple(_ints(args.fractions)),
                                                 write_card=args.write_card)
    elif mode == "real-check":
        res = studies.real_check(model, args.cohort or studies.REAL_CHECK_DATA)
    else:
        if not getattr(args, "run", None):
            raise InputError("--mode validate-segmenter needs --run (a segmenter-only run folder)")
        res = studies.validate_segmenter(args.run, _ints(args.fractions)[0])
    text = json.dumps(res, indent=1)
    if getattr(args, "out", None):
        atomic_write_text(Path(args.out), text)
        return f"{text}\nwrote {args.out}"
    return text


# --------------------------------------------------------------------------------------------
# Cohort evaluation (issue 6)
# --------------------------------------------------------------------------------------------
def _gauss(arr: np.ndarray, sigma_mm: float, spacing_xyz) -> np.ndarray:
    if sigma_mm <= 0:
        return arr
    sig = [sigma_mm / spacing_xyz[2], sigma_mm / spacing_xyz[1], sigma_mm / spacing_xyz[0]]
    return gaussian_filter(arr, sig)


def oracle_41(suv: np.ndarray, lesion_inst: np.ndarray, spacing_xyz) -> np.ndarray:
    """41 % of SUVmax in a VOI around each true lesion (its box grown by ORACLE_MARGIN_MM), keeping
    the connected part that holds the VOI's maximum: an oracle-seeded reference."""
    out = np.zeros(suv.shape, bool)
    m = [int(math.ceil(ORACLE_MARGIN_MM / s)) for s in (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])]
    for sl in find_objects(lesion_inst.astype(np.int64)):
        if sl is None:
            continue
        box = tuple(slice(max(0, s.start - mm), min(n, s.stop + mm))
                    for s, mm, n in zip(sl, m, suv.shape))
        voi = suv[box]
        thr = ORACLE_FRACTION * float(voi.max())
        lab, _ = label(voi >= thr)
        peak = np.unravel_index(int(np.argmax(voi)), voi.shape)
        out[box] |= lab == lab[peak]
    return out


def _pct_err(test: float, ref: float) -> float | None:
    return None if ref <= 0 else 100.0 * (test - ref) / ref


def _median_iqr(vals) -> dict:
    v = np.array([x for x in vals if x is not None and np.isfinite(x)], float)
    if len(v) == 0:
        return {"median": None, "iqr": None, "n": 0}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": round(float(med), 2), "iqr": [round(float(q1), 2), round(float(q3), 2)],
            "n": int(len(v))}


def _mean_sd(vals) -> dict:
    v = np.array([x for x in vals if x is not None and np.isfinite(x)], float)
    if len(v) == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)) if len(v) > 1
                                                           else 0.0, 4), "n": int(len(v))}


def _r2(x, y) -> float | None:
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    if len(pairs) < 3:
        return None
    a, b = np.array(pairs, float).T
    if a.std() == 0 or b.std() == 0:
        return None
    return round(float(np.corrcoef(a, b)[0, 1] ** 2), 4)


def tune_gaussian(cases: list[Path], fractions: list[int]) -> dict[int, float]:
    """Gaussian width (sigma, mm) with the lowest mean whole-image NRMSE on the given cases."""
    best = {}
    data = []
    for c in cases:
        ref_img = sitk.ReadImage(str(c / "suv_true.nii.gz"))
        ref = sitk.GetArrayFromImage(ref_img).astype(np.float32)
        lows = {f: sitk.GetArrayFromImage(sitk.ReadImage(str(c / f"pet_low_{f}.nii.gz")))
                .astype(np.float32) for f in fractions}
        data.append((ref, lows, ref_img.GetSpacing()))
    for f in fractions:
        scores = {s: float(np.mean([nrmse(ref, _gauss(lows[f], s, sp), undefined=None)
                                    for ref, lows, sp in data]))
                  for s in GAUSS_SIGMAS_MM}
        best[f] = min(scores, key=scores.get)
        log.info("Gaussian baseline at %d %%: NRMSE by sigma %s -> %.1f mm", f,
                 {k: round(v, 4) for k, v in scores.items()}, best[f])
    return best


def evaluate_case(case: Path, fraction: int, sigma_mm: float, nets: dict, card: dict,
                  params: dict, use_ct: bool) -> dict:
    info = case_info(case)
    ref_img = sitk.ReadImage(str(case / "suv_true.nii.gz"))
    sp = ref_img.GetSpacing()
    vox_ml = float(np.prod(sp)) / 1000.0
    ref = sitk.GetArrayFromImage(ref_img).astype(np.float32)
    low_img = sitk.ReadImage(str(case / f"pet_low_{fraction}.nii.gz"))
    low = sitk.GetArrayFromImage(low_img).astype(np.float32)
    organs_raw = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "organs.nii.gz"))).astype(np.int64)
    organs = organ_classes(organs_raw, info.get("organ_labels", {}))
    les_inst = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lesions.nii.gz")))
    les = les_inst > 0
    ct_img = sitk.ReadImage(str(case / "ct.nii.gz"), sitk.sitkFloat32) \
        if use_ct and (case / "ct.nii.gz").is_file() else None
    gauss = _gauss(low, sigma_mm, sp)
    t0 = time.monotonic()
    res = denoise_segment_image(low_img, ct_img, nets, card, params, keep_hc=True)
    seconds = time.monotonic() - t0
    model = sitk.GetArrayFromImage(res["pet_denoised"]).astype(np.float32)
    model_hc = sitk.GetArrayFromImage(res["pet_hc"]).astype(np.float32)
    m_les = sitk.GetArrayFromImage(res["lesions"]) > 0
    m_org = sitk.GetArrayFromImage(res["organs"])
    annotated = bool(info.get("organs_annotated", True))  # False: real PET, GTV only
    masks = {"lesion": les}
    for name in EVAL_CLASSES[1:]:
        masks[name] = organs == ORGAN_CLASSES.index(name) if annotated else None
    nr = {}
    for method, img in (("input", low), ("gaussian", gauss), ("model", model),
                        ("model_diffusion_only", model_hc)):
        nr[method] = {"whole": nrmse(ref, img, undefined=None)}
        for name, m in masks.items():
            nr[method][name] = None if m is None else nrmse(ref, img, m, undefined=None)
    # Dice of two empty masks is left out of the tables (None), not counted as agreement
    scores = {"model": {"lesion": dice(m_les, les, empty=None)}}
    for name in EVAL_CLASSES[1:]:
        scores["model"][name] = None if masks[name] is None else \
            dice(m_org == ORGAN_CLASSES.index(name), masks[name], empty=None)
    if annotated:
        body = organs_raw > 0
    elif ct_img is not None:
        body = sitk.GetArrayFromImage(ct_img) > BODY_HU
    else:
        body = ref > BODY_SUV
    base25 = (gauss >= FIXED_SUV_THRESHOLD) & body
    base41 = oracle_41(gauss, les_inst, sp)
    scores["suv2.5_gaussian"] = {"lesion": dice(base25, les, empty=None)}
    scores["oracle41_gaussian"] = {"lesion": dice(base41, les, empty=None)}

    def mtv_tlg(suv, mask):
        return float(mask.sum()) * vox_ml, float(suv[mask].sum()) * vox_ml

    gt_mtv, gt_tlg = mtv_tlg(ref, les)
    quant = {"truth": {"mtv_ml": gt_mtv, "tlg": gt_tlg}}
    for method, (suv, mask) in {"model": (model, m_les), "suv2.5_gaussian": (gauss, base25),
                                "oracle41_gaussian": (gauss, base41)}.items():
        mtv, tlg = mtv_tlg(suv, mask)
        quant[method] = {"mtv_ml": mtv, "tlg": tlg, "mtv_err_pct": _pct_err(mtv, gt_mtv),
                         "tlg_err_pct": _pct_err(tlg, gt_tlg)}
    organ_bias = {}
    for name in ("liver", "aorta") if annotated else ():
        k = ORGAN_CLASSES.index(name)
        gt_m, pr_m = organs == k, m_org == k
        if gt_m.any() and pr_m.any():
            organ_bias[name] = _pct_err(float(model[pr_m].mean()), float(ref[gt_m].mean()))
    gtv_max = float(ref[les].max()) if les.any() else None
    suvmax = {"truth": gtv_max,
              "input": float(low[les].max()) if les.any() else None,
              "model": float(model[les].max()) if les.any() else None}
    return {"case": case.name, "fraction": fraction, "seconds": round(seconds, 2), "nrmse": nr,
            "suvmax_in_true_lesions": suvmax, "lesion_threshold": res["_info"]["lesion_threshold"],
            "dice": scores, "quant": quant, "organ_suvmean_bias_pct": organ_bias,
            "lesion_count": int(len(np.unique(les_inst)) - 1)}


def summarise(rows: list[dict], fractions: list[int]) -> dict:
    out: dict = {}
    for f in fractions:
        rs = [r for r in rows if r["fraction"] == f]
        if not rs:
            continue
        s: dict = {"cases": len(rs)}
        s["nrmse"] = {m: {c: _mean_sd([r["nrmse"][m][c] for r in rs])
                          for c in ("whole",) + EVAL_CLASSES}
                      for m in ("input", "gaussian", "model", "model_diffusion_only")}
        s["dice"] = {"model": {c: _mean_sd([r["dice"]["model"][c] for r in rs]) for c in EVAL_CLASSES},
                     "suv2.5_gaussian": {"lesion": _mean_sd([r["dice"]["suv2.5_gaussian"]["lesion"]
                                                             for r in rs])},
                     "oracle41_gaussian": {"lesion": _mean_sd(
                         [r["dice"]["oracle41_gaussian"]["lesion"] for r in rs])}}
        s["mtv_tlg_error_pct"] = {m: {"mtv": _median_iqr([r["quant"][m]["mtv_err_pct"] for r in rs]),
                                      "tlg": _median_iqr([r["quant"][m]["tlg_err_pct"] for r in rs])}
                                  for m in ("model", "suv2.5_gaussian", "oracle41_gaussian")}
        s["tlg_r2"] = {m: _r2([r["quant"]["truth"]["tlg"] for r in rs],
                              [r["quant"][m]["tlg"] for r in rs])
                       for m in ("model", "suv2.5_gaussian", "oracle41_gaussian")}
        s["organ_suvmean_bias_pct"] = {o: _median_iqr([r["organ_suvmean_bias_pct"].get(o) for r in rs])
                                       for o in ("liver", "aorta")}
        s["suvmax_error_pct"] = {m: _median_iqr([
            _pct_err(r["suvmax_in_true_lesions"][m], r["suvmax_in_true_lesions"]["truth"])
            for r in rs if r["suvmax_in_true_lesions"]["truth"]]) for m in ("input", "model")}
        s["seconds_per_volume"] = _mean_sd([r["seconds"] for r in rs])
        out[str(f)] = s
    return out


def format_table(summary: dict) -> str:
    lines = []
    for f, s in summary.items():
        lines.append(f"== {f} % counts, {s['cases']} cases ==")
        head = f"{'NRMSE':22s}" + "".join(f"{c:>9s}" for c in ("whole",) + EVAL_CLASSES)
        lines.append(head)
        for m, per in s["nrmse"].items():
            lines.append(f"{m:22s}" + "".join(
                f"{per[c]['mean']:9.4f}" if per[c]["mean"] is not None else f"{'-':>9s}"
                for c in ("whole",) + EVAL_CLASSES))
        lines.append(f"{'Dice':22s}" + "".join(f"{c:>9s}" for c in EVAL_CLASSES))
        d = s["dice"]["model"]
        lines.append(f"{'model':22s}" + "".join(
            f"{d[c]['mean']:9.3f}" if d[c]["mean"] is not None else f"{'-':>9s}" for c in EVAL_CLASSES))
        for m in ("suv2.5_gaussian", "oracle41_gaussian"):
            v = s["dice"][m]["lesion"]["mean"]
            lines.append(f"{m:22s}" + (f"{v:9.3f}" if v is not None else f"{'-':>9s}"))
        lines.append("MTV / TLG error % (median [IQR]); TLG R^2")
        for m, e in s["mtv_tlg_error_pct"].items():
            lines.append(f"  {m:20s} MTV {e['mtv']['median']} {e['mtv']['iqr']}  TLG "
                         f"{e['tlg']['median']} {e['tlg']['iqr']}  R2 {s['tlg_r2'][m]}")
        for o, b in s["organ_suvmean_bias_pct"].items():
            lines.append(f"  {o} SUVmean bias % (model): median {b['median']} IQR {b['iqr']}")
        for m, e in s["suvmax_error_pct"].items():
            lines.append(f"  SUVmax in true lesions, {m} vs truth: median {e['median']} % IQR {e['iqr']}")
        lines.append(f"  seconds per volume: {s['seconds_per_volume']['mean']} "
                     f"(sd {s['seconds_per_volume']['sd']})")
    return "\n".join(lines)


def evaluate_cohort(args) -> str:
    """``--mode cohort``: table on stdout, JSON in --out (default COHORT/evaluation_denoise_segment.json)."""
    if not getattr(args, "cohort", None):
        raise InputError("--mode cohort needs --cohort (the cohort to score)")
    cohort = Path(args.cohort)
    cases = list_cases(cohort)
    split = getattr(args, "split", None)
    if split:
        cases = cases_in_split(cohort, split)
        if not cases:
            raise InputError(f"no case with split {split!r}", cohort)
    if getattr(args, "max_cases", 0):
        cases = cases[:args.max_cases]
    fractions = _ints(getattr(args, "fractions", "10,5"))
    for c in cases:
        for f in fractions:
            if not (c / f"pet_low_{f}.nii.gz").is_file():
                raise InputError(f"the cohort has no pet_low_{f}.nii.gz", c)
    nets, card = load_model(getattr(args, "model", None), "cpu")
    tune_cohort = getattr(args, "tune_cohort", "cohorts/train")
    tune = cases_by_index(tune_cohort, _ints(getattr(args, "tune_cases", "0,1")))
    sigmas = tune_gaussian(tune, fractions)
    params = {"steps": int(getattr(args, "steps", 0) or 0),
              "start_fraction": float(getattr(args, "start_fraction", 0.0) or 0.0),
              "lesion_threshold": float(getattr(args, "lesion_threshold", 0.0) or 0.0),
              "samples": 1, "seed": 0}
    use_ct = not getattr(args, "no_ct", False)
    rows = []
    for c in cases:
        for f in fractions:
            r = evaluate_case(c, f, sigmas[f], nets, card, params, use_ct)
            log.info("%s at %d %%: NRMSE model %.4f gauss %.4f input %.4f, lesion Dice %s, %.1f s",
                     c.name, f, r["nrmse"]["model"]["whole"], r["nrmse"]["gaussian"]["whole"],
                     r["nrmse"]["input"]["whole"], r["dice"]["model"]["lesion"], r["seconds"])
            rows.append(r)
    summary = summarise(rows, fractions)
    result = {"task": SPEC.id, "model_id": card["id"], "model_version": card["version"],
              "cohort": str(cohort), "split": split, "cases": [c.name for c in cases],
              "ct_used": use_ct, "lesion_threshold": rows[0]["lesion_threshold"] if rows else None,
              "gaussian_sigma_mm": {str(k): v for k, v in sigmas.items()},
              "tuned_on": [str(c) for c in tune], "parameters": params,
              "torch_threads": torch.get_num_threads(), "summary": summary, "per_case": rows}
    out = Path(args.out) if getattr(args, "out", None) else cohort / "evaluation_denoise_segment.json"
    atomic_write_text(out, json.dumps(result, indent=1, default=float))
    return f"{format_table(summary)}\nwrote {out}"
