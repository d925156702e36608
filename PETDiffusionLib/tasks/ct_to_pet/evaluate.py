"""`petdiffusion evaluate ct-to-pet --mode MODE`: every evaluation of a ct-to-pet model.

Modes (``--mode``, default ``cohort``):
- ``cohort`` (``--cohort DIR``): CPDM against its ablations, the U-Net regression and the
  non-learned tissue floor on a held-out phantom cohort; optionally the real CTs of the shared data,
  figures, and ``--record-into MODEL_DIR`` to copy the figures into a model card;
- ``totalseg-organs``: the real TotalSegmentator CT crop (``--real-data``/ct_totalseg_example,
  example_ct_sm with its organ labels): synthetic SUVmean of each organ against the literature FDG
  range (physics/organ_uptake.py; issue 14's first acceptance line), and its OOD verdict;
- ``real-pairs`` (``--real-data``): the real sarcoma PET/CT pairs held apart from every training
  run (``--real-sts-more``, default the card's ``evaluation.real_sts_validation.cases``): MAE and
  SSIM in the body against the real PET, for CPDM, CPDM without the training canvas (the ablation
  of the air padding) and the tissue floor;
- ``ood`` (``--ct FILE ...``): the out-of-distribution verdict (ood.py) of each CT;
- ``ood-reference`` (``--cohort cohorts/train``): recompute the OOD training reference and write
  it as tasks/ct_to_pet/ood_reference.py (or ``--out``).

Metrics (quant.metrics) are computed inside the body (CT > -500 HU, holes filled per slice) against
the simulator's standard-count AC PET (pet_ac.nii.gz), in SUV.
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

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.io.images import array_and_image, read_image, read_label, resample_to, same_grid
from PETDiffusionLib.methods.cpdm.intensities import body_mask, tissue_floor
from PETDiffusionLib.phantom.cohort import list_cases
from PETDiffusionLib.physics.organ_uptake import (TOTALSEG_GROUPS, check_organ_uptake,
                                                  format_uptake_table)
from PETDiffusionLib.tasks.ct_to_pet import ood_reference
from PETDiffusionLib.tasks.ct_to_pet.ood import ood_check, training_reference, write_reference_module
from PETDiffusionLib.quant.metrics import mae, psnr, ssim3d
from PETDiffusionLib.tasks.ct_to_pet.pipeline import check_ct, load_model, organ_names_for, synthesize
from PETDiffusionLib.tasks.ct_to_pet.spec import DEFAULT_STEPS

log = logging.getLogger(__name__)

ORGAN_GROUPS: dict[str, tuple[str, ...]] = {
    # issue 7 "Evaluation": liver, blood pool/aorta, kidneys, spleen, lungs, muscle, bone
    "liver": ("liver",), "blood_pool": ("aorta", "heart_blood_pool"), "kidneys": ("kidney",),
    "spleen": ("spleen",), "lungs": ("lung",), "muscle": ("muscle",),
    "bone": ("vertebrae", "pelvis", "ribs", "bone", "skull", "femur"),
}
CASE_KVP = 120  # the simulator's CT tube voltage (phantom/case.py CT_KVP)
MODES = ("cohort", "totalseg-organs", "real-pairs", "ood", "ood-reference")
# issue 14 acceptance: these organs of the real TotalSegmentator CT inside their literature range
ACCEPTANCE_ORGANS = ("liver", "spleen", "muscle", "blood_pool")
FAT_LABEL = 1000  # label given to TotalSegmentator's tissue_types subcutaneous_fat (not in its total map)
BASELINE_DIRS = {"cpdm_no_sigma": "cpdm-no-sigma", "cpdm_no_mu": "cpdm-no-mu",
                 "unet_regression": "cpdm-regression"}


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default="cohort",
                        help="cohort (default): held-out phantom cohort; totalseg-organs: organ SUVmean "
                             "of the real TotalSegmentator CT vs the literature FDG ranges; ood: the "
                             "out-of-distribution verdict of --ct files; ood-reference: recompute the "
                             "OOD training reference from --cohort")
    parser.add_argument("--cohort", default=None,
                        help="cohort: the cohort to score (required); ood-reference: the training cohort")
    parser.add_argument("--ct", nargs="+", default=None, help="ood: CT files (NIfTI/NRRD) or DICOM folders")
    parser.add_argument("--kvp", type=float, default=None, help="ood: the CTs' tube voltage if known")
    parser.add_argument("--model", default=None, help="CPDM model folder (default: the shipped one)")
    parser.add_argument("--baselines", default="runs/ct_to_pet/models",
                        help="folder holding the ablation/regression model folders of the training run")
    parser.add_argument("--steps", type=int, default=None, help="bridge steps (default: the card's)")
    parser.add_argument("--curve", default="5,10,20,50,200", help="steps of the quality-vs-steps curve")
    parser.add_argument("--curve-cases", type=int, default=2, help="cases used for the curve")
    parser.add_argument("--max-cases", type=int, default=0, help="evaluate only the first N cases")
    parser.add_argument("--curve-only", action="store_true",
                        help="only the quality-vs-steps curve on the first --curve-cases cases")
    parser.add_argument("--real-data", default=None,
                        help="shared data folder: also run the real CT (ct_totalseg_example) and the "
                             "sarcoma PET/CTs (petct_sts)")
    parser.add_argument("--real-sts-more", default="",
                        help="comma-separated petct_sts_more case ids (e.g. STS_044,STS_047) also "
                             "scored against their real PET, with --real-data; keep them out of training")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--figures", default=None,
                        help="folder for figures (ct_to_pet_heldout.png, ct_to_pet_steps.png)")
    parser.add_argument("--record-into", default=None, metavar="MODEL_DIR",
                        help="copy the measured figures into MODEL_DIR/card.json 'evaluation' "
                             "(the weights and their sha256 are untouched)")


# ------------------------------------------------------------------------------------------------
# scoring

def _organ_groups(names: dict[int, str]) -> dict[str, list[int]]:
    out = {}
    for group, keys in ORGAN_GROUPS.items():
        labels = [k for k, v in names.items() if any(key in v for key in keys)]
        if labels:
            out[group] = labels
    return out


def floor_prediction(ct_img: sitk.Image, card: dict) -> sitk.Image:
    """The non-learned floor: each voxel gets the training-set mean SUV of its CT tissue class."""
    ct = sitk.GetArrayFromImage(ct_img).astype(np.float32)
    return array_and_image(tissue_floor(ct, card["preprocessing"]["tissue_floor_suv"]), ct_img)


def score_case(pred: np.ndarray, ref: np.ndarray, body: np.ndarray, organs: np.ndarray | None,
               groups: dict[str, list[int]]) -> dict:
    rng = float(ref[body].max() - ref[body].min())
    row = {"mae_suv": mae(ref, pred, body), "psnr_db": psnr(ref, pred, body, data_range=rng),
           "ssim": ssim3d(ref, pred, data_range=rng, mask=body)}
    if organs is not None:
        errs = {}
        for g, labels in groups.items():
            m = np.isin(organs, labels)
            if m.sum() < 5:
                continue
            t, p = float(ref[m].mean()), float(pred[m].mean())
            errs[g] = {"true_suvmean": t, "synthetic_suvmean": p, "error_pct": 100.0 * (p - t) / t}
        row["organs"] = errs
        row["organ_abs_error_pct_mean"] = (float(np.mean([abs(e["error_pct"]) for e in errs.values()]))
                                           if errs else None)
    return row


def _summarise(rows: list[dict]) -> dict:
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("mae_suv", "psnr_db", "ssim", "seconds")}
    out["mae_suv_sd"] = float(np.std([r["mae_suv"] for r in rows]))
    vals = [r["organ_abs_error_pct_mean"] for r in rows if r.get("organ_abs_error_pct_mean") is not None]
    out["organ_abs_error_pct_mean"] = float(np.mean(vals)) if vals else None
    groups = sorted({g for r in rows for g in r.get("organs", {})})
    # issue 7's acceptance is per organ within 15 %: count the cases beyond it, not only the mean
    out["organ_error_pct"] = {g: {"mean_signed": float(np.mean(e)), "mean_abs": float(np.mean(np.abs(e))),
                                  "cases_beyond_15pct": int(np.sum(np.abs(e) > 15.0)), "cases": len(e)}
                              for g in groups
                              for e in [[r["organs"][g]["error_pct"] for r in rows if g in r.get("organs", {})]]}
    out["cases"] = len(rows)
    return out


def _load_methods(args, nets: dict, card: dict) -> dict:
    """CPDM and the baselines found in --baselines (they must share CPDM's autoencoder and attention
    network: the per-case cache relies on it)."""
    methods = {"cpdm": (nets, card)}
    bdir = Path(getattr(args, "baselines", "runs/ct_to_pet/models"))
    for name, folder in BASELINE_DIRS.items():
        if (bdir / folder / "card.json").is_file():
            methods[name] = load_model(bdir / folder)
            for shared in ("autoencoder", "attention"):
                a, b = nets[shared].state_dict(), methods[name][0][shared].state_dict()
                if any(not torch.equal(a[k], b[k]) for k in a):
                    raise InputError(f"baseline {name} has its own {shared}; evaluate it separately",
                                     bdir / folder)
        else:
            log.warning("baseline %s not found in %s; not evaluated", name, bdir)
    return methods


# ------------------------------------------------------------------------------------------------

def evaluate(args) -> str:
    """Dispatch on --mode (module docstring)."""
    mode = getattr(args, "mode", "cohort") or "cohort"
    if mode == "totalseg-organs":
        return evaluate_totalseg_organs(args)
    if mode == "real-pairs":
        return evaluate_real_pairs(args)
    if mode == "ood":
        return evaluate_ood(args)
    if mode == "ood-reference":
        return evaluate_ood_reference(args)
    if not getattr(args, "cohort", None):
        raise InputError("--mode cohort needs --cohort (the held-out cohort to score)")
    return evaluate_cohort(args)


def evaluate_cohort(args) -> str:
    """Held-out cohort: CPDM, its two ablations, the U-Net regression and the tissue floor."""
    torch.set_num_threads(max(1, int(getattr(args, "threads", 1) or 1)))
    cohort = Path(args.cohort)
    cases = list_cases(cohort, require=("ct.nii.gz",))
    if getattr(args, "max_cases", 0):
        cases = cases[:args.max_cases]
    if getattr(args, "curve_only", False):
        cases = cases[:args.curve_cases]
    nets, card = load_model(getattr(args, "model", None))
    steps = args.steps or int(card["diffusion"].get("default_steps", DEFAULT_STEPS))
    methods = {} if getattr(args, "curve_only", False) else _load_methods(args, nets, card)
    results = {m: [] for m in list(methods) + ["tissue_floor"]}
    curve_steps = [int(s) for s in str(args.curve).split(",") if s.strip()] if args.curve else []
    curve = {s: [] for s in curve_steps}
    first_case = None
    for ci, case in enumerate(cases):
        ct = read_image(case / "ct.nii.gz")
        ref_img = resample_to(read_image(case / "pet_ac.nii.gz"), ct)
        ref = sitk.GetArrayFromImage(ref_img).astype(np.float32)
        org_img = read_label(case / "organs.nii.gz") if (case / "organs.nii.gz").is_file() else None
        organs = sitk.GetArrayFromImage(resample_to(org_img, ct, is_label=True)) if org_img else None
        groups = _organ_groups(organ_names_for(str(case / "organs.nii.gz")) or {})
        ct_arr = sitk.GetArrayFromImage(ct).astype(np.float32)
        body = body_mask(ct_arr)
        shown = {"CT": ct_arr, "reference PET (pet_ac)": ref} if ci == 0 else None
        cache: dict = {}  # shared by all methods: they share the autoencoder and attention weights
        for m, (mn, mc) in methods.items():
            t0, had = time.monotonic(), "y" in cache
            res = synthesize(ct, mn, mc, kvp=CASE_KVP, steps=steps, seed=args.seed, cache=cache)
            pred = res["pet"]
            if shown is not None:
                shown[m] = sitk.GetArrayFromImage(pred)
                if m == "cpdm":
                    shown["attention map (cpdm)"] = sitk.GetArrayFromImage(res["attention"])
            row = score_case(sitk.GetArrayFromImage(pred), ref, body, organs, groups)
            # whole-volume seconds: a cached call adds the shared preparation it skipped
            row["seconds"] = time.monotonic() - t0 + (cache["prep_seconds"] if had else 0.0)
            row["case"] = case.name
            results[m].append(row)
        t0 = time.monotonic()
        floor_arr = sitk.GetArrayFromImage(floor_prediction(ct, card))
        if shown is not None:
            shown["tissue_floor"] = floor_arr
            sp = ct.GetSpacing()
            first_case = (case.name, shown, sp[2] / sp[0])
        row = score_case(floor_arr, ref, body, organs, groups)
        row["seconds"], row["case"] = time.monotonic() - t0, case.name
        results["tissue_floor"].append(row)
        if ci < args.curve_cases:
            for s in curve_steps:
                t0 = time.monotonic()
                pred = synthesize(ct, nets, card, kvp=CASE_KVP, steps=s, seed=args.seed, cache=cache)["pet"]
                row = score_case(sitk.GetArrayFromImage(pred), ref, body, None, {})
                row["seconds"] = time.monotonic() - t0 + cache["prep_seconds"]
                row["case"] = case.name
                curve[s].append(row)
        log.info("evaluated %s (%d/%d): %s", case.name, ci + 1, len(cases),
                 {m: round(r[-1]["mae_suv"], 4) for m, r in results.items()})
    summary = {m: _summarise(r) for m, r in results.items()}
    curve_summary = {s: {k: float(np.mean([r[k] for r in rows])) for k in ("mae_suv", "psnr_db", "ssim", "seconds")}
                     | {"cases": len(rows), "slices_note": "seconds per whole volume, one CPU thread"}
                     for s, rows in curve.items() if rows}
    recommended = None
    if curve_summary:  # the smallest step count within 2 % of the best MAE: the default to choose
        best = min(c["mae_suv"] for c in curve_summary.values())
        recommended = min(s for s, c in curve_summary.items() if c["mae_suv"] <= 1.02 * best)
    out = {"cohort": str(cohort), "cases": [c.name for c in cases], "steps": steps,
           "model": card["id"], "metrics_inside": "body (CT > -500 HU, holes filled per slice)",
           "reference": "pet_ac.nii.gz (standard-count AC PET of the simulator)",
           "summary": summary, "steps_curve": curve_summary, "per_case": results,
           "recommended_steps": recommended,
           "recommended_rule": "fewest steps with MAE within 2 % of the curve's best",
           "threads": torch.get_num_threads()}
    if getattr(args, "real_data", None):
        more = [c.strip() for c in str(getattr(args, "real_sts_more", "") or "").split(",") if c.strip()]
        out["real_data"] = evaluate_real(Path(args.real_data), nets, card, steps, args.seed, more)
    dst = Path(getattr(args, "out", None) or "runs/ct_to_pet/evaluation.json")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(out, indent=2, default=float))
    if getattr(args, "figures", None):
        out["figures"] = write_figures(Path(args.figures), first_case, curve_summary, summary)
    dst.write_text(json.dumps(out, indent=2, default=float))
    lines = [format_table(out), f"wrote {dst}"]
    if getattr(args, "record_into", None):
        record_evaluation(args.record_into, dst)
        lines.append(f"recorded the evaluation in {Path(args.record_into) / 'card.json'}")
    return "\n".join(lines)


def evaluate_real(shared: Path, nets: dict, card: dict, steps: int, seed: int,
                  sts_more: list[str] | None = None) -> dict:
    """Real CTs: TotalSegmentator example (organ SUVmean, plausibility) and sarcoma PET/CTs (MAE, SSIM):
    petct_sts/nifti STS_001, STS_002 and the ``sts_more`` ids of petct_sts_more."""
    out: dict = {}
    ref_dir = shared / "ct_totalseg_example" / "tests" / "reference_files"
    ct = read_image(ref_dir / "example_ct_sm.nii.gz")
    check_ct(ct, str(ref_dir / "example_ct_sm.nii.gz"))
    seg = resample_to(read_label(ref_dir / "example_seg.nii.gz"), ct, is_label=True)
    class_map = json.loads((shared / "ct_totalseg_example" / "totalsegmentator_total_class_map.json").read_text())
    t0 = time.monotonic()
    pet = sitk.GetArrayFromImage(synthesize(ct, nets, card, steps=steps, seed=seed)["pet"])
    lab = sitk.GetArrayFromImage(seg)
    organs = {}
    for want in ("liver", "spleen", "kidney_left", "kidney_right"):
        ids = [int(k) for k, v in class_map.items() if v == want]
        m = np.isin(lab, ids)
        organs[want] = {"voxels": int(m.sum()), "synthetic_suvmean": float(pet[m].mean()) if m.any() else None}
    out["totalseg_example_ct_sm"] = {"organs": organs, "seconds": time.monotonic() - t0,
                                     "note": "plausibility only: FDG liver is usually 1.3-3.0 SUV"}
    sts = sorted((shared / "petct_sts" / "nifti").glob("STS_*"))
    sts += [shared / "petct_sts_more" / c for c in (sts_more or [])]
    for case in sts:
        ct = read_image(case / "CT_image.nii.gz")
        check_ct(ct, str(case / "CT_image.nii.gz"))
        real = sitk.GetArrayFromImage(resample_to(read_image(case / "PET_image.nii.gz"), ct)).astype(np.float32)
        t0 = time.monotonic()
        syn = sitk.GetArrayFromImage(synthesize(ct, nets, card, steps=steps, seed=seed)["pet"])
        body = body_mask(sitk.GetArrayFromImage(ct).astype(np.float32))
        rng = float(real[body].max() - real[body].min())
        out[case.name] = {"mae_suv_body": mae(real, syn, body), "ssim_body": ssim3d(real, syn, rng, body),
                          "real_suvmean_body": float(real[body].mean()),
                          "synthetic_suvmean_body": float(syn[body].mean()),
                          "seconds": time.monotonic() - t0}
    rows = [v for k, v in out.items() if k.startswith("STS_")]
    if rows:
        out["sts_mean"] = {"cases": len(rows), **{k: float(np.mean([r[k] for r in rows]))
                                                    for k in ("mae_suv_body", "ssim_body")}}
    return out


def totalseg_labels(ref_dir: Path, class_map: Path, ct: sitk.Image) -> tuple[np.ndarray, dict[int, str]]:
    """The TotalSegmentator "total" label map of example_ct_sm on the CT's grid, with its class names,
    and the tissue_types subcutaneous fat added (label FAT_LABEL) where no organ is labelled."""
    seg = read_label(ref_dir / "example_seg.nii.gz")
    if not same_grid(seg, ct):
        seg = resample_to(seg, ct, is_label=True)
    lab = sitk.GetArrayFromImage(seg).astype(np.int32)
    names = {int(k): str(v) for k, v in json.loads(class_map.read_text()).items()}
    fat_path = ref_dir / "example_seg_tissue_types" / "subcutaneous_fat.nii.gz"
    if fat_path.is_file():
        fat = read_label(fat_path)
        fat = fat if same_grid(fat, ct) else resample_to(fat, ct, is_label=True)
        lab[(sitk.GetArrayFromImage(fat) > 0) & (lab == 0)] = FAT_LABEL
        names[FAT_LABEL] = "subcutaneous_fat"
    return lab, names


def evaluate_totalseg_organs(args) -> str:
    """``--mode totalseg-organs``: the ct-to-pet pipeline's synthesis on the real TotalSegmentator CT
    crop; per organ group (physics/organ_uptake.TOTALSEG_GROUPS) the synthetic SUVmean (and the
    tissue floor's) against the literature FDG range; the CT's OOD verdict."""
    torch.set_num_threads(max(1, int(getattr(args, "threads", 1) or 1)))
    shared = Path(getattr(args, "real_data", None) or "../shared/data")
    ref_dir = shared / "ct_totalseg_example" / "tests" / "reference_files"
    ct_path = ref_dir / "example_ct_sm.nii.gz"
    ct = read_image(ct_path)
    check_ct(ct, str(ct_path))
    lab, names = totalseg_labels(ref_dir, shared / "ct_totalseg_example" /
                                 "totalsegmentator_total_class_map.json", ct)
    nets, card = load_model(getattr(args, "model", None))
    steps = args.steps or int(card["diffusion"].get("default_steps", DEFAULT_STEPS))
    t0 = time.monotonic()
    pet = sitk.GetArrayFromImage(synthesize(ct, nets, card, steps=steps, seed=args.seed)["pet"])
    seconds = time.monotonic() - t0
    spacing_zyx = tuple(float(s) for s in reversed(ct.GetSpacing()))
    rows = check_organ_uptake(pet, lab, names, TOTALSEG_GROUPS, spacing_zyx)
    bare = sitk.GetArrayFromImage(synthesize(ct, nets, card, steps=steps, seed=args.seed,
                                             canvas=False)["pet"])
    bare_rows = {r["organ"]: r for r in check_organ_uptake(bare, lab, names, TOTALSEG_GROUPS, spacing_zyx)}
    floor = sitk.GetArrayFromImage(floor_prediction(ct, card))
    floor_rows = {r["organ"]: r for r in check_organ_uptake(floor, lab, names, TOTALSEG_GROUPS, spacing_zyx)}
    verdict = ood_check(ct)
    accepted = {o: next((r["inside"] for r in rows if r["organ"] == o), None) for o in ACCEPTANCE_ORGANS}
    out = {"ct": str(ct_path), "labels": "example_seg.nii.gz (+ tissue_types subcutaneous_fat)",
           "model": card["id"], "model_version": card.get("version"), "steps": steps, "seed": args.seed,
           "kvp": "120 (the NIfTI records none)", "seconds": seconds, "organs": rows,
           "tissue_floor": list(floor_rows.values()), "without_canvas": list(bare_rows.values()),
           "acceptance_organs_inside": accepted,
           "ood": verdict.to_dict()}
    dst = Path(getattr(args, "out", None) or "runs/ct_to_pet/totalseg_organs.json")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(out, indent=2, default=float))
    table = format_uptake_table(rows).splitlines()
    table[0] += "   tissue floor   without canvas"
    for i, r in enumerate(rows, start=1):
        f, b = floor_rows.get(r["organ"]), bare_rows.get(r["organ"])
        table[i] += (f"   {f['suv_mean']:12.2f}" if f else "") + (f"   {b['suv_mean']:14.2f}" if b else "")
    n_in = sum(bool(v) for v in accepted.values())
    lines = [f"ct-to-pet on the real TotalSegmentator CT {ct_path.name} ({card['id']} "
             f"{card.get('version')}, {steps} bridge steps, {seconds:.1f} s); synthetic SUVmean per organ "
             "vs the literature FDG range (docs/PHYSICS.md, physics/organ_uptake.py)", *table,
             f"issue 14 acceptance (liver, spleen, muscle, aorta blood pool inside): {n_in}/{len(accepted)} "
             + str({k: ("inside" if v else "outside" if v is not None else "absent") for k, v in accepted.items()}),
             "OOD: " + ("; ".join(verdict.reasons) if verdict.reasons else "in distribution"),
             f"wrote {dst}"]
    return "\n".join(lines)


def evaluate_real_pairs(args) -> str:
    """``--mode real-pairs``: the held-apart real sarcoma PET/CT pairs (never trained on); per case
    the body MAE and SSIM against the real PET of CPDM, CPDM without the training canvas and the
    tissue floor; the mean over the cases."""
    torch.set_num_threads(max(1, int(getattr(args, "threads", 1) or 1)))
    shared = Path(getattr(args, "real_data", None) or "../shared/data")
    nets, card = load_model(getattr(args, "model", None))
    steps = args.steps or int(card["diffusion"].get("default_steps", DEFAULT_STEPS))
    ids = [c.strip() for c in str(getattr(args, "real_sts_more", "") or "").split(",") if c.strip()]
    ids = ids or list(card.get("evaluation", {}).get("real_sts_validation", {}).get("cases", []))
    if not ids:
        raise InputError("no held-apart cases: give --real-sts-more STS_xxx,...", shared / "petct_sts_more")
    methods = ("cpdm", "cpdm_without_canvas", "tissue_floor")
    per_case = []
    for cid in ids:
        case = shared / "petct_sts_more" / cid
        ct = read_image(case / "CT_image.nii.gz")
        check_ct(ct, str(case / "CT_image.nii.gz"))
        real = sitk.GetArrayFromImage(resample_to(read_image(case / "PET_image.nii.gz"), ct)).astype(np.float32)
        body = body_mask(sitk.GetArrayFromImage(ct).astype(np.float32))
        rng = float(real[body].max() - real[body].min())
        preds = {"cpdm": synthesize(ct, nets, card, steps=steps, seed=args.seed)["pet"],
                 "cpdm_without_canvas": synthesize(ct, nets, card, steps=steps, seed=args.seed,
                                                   canvas=False)["pet"],
                 "tissue_floor": floor_prediction(ct, card)}
        row = {"case": cid, "size": list(ct.GetSize()), "real_suvmean_body": float(real[body].mean())}
        for m, img in preds.items():
            a = sitk.GetArrayFromImage(img).astype(np.float32)
            row[m] = {"mae_suv_body": mae(real, a, body), "ssim_body": ssim3d(real, a, rng, body),
                      "suvmean_body": float(a[body].mean())}
        per_case.append(row)
        log.info("%s: %s", cid, {m: round(row[m]["mae_suv_body"], 3) for m in methods})
    mean = {m: {k: float(np.mean([r[m][k] for r in per_case])) for k in ("mae_suv_body", "ssim_body")}
            for m in methods}
    out = {"cases": ids, "model": card["id"], "model_version": card.get("version"), "steps": steps,
           "seed": args.seed, "metrics_inside": "body (CT > -500 HU, holes filled per slice)",
           "reference": "the real PET (PET_image.nii.gz) resampled onto the CT", "mean": mean,
           "per_case": per_case}
    dst = Path(getattr(args, "out", None) or "runs/ct_to_pet/real_pairs.json")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(out, indent=2, default=float))
    lines = [f"ct-to-pet on {len(ids)} held-apart real sarcoma PET/CT pairs ({card['id']} "
             f"{card.get('version')}, {steps} bridge steps); body MAE / SSIM against the real PET",
             f"{'case':8s} " + " ".join(f"{m:>26s}" for m in methods)]
    for r in per_case:
        lines.append(f"{r['case']:8s} " + " ".join(
            f"{r[m]['mae_suv_body']:17.3f} / {r[m]['ssim_body']:.3f}" for m in methods))
    lines.append(f"{'mean':8s} " + " ".join(
        f"{mean[m]['mae_suv_body']:17.3f} / {mean[m]['ssim_body']:.3f}" for m in methods))
    lines.append(f"wrote {dst}")
    return "\n".join(lines)


def evaluate_ood(args) -> str:
    """``--mode ood``: the out-of-distribution verdict of each --ct."""
    if not getattr(args, "ct", None):
        raise InputError("--mode ood needs --ct FILE [FILE ...]")
    results, lines = {}, []
    for p in args.ct:
        verdict = ood_check(read_image(p), getattr(args, "kvp", None))
        results[str(p)] = verdict.to_dict()
        m = verdict.measured
        lines.append(f"{p}: axial FOV {m['axial_fov_mm']:.0f} mm, in-plane {m['inplane_fov_mm']:.0f} mm, "
                     f"kVp {m['kvp'] if m['kvp'] is not None else 'unknown'}, contrast-like "
                     f"{m['contrast_ml']:.1f} mL, HU-histogram JS {m['hu_js_distance']:.3f} -> "
                     + ("OUT OF DISTRIBUTION: " + "; ".join(verdict.reasons) if verdict.reasons
                        else "in distribution"))
    if getattr(args, "out", None):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))
        lines.append(f"wrote {args.out}")
    return "\n".join(lines)


def evaluate_ood_reference(args) -> str:
    """``--mode ood-reference``: training_reference(--cohort) written as a Python module."""
    if not getattr(args, "cohort", None):
        raise InputError("--mode ood-reference needs --cohort (the training cohort, e.g. cohorts/train)")
    ref = training_reference(args.cohort)
    dst = write_reference_module(ref, getattr(args, "out", None) or ood_reference.__file__)
    return (f"OOD reference from {len(ref['cases'])} CTs of {args.cohort}: axial FOV {ref['axial_fov_mm']} mm, "
            f"in-plane {ref['inplane_fov_mm']} mm, contrast-like max {ref['contrast_ml_max']:.1f} mL, "
            f"nearest-CT HU-histogram JS max {ref['hu_js_nearest_loo_max']:.3f}; wrote {dst}")


def format_table(out: dict) -> str:
    lines = [f"ct-to-pet on {out['cohort']} ({len(out['cases'])} cases, {out['steps']} bridge steps); "
             f"SUV metrics inside the body vs {out['reference']}",
             f"{'method':18s} {'MAE SUV':>8s} {'PSNR dB':>8s} {'SSIM':>7s} {'|organ err| %':>14s} "
             f"{'liver %':>8s} {'|liver| %':>9s} {'>15 %':>6s} {'s/vol':>7s}"]
    nan = float("nan")
    for m, s in out["summary"].items():
        lv = s["organ_error_pct"].get("liver", {})
        org = s["organ_abs_error_pct_mean"]
        beyond = f"{lv['cases_beyond_15pct']}/{lv['cases']}" if "cases" in lv else "-"
        lines.append(f"{m:18s} {s['mae_suv']:8.4f} {s['psnr_db']:8.2f} {s['ssim']:7.4f} "
                     f"{(org if org is not None else nan):14.1f} "
                     f"{lv.get('mean_signed', nan):8.1f} {lv.get('mean_abs', nan):9.1f} {beyond:>6s} "
                     f"{s['seconds']:7.1f}")
    if out.get("steps_curve"):
        lines.append(f"quality vs steps (CPDM, {out['recommended_rule']}: {out['recommended_steps']})")
        lines.append(f"{'':26s}steps  MAE SUV  PSNR dB  SSIM    s/vol")
        for st, c in out["steps_curve"].items():
            lines.append(f"{'':26s}{int(st):5d}  {c['mae_suv']:7.4f}  {c['psnr_db']:7.2f}  "
                         f"{c['ssim']:.4f}  {c['seconds']:6.1f}")
    if out.get("real_data"):
        lines.append("real data: " + json.dumps(out["real_data"], default=float))
    return "\n".join(lines)


def record_evaluation(model_folder: str | Path, evaluation_json: str | Path, notes: dict | None = None
                      ) -> dict:
    """Copy the measured figures of ``petdiffusion evaluate ct-to-pet`` into the card's "evaluation"
    (the weights hash is untouched: card.json is not part of the hashed weights)."""
    folder = Path(model_folder)
    if not (folder / "card.json").is_file():
        raise InputError("not a model folder (no card.json)", folder)
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
# figures

def write_figures(folder: Path, first_case, curve: dict, summary: dict) -> list[str]:
    """docs figures: coronal slices of the first held-out case per method, and quality vs steps."""
    # matplotlib is imported here on purpose: only --figures needs it, and its backend must be set
    # to Agg before pyplot is first imported
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if first_case is not None:
        written.append(_heldout_figure(folder, first_case, summary, plt))
    if curve:
        written.append(_steps_figure(folder, curve, plt))
    return written


def _heldout_figure(folder: Path, first_case, summary: dict, plt) -> str:
    name, shown, aspect = first_case
    ref = shown["reference PET (pet_ac)"]
    y = ref.shape[1] // 2  # the coronal plane through the middle of the field of view
    fig, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 4.2))
    for ax, (title, vol) in zip(axes, shown.items()):
        sl = np.flipud(vol[:, y, :])
        if title == "CT":
            ax.imshow(sl, cmap="gray", vmin=-400, vmax=600, aspect=aspect)
        elif title.startswith("attention"):
            ax.imshow(sl, cmap="viridis", vmin=0, vmax=1, aspect=aspect)
        else:
            ax.imshow(sl, cmap="gray_r", vmin=0, vmax=6, aspect=aspect)
        label = title if title in ("CT", "reference PET (pet_ac)") or title.startswith("attention") else \
            f"{title}\nMAE {summary[title]['mae_suv']:.3f}"
        ax.set_title(label, fontsize=7)
        ax.axis("off")
    fig.suptitle(f"ct-to-pet, held-out {name}, coronal slice; PET 0-6 SUV; SYNTHETIC except the reference",
                 fontsize=8)
    fig.tight_layout()
    p = folder / "ct_to_pet_heldout.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return str(p)


def _steps_figure(folder: Path, curve: dict, plt) -> str:
    curve = {int(k): v for k, v in curve.items()}
    st = sorted(curve)
    fig, ax1 = plt.subplots(figsize=(5, 3.2))
    ax1.plot(st, [curve[k]["mae_suv"] for k in st], "o-", label="MAE in body (SUV)")
    ax1.set_xscale("log")
    ax1.set_xlabel("bridge steps (of 1000 trained)")
    ax1.set_ylabel("MAE in body (SUV)")
    ax2 = ax1.twinx()
    ax2.plot(st, [curve[k]["seconds"] for k in st], "s--", color="tab:red", label="seconds / volume")
    ax2.set_ylabel("s per volume (1 thread)")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=7)
    ax1.set_title(f"CPDM quality vs steps, {curve[st[0]]['cases']} held-out phantoms", fontsize=8)
    fig.tight_layout()
    p = folder / "ct_to_pet_steps.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return str(p)
