"""`petdiffusion evaluate restore`: restored PET against the standard-dose PET on a held-out
simulated cohort (MR and CT guides) and on the held-apart real sarcoma PET/CT split, with the
low-dose input, a tuned Gaussian filter and other model folders (M-UNet, external-only) as rows,
and a quality-versus-steps curve.

Metrics (quant.metrics) inside the body of the standard-dose image (SUV above 5 % of its 99th
percentile), in SUV on the 4 x 4 x 5 mm working grid the cohorts are stored on: PSNR (data range =
the reference's range in the body), SSIM (3D, masked mean), NMSE and NRMSE (MFdiff Sec. 4.1.2).
The Gaussian's FWHM is tuned per count level on the evaluated cases themselves (the best it can do:
an oracle choice that favours the baseline).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage
from skimage.restoration import denoise_nl_means

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.phantom.cohort import cases_in_split, list_cases
from PETDiffusionLib.quant.metrics import nmse, nrmse, psnr, ssim3d
from PETDiffusionLib.tasks.registry import task_part
from PETDiffusionLib.tasks.restore import realval
from PETDiffusionLib.tasks.restore.pipeline import body_mask, load_model, resolve_settings, restore_arrays

log = logging.getLogger(__name__)

GAUSS_FWHM_MM = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0)
"""FWHM grid of the Gaussian baseline (clinical PET post-filters are 4-8 mm; MFdiff's OOD data
used 5 mm, Sec. 4.3.1)."""
FWHM_PER_SIGMA = 2.3548          # 2 sqrt(2 ln 2)
NLM_H_FACTORS = (0.6, 1.0, 1.5)
"""Non-local means (Buades et al. 2005; skimage, 3x3x3 patches, search distance 5): filter strength
h = factor x the noise SD estimated from the image (median absolute deviation of the residual to a
3x3x3 mean, inside the body, x 1.4826 for a normal SD), the factor tuned per count level on the
evaluated cases like the Gaussian's FWHM."""
GUIDE_FILES = {"mr": "mr_t1.nii.gz", "ct": "ct.nii.gz"}


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cohort", default="cohorts/heldout",
                        help="held-out simulated cohort (pet_ac, pet_low_<f>, mr_t1, ct)")
    parser.add_argument("--models", default="mfdiff=mfdiff-2p5d",
                        help="comma-separated LABEL=MODEL (folder or shipped id) rows")
    parser.add_argument("--guides", default="mr,ct", help="guides to evaluate on the simulated cohort")
    parser.add_argument("--fractions", default="25,10,5", help="count levels in percent")
    parser.add_argument("--max-cases", type=int, default=0, help="only the first N cases (0: all)")
    parser.add_argument("--samples", type=int, default=1, help="samples per restoration")
    parser.add_argument("--steps", type=int, default=0, help="DDIM steps (0: each card's default)")
    parser.add_argument("--start-fraction", type=float, default=0.0, help="0: each card's default")
    parser.add_argument("--curve", default="", help="steps of the quality-vs-steps curve, e.g. 1,2,3,5,10")
    parser.add_argument("--curve-model", default="mfdiff", help="label of the model the curve runs")
    parser.add_argument("--curve-cases", type=int, default=2, help="cases used for the curve")
    parser.add_argument("--curve-starts", default="", help="start fractions swept with the curve")
    parser.add_argument("--real-cohort", default="",
                        help="real cohort (training/real_sts layout); its --real-split cases with CT "
                             "are scored with the CT guide against the real PET")
    parser.add_argument("--real-split", default="validation")
    parser.add_argument("--skip-simulated", action="store_true", help="only the real cohort")
    parser.add_argument("--nlm", action="store_true", help="add a tuned non-local means row")
    parser.add_argument("--denoise-segment", default="",
                        help="add the denoise-segment task's denoised PET (no guide) as a row: its "
                             "model folder or shipped id (e.g. amdiff-sts-2p5d)")
    parser.add_argument("--slabs", type=int, default=0,
                        help="score N slabs of --slab-slices axial slices per simulated case, evenly "
                             "spaced over the body (0: the whole volume); a CPU budget")
    parser.add_argument("--slab-slices", type=int, default=16)
    parser.add_argument("--real-validation", action="store_true",
                        help="the real validation study at the PET's own grid (tasks/restore/realval.py):"
                             " held-apart sarcoma crops with CT, 10 %% and 5 %% counts, Gaussian / NLM"
                             " / BM4D / denoise-segment / --models rows; the other parts are skipped")
    parser.add_argument("--write-card", default="",
                        help="--real-validation: store the study's summary in the card of the --models "
                             "entry with this LABEL (card evaluation.real_validation_native)")
    parser.add_argument("--tune-cases", type=int, default=3,
                        help="--real-validation: tuning crops of the baselines")
    parser.add_argument("--out", default="runs/restore/evaluation.json", help="JSON of all figures")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def _read(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError("missing image of an evaluation case", path)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))


def scores(ref: np.ndarray, test: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    rng = float(ref[mask].max() - ref[mask].min())
    return {"psnr": psnr(ref, test, mask, rng), "ssim": ssim3d(ref, test, rng, mask),
            "nmse": nmse(ref, test, mask), "nrmse": nrmse(ref, test, mask, rng)}


def gaussian(low: np.ndarray, fwhm_mm: float, spacing_xyz) -> np.ndarray:
    sigma = [fwhm_mm / FWHM_PER_SIGMA / s for s in spacing_xyz[::-1]]
    return ndimage.gaussian_filter(low, sigma)


def _mean(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    return {k: {"mean": float(np.mean([r[k] for r in rows])), "sd": float(np.std([r[k] for r in rows])),
                "n": len(rows)} for k in keys}


def _models(spec: str) -> dict[str, tuple]:
    out = {}
    for part in [p for p in spec.split(",") if p.strip()]:
        label, _, path = part.partition("=")
        if not path:
            raise InputError(f"--models entries are LABEL=MODEL, got {part!r}")
        out[label.strip()] = load_model(path.strip(), "cpu")
    return out


def noise_sd(img: np.ndarray) -> float:
    res = img - ndimage.uniform_filter(img, 3)
    r = res[body_mask(img)]
    return float(1.4826 * np.median(np.abs(r - np.median(r)))) if r.size else 0.0


def nlm(low: np.ndarray, factor: float) -> np.ndarray:
    sigma = noise_sd(low)
    return denoise_nl_means(low, patch_size=3, patch_distance=5, h=factor * max(sigma, 1e-6),
                            sigma=sigma, fast_mode=True)


def denoise_segment_row(low: np.ndarray, ct: np.ndarray | None, spacing, model) -> np.ndarray:
    """The denoise-segment task's denoised PET (its default settings, no guide) on the same grid."""
    ref = sitk.GetImageFromArray(low.astype(np.float32))
    ref.SetSpacing(tuple(float(s) for s in spacing))
    nets, card = model
    out = task_part("denoise-segment", "pipeline").denoise_segment_image(ref, None, nets, card, {})
    return sitk.GetArrayFromImage(out["pet_denoised"])


def evaluate_cases(items: list[dict], models: dict, args, fractions) -> dict:
    """items: {"name", "target", "lows" {f: arr}, "guide", "modality", "spacing"} per case+guide."""
    gauss_all: dict[int, dict[float, list]] = {f: {w: [] for w in GAUSS_FWHM_MM} for f in fractions}
    nlm_all: dict[int, dict[float, list]] = {f: {h: [] for h in NLM_H_FACTORS} for f in fractions}
    ds_model = (task_part("denoise-segment", "pipeline").load_model(args.denoise_segment, "cpu")
                if args.denoise_segment else None)
    detail = []
    for it in items:
        zs = it.get("score", slice(None))
        ref = it["target"][zs]
        mask = body_mask(ref)

        def sc(test):
            return scores(ref, test[zs], mask)
        for f in fractions:
            low = it["lows"][f]
            row = {"case": it["name"], "guide": it["modality"], "fraction": f, "low": sc(low)}
            for w in GAUSS_FWHM_MM:
                gauss_all[f][w].append(sc(gaussian(low, w, it["spacing"])))
            if args.nlm:
                for h in NLM_H_FACTORS:
                    nlm_all[f][h].append(sc(nlm(low, h)))
            if ds_model is not None:
                row["denoise_segment"] = sc(denoise_segment_row(low, None, it["spacing"], ds_model))
            for label, model in models.items():
                s = resolve_settings({"steps": args.steps, "start_fraction": args.start_fraction,
                                      "samples": args.samples, "seed": 0}, model.card)
                t0 = time.monotonic()
                mean, _ = restore_arrays(low, it["guide"], it["modality"], model, s["steps"],
                                         s["start_fraction"], s["samples"], s["seed"])
                row[label] = sc(mean)
                row[label]["seconds"] = round(time.monotonic() - t0, 1)
            detail.append(row)
            log.info("%s %s %d%%: %s", it["name"], it["modality"], f,
                     {k: round(v["nrmse"], 4) for k, v in row.items() if isinstance(v, dict)})
    summary = {}
    for f in fractions:
        best = min(GAUSS_FWHM_MM, key=lambda w: np.mean([r["nmse"] for r in gauss_all[f][w]]))
        rows = [r for r in detail if r["fraction"] == f]
        extra = {}
        if args.nlm:
            h = min(NLM_H_FACTORS, key=lambda k: np.mean([r["nmse"] for r in nlm_all[f][k]]))
            extra["nlm"] = {**_mean(nlm_all[f][h]), "h_factor": h}
        if ds_model is not None:
            extra["denoise_segment"] = _mean([r["denoise_segment"] for r in rows])
        summary[f"{f}%"] = {"low": _mean([r["low"] for r in rows]),
                            "gaussian": {**_mean(gauss_all[f][best]), "fwhm_mm": best}, **extra,
                            **{label: _mean([{k: v for k, v in r[label].items() if k != "seconds"}
                                             for r in rows]) for label in models}}
    return {"summary": summary, "cases": detail}


def slab_ranges(target: np.ndarray, n: int, length: int) -> list[slice]:
    """``n`` slabs of ``length`` slices centred at evenly spaced quantiles of the body's z range."""
    zs = np.nonzero(body_mask(target).any((1, 2)))[0]
    lo, hi = (int(zs.min()), int(zs.max())) if zs.size else (0, target.shape[0] - 1)
    centres = [lo + (hi - lo) * (i + 1) / (n + 1) for i in range(n)]
    out = []
    for c in centres:
        z0 = int(np.clip(round(c - length / 2), 0, max(0, target.shape[0] - length)))
        out.append(slice(z0, z0 + length))
    return out


def _slab_items(item: dict, slabs: list[slice], spacing) -> list[dict]:
    """Each slab with one slice of context on either side (2.5D input), scored without it."""
    out = []
    for sl in slabs:
        a, b = max(0, sl.start - 1), min(item["target"].shape[0], sl.stop + 1)
        out.append({**item, "name": f"{item['name']}[z{sl.start}:{sl.stop}]",
                    "target": item["target"][a:b], "guide": item["guide"][a:b],
                    "lows": {f: v[a:b] for f, v in item["lows"].items()},
                    "score": slice(sl.start - a, (sl.start - a) + (sl.stop - sl.start)),
                    "spacing": spacing})
    return out


def simulated_items(args, guides) -> list[dict]:
    dirs = list_cases(args.cohort, require=("pet_ac.nii.gz",))
    if args.max_cases:
        dirs = dirs[:args.max_cases]
    fr = [int(f) for f in args.fractions.split(",")]
    items = []
    for d in dirs:
        sp = sitk.ReadImage(str(d / "pet_ac.nii.gz")).GetSpacing()
        target = _read(d / "pet_ac.nii.gz")
        lows = {f: np.clip(_read(d / f"pet_low_{f}.nii.gz"), 0, None) for f in fr}
        for g in guides:
            it = {"name": d.name, "target": target, "lows": lows, "modality": g,
                  "guide": _read(d / GUIDE_FILES[g]), "spacing": sp}
            items += _slab_items(it, slab_ranges(target, args.slabs, args.slab_slices), sp) \
                if args.slabs else [it]
    return items


def real_items(args) -> list[dict]:
    dirs = [d for d in cases_in_split(args.real_cohort, args.real_split) if (d / "ct.nii.gz").is_file()]
    if not dirs:
        raise InputError(f"no {args.real_split!r} cases with a CT", args.real_cohort)
    fr = [int(f) for f in args.fractions.split(",")]
    items = []
    for d in dirs:
        sp = sitk.ReadImage(str(d / "suv_true.nii.gz")).GetSpacing()
        items.append({"name": json.loads((d / "case.json").read_text())["source_id"],
                      "target": _read(d / "suv_true.nii.gz"), "modality": "ct",
                      "lows": {f: np.clip(_read(d / f"pet_low_{f}.nii.gz"), 0, None) for f in fr},
                      "guide": _read(d / "ct.nii.gz"), "spacing": sp})
    return items


def steps_curve(items: list[dict], model, steps_list, starts, fraction: int,
                samples: int = 1) -> list[dict]:
    out = []
    for start in starts:
        for st in steps_list:
            rows = []
            t0 = time.monotonic()
            for it in items:
                zs = it.get("score", slice(None))
                ref = it["target"][zs]
                mean, _ = restore_arrays(it["lows"][fraction], it["guide"], it["modality"], model,
                                         st, start, samples, 0)
                rows.append(scores(ref, mean[zs], body_mask(ref)))
            out.append({"steps": st, "start_fraction": start, "fraction": fraction, "samples": samples,
                        "seconds_per_volume": round((time.monotonic() - t0) / len(items), 1),
                        **{k: v["mean"] for k, v in _mean(rows).items()}})
            log.info("curve: %s", out[-1])
    return out


def evaluate(args) -> int:
    torch.set_num_threads(max(1, int(args.threads)))
    models = _models(args.models)
    fractions = [int(f) for f in args.fractions.split(",")]
    if args.real_validation:
        params = {"samples": args.samples, "seed": 0, "steps": args.steps,
                  "start_fraction": args.start_fraction}
        res = realval.real_validation(models, args.denoise_segment, fractions, args.tune_cases,
                                      max_cases=args.max_cases, params=params)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(res, indent=1))
        if args.write_card:
            folder = dict(p.partition("=")[::2] for p in args.models.split(",")).get(args.write_card)
            if folder is None or not (Path(folder) / "card.json").is_file():
                raise InputError(f"--write-card {args.write_card}: not the label of a --models "
                                 "entry that is a model folder", folder)
            realval.record_in_card(Path(folder), res, "petdiffusion evaluate restore " +
                                   " ".join(getattr(args, "argv", []) or []))
        return realval.format_table(res) + f"\nfigures: {out}"
    result: dict = {"metric_mask": "standard-dose body (SUV > 5 % of its 99th percentile)",
                    "gaussian_tuning": "FWHM per count level chosen on the evaluated cases (min NMSE)",
                    "models": {k: {"id": m.card["id"], "version": m.card["version"],
                                   "inference": resolve_settings({"steps": args.steps,
                                                                  "start_fraction": args.start_fraction,
                                                                  "samples": args.samples}, m.card)}
                               for k, m in models.items()}}
    guides = [g for g in args.guides.split(",") if g]
    if not args.skip_simulated:
        items = simulated_items(args, guides)
        result["simulated"] = {"cohort": args.cohort, **evaluate_cases(items, models, args, fractions)}
        if args.curve:
            model = models[args.curve_model]
            starts = [float(s) for s in args.curve_starts.split(",") if s] or \
                [resolve_settings({}, model.card)["start_fraction"]]
            sub = [it for it in items if it["modality"] == guides[0]][:args.curve_cases]
            result["steps_curve"] = steps_curve(sub, model, [int(s) for s in args.curve.split(",")],
                                                starts, min(fractions), args.samples)
    if args.real_cohort:
        items = real_items(args)
        result["real"] = {"cohort": args.real_cohort, "split": args.real_split,
                          "case_ids": sorted({it["name"] for it in items}),
                          **evaluate_cases(items, models, args, fractions)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1))
    return summary_text(result, out)


def summary_text(result: dict, out: Path) -> str:
    """The figures as a table for the terminal (cli/evaluate.py prints it)."""
    lines = []
    for part in ("simulated", "real"):
        for lvl, rows in result.get(part, {}).get("summary", {}).items():
            lines.append(f"{part} {lvl} counts")
            for k, v in rows.items():
                extra = f"  (FWHM {v['fwhm_mm']:g} mm)" if "fwhm_mm" in v else \
                    (f"  (h = {v['h_factor']:g} sigma)" if "h_factor" in v else "")
                lines.append(f"  {k:<14} PSNR {v['psnr']['mean']:6.2f} dB  SSIM {v['ssim']['mean']:.4f}"
                             f"  NMSE {v['nmse']['mean']:.4f}  NRMSE {v['nrmse']['mean']:.4f}{extra}")
    for c in result.get("steps_curve", []):
        lines.append(f"steps curve: {c['steps']:>3} steps from {c['start_fraction']:.2f} T: PSNR "
                     f"{c['psnr']:.2f} NMSE {c['nmse']:.4f} ({c['seconds_per_volume']} s/volume)")
    lines.append(f"figures: {out}")
    return "\n".join(lines)
