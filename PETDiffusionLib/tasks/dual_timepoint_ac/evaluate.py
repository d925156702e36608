"""`petdiffusion evaluate dual-timepoint-ac --cohort DIR`: STMDiff (k = 1..5) against the NAC, the
NAC scaled by one global factor, the NAC -> AC U-Net and the diffusion without CT prior on a
held-out simulated cohort with patient motion (STMDiff Table 1, Figs. 4-5); the matching network's
retrieval accuracy against the size of the motion; liver and kidney SUVmean agreement (PCC); the
quality-versus-steps curve; the input-check statistics; the same-patient check (every case's NAC
against every case's CT, which sets the card's warning floor); ``--figures`` violins and retrieval
plots. ``--real-crops DIR`` runs the real PET/CT study of realdata.py instead. ``--record-into
MODEL_DIR`` copies the figures into the card's ``evaluation``.

Reference: the simulator's delayed AC PET (pet_delayed_ac.nii.gz, reconstructed with the delayed
scan's own attenuation). Metrics (quant.metrics) in SUV inside the delayed body (the organ labels
moved by the case's recorded motion, phantom/motion.py); PSNR with the reference's range in the body.
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
from PETDiffusionLib.io.images import read_image
from PETDiffusionLib.methods.cpdm.transforms import pad_to_multiple
from PETDiffusionLib.methods.stmdiff.inference import slice_similarity
from PETDiffusionLib.methods.stmdiff.intensities import NAC_GAIN, body_contours, ct_to_net, nac_to_net
from PETDiffusionLib.models.registry import load_model_folder
from PETDiffusionLib.phantom.cohort import case_info, list_cases
from PETDiffusionLib.phantom.motion import RigidMotion, apply_motion, matching_first_slices
from PETDiffusionLib.quant.metrics import psnr, rmse, ssim3d
from PETDiffusionLib.tasks.dual_timepoint_ac.pipeline import (CT_AIR, PAD_MULTIPLE, SAME_PATIENT_MARGIN,
                                                              correct_volume, ct_on_nac_plane, load_model,
                                                              match_similarity, nac_profile,
                                                              physics_correct, retention_rows, working_nac)
from PETDiffusionLib.tasks.dual_timepoint_ac.realdata import real_crops_study, wholebody_study
from PETDiffusionLib.tasks.dual_timepoint_ac.spec import DEFAULT_STEPS, LESION_SUV_THRESHOLD

log = logging.getLogger(__name__)

FILES = ("ct", "pet_delayed_nac", "pet_delayed_ac", "organs")
ORGANS = {"liver": ("liver",), "kidneys": ("kidney",)}  # STMDiff Fig. 4 regions
BASELINES = {"unet": "stmdiff-unet", "diffusion_no_ct": "stmdiff-k0", "stmdiff_k1": "stmdiff-k1",
             "stmdiff_k3": "stmdiff-k3", "stmdiff_k4": "stmdiff-k4", "stmdiff_k5": "stmdiff-k5"}


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cohort", default=None, help="held-out simulated cohort (delayed images)")
    parser.add_argument("--real-crops", default=None, metavar="DIR",
                        help="instead of --cohort: delayed scans simulated from the real sarcoma PET/CT "
                             "crops in DIR (../shared/data/petct_sts_more; tasks/dual_timepoint_ac/realdata.py)")
    parser.add_argument("--real-wholebody", default=None, metavar="DICOM_DIR",
                        help="with --real-crops: also the real whole-body PET in DICOM_DIR "
                             "(../shared/data/petwb_sts001/PET/image) with a body-outline CT (realdata.wholebody_study)")
    parser.add_argument("--model", default=None, help="STMDiff model folder (default: the shipped one)")
    parser.add_argument("--baselines", default="runs/stmdiff/train/models",
                        help="folder with the baselines found by name: stmdiff-unet, stmdiff-k0, stmdiff-k1, stmdiff-k3, stmdiff-k4, stmdiff-k5")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the card's)")
    parser.add_argument("--curve", default="2,5,10,20,50", help="steps of the quality-vs-steps curve")
    parser.add_argument("--curve-cases", type=int, default=2)
    parser.add_argument("--max-cases", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/stmdiff/eval", help="folder for results.json")
    parser.add_argument("--figures", action="store_true",
                        help="also write violins of the liver and kidney SUVs per method (STMDiff Fig. 4) "
                             "and retrieval accuracy against the motion (Fig. 5) into --out")
    parser.add_argument("--record-into", default=None, metavar="MODEL_DIR",
                        help="copy the figures into MODEL_DIR/card.json 'evaluation'")


def _labels(names: dict[int, str], parts) -> list[int]:
    return [k for k, v in names.items() if any(p in v for p in parts)]


def read_case(case: Path) -> dict:
    info = case_info(case)
    motion = RigidMotion.from_dict(info["simulation"]["delayed"]["motion"])
    imgs = {f: read_image(case / f"{f}.nii.gz") for f in FILES[:3]}
    organs = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "organs.nii.gz"))).astype(np.int32)
    sp = imgs["ct"].GetSpacing()
    moved = apply_motion(organs, motion, sp, order=0, cval=0)
    names = {int(k): v for k, v in info["organ_labels"].items()}
    return {"name": case.name, "motion": motion, "spacing": sp, "organs": moved, "names": names, **imgs}


def score(pred: np.ndarray, ref: np.ndarray, body: np.ndarray, c: dict) -> dict:
    rng = float(ref[body].max() - ref[body].min())
    out = {"psnr": psnr(ref, pred, body, rng), "ssim": ssim3d(ref, pred, rng, body),
           "rmse": rmse(ref, pred, body)}
    for organ, parts in ORGANS.items():
        m = np.isin(c["organs"], _labels(c["names"], parts))
        out[f"{organ}_suvmean"] = float(pred[m].mean()) if m.any() else None
    return out


VIOLIN_VOXELS = 4000
"""Voxels drawn per case, organ and method for the violins (the 8 held-out cases: 32,000 per violin)."""


def organ_voxels(pred: np.ndarray, c: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for organ, parts in ORGANS.items():
        v = pred[np.isin(c["organs"], _labels(c["names"], parts))]
        out[organ] = v if len(v) <= VIOLIN_VOXELS else rng.choice(v, VIOLIN_VOXELS, replace=False)
    return out


def write_figures(folder: Path, voxels: dict[str, dict[str, list]], retr: list[dict]) -> list[str]:
    """violins.png: SUV of the liver and kidney voxels (reference and each method, pooled over the
    cases); retrieval.png: top-1/top-2 (exact and +-1 slice) against the size of each case's motion."""
    from matplotlib.figure import Figure
    folder.mkdir(parents=True, exist_ok=True)
    methods = list(voxels)
    fig = Figure(figsize=(1.3 * len(methods) + 1.5, 5.4))
    for row, organ in enumerate(ORGANS):
        ax = fig.add_subplot(2, 1, row + 1)
        data = [np.concatenate(voxels[m][organ]) if voxels[m][organ] else np.zeros(1) for m in methods]
        ax.violinplot(data, showmedians=True)
        ax.set_xticks(range(1, len(methods) + 1), methods if row == 1 else [""] * len(methods), fontsize=7,
                      rotation=20)
        ax.set_ylabel(f"{organ} SUV", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("dual-timepoint-ac, held-out phantoms: delayed AC SUV in liver and kidneys\n"
                 "(reference = simulated delayed AC; the others SYNTHETIC)", fontsize=8)
    fig.tight_layout()
    p1 = folder / "violins.png"
    fig.savefig(p1, dpi=110)
    fig = Figure(figsize=(5, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    mm = [r["motion_mm"] for r in retr]
    for key, mark in (("top1", "o"), ("top2", "s"), ("top1_pm1", "^"), ("top2_pm1", "v")):
        ax.plot(mm, [r[key] for r in retr], mark, label=key.replace("_pm1", " +-1 slice"))
    ax.set_xlabel("motion between the scans (mm)", fontsize=8)
    ax.set_ylabel("retrieval accuracy", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    p2 = folder / "retrieval.png"
    fig.savefig(p2, dpi=110)
    return [str(p1), str(p2)]


def retrieval(nets: dict, c: dict, spacing, k_max: int = 5) -> dict:
    """Top-k retrieval accuracy of the matching network on this case's delayed slices (exact slice
    and within +-1 slice), against the true first-scan slice from the recorded motion."""
    nac_w = working_nac(c["pet_delayed_nac"], spacing)
    ct_w = ct_on_nac_plane(c["ct"], nac_w)
    nac, _ = pad_to_multiple(sitk.GetArrayFromImage(nac_w), PAD_MULTIPLE, 0.0)
    ct, _ = pad_to_multiple(sitk.GetArrayFromImage(ct_w), PAD_MULTIPLE, CT_AIR)
    sim = slice_similarity(nets["g1"], nets["g2"], nac_to_net(nac), ct_to_net(ct))
    top = sim.topk(k_max, dim=1).indices.numpy()
    # the CT grid starts at the CT's lowest z: the true index on it from the motion on the NAC grid
    truth = matching_first_slices(c["motion"], len(nac), spacing)
    offset = int(round((nac_w.GetOrigin()[2] - ct_w.GetOrigin()[2]) / spacing[2]))
    truth = truth + offset
    body = np.nonzero(body_contours(nac, "pet").reshape(len(nac), -1).sum(1) > 60)[0]
    acc = {}
    for k in range(1, k_max + 1):
        acc[f"top{k}"] = float(np.mean([truth[i] in top[i, :k] for i in body]))
        acc[f"top{k}_pm1"] = float(np.mean([np.abs(top[i, :k] - truth[i]).min() <= 1 for i in body]))
    return acc


def match_matrix(nets: dict, studies: list[tuple[sitk.Image, sitk.Image]], spacing) -> np.ndarray:
    """pipeline.match_similarity of every case's delayed NAC [i] against every case's CT [j]."""
    nacs = []
    for nac_img, _ in studies:
        nw = working_nac(nac_img, spacing)
        nacs.append((nw, pad_to_multiple(sitk.GetArrayFromImage(nw), PAD_MULTIPLE, 0.0)[0]))
    out = np.zeros((len(studies), len(studies)))
    for j, (_, ct_img) in enumerate(studies):
        for i, (nw, nac) in enumerate(nacs):
            ct, _ = pad_to_multiple(sitk.GetArrayFromImage(ct_on_nac_plane(ct_img, nw)), PAD_MULTIPLE, CT_AIR)
            sim = slice_similarity(nets["g1"], nets["g2"], nac_to_net(nac), ct_to_net(ct))
            out[i, j] = match_similarity(sim, nac)
    return out


def patient_check(matrix: np.ndarray) -> dict:
    """Same-patient (diagonal) and other-patient ranges of the match similarity, the refusal floor
    (SAME_PATIENT_MARGIN x the lowest same-patient value) and what it catches."""
    same = np.diag(matrix)
    other = matrix[~np.eye(len(matrix), dtype=bool)]
    floor = SAME_PATIENT_MARGIN * float(same.min())
    return {"same_patient": [round(float(same.min()), 3), round(float(same.max()), 3)],
            "other_patient": [round(float(other.min()), 3), round(float(other.max()), 3)] if other.size else None,
            "floor": round(floor, 3), "pairs_other": int(other.size),
            "other_refused_fraction": round(float(np.mean(other < floor)), 3) if other.size else None,
            "same_refused_fraction": round(float(np.mean(same < floor)), 3),
            "how": "mean over the delayed NAC's body slices of the best s = -L1 to any CT slice; every "
                   "held-out case's NAC against its own CT and against the other cases' CTs"}


def _mean_sd(rows: list[dict], key: str) -> list[float]:
    v = [r[key] for r in rows if r.get(key) is not None]
    return [round(float(np.mean(v)), 4), round(float(np.std(v)), 4)]


def _pcc(a: list, b: list) -> float | None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return None if len(a) < 3 or a.std() == 0 or b.std() == 0 else round(float(np.corrcoef(a, b)[0, 1]), 3)


PHYSICS = "physics"
"""The task's default method (pipeline.physics_correct): STMDiff's matching, CT registration and
reprojection attenuation correction; scored beside the networks."""


def run_method(name: str, nac: sitk.Image, ct: sitk.Image, nets: dict, card: dict, steps: int, seed: int) -> dict:
    """{"pet", "shift_mm", "match_similarity"} of one method on one study."""
    if name == PHYSICS:
        return physics_correct(nac, ct, nets, card)
    k = int(card["preprocessing"].get("k", 0))
    return correct_volume(nac, ct, nets, card, k=k, steps=steps, seed=seed)


def load_methods(args) -> tuple[dict, dict, dict]:
    """(STMDiff networks, its card, {name: (networks, card)} of the physics method, STMDiff k2 and
    the baselines found)."""
    nets, card = load_model(args.model)
    methods = {PHYSICS: (nets, card), "stmdiff_k2": (nets, card)}
    for name, folder in BASELINES.items():
        path = Path(args.baselines) / folder
        if (path / "card.json").is_file():
            methods[name] = load_model_folder(path)
        else:
            log.warning("baseline %s not found in %s", name, path)
    return nets, card, methods


def evaluate_real_crops(args) -> str:
    nets, card, methods = load_methods(args)
    steps = args.steps or int(card["diffusion"].get("default_steps", DEFAULT_STEPS))
    result = real_crops_study(args.real_crops, methods, run_method, steps, args.seed, args.max_cases)
    result["command"] = f"petdiffusion evaluate dual-timepoint-ac --real-crops {args.real_crops}"
    if args.real_wholebody:
        result["wholebody"] = wholebody_study(args.real_wholebody, methods, run_method, steps, args.seed)
        result["command"] += f" --real-wholebody {args.real_wholebody}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "real_crops.json", json.dumps(result, indent=1, default=str))
    if args.record_into:
        cp = Path(args.record_into) / "card.json"
        card_json = json.loads(cp.read_text())
        card_json["evaluation_real_crops"] = {k: v for k, v in result.items() if k != "per_case"}
        atomic_write_text(cp, json.dumps(card_json, indent=2, default=str))
    lines = [f"{result['cases']} real crops, motion {result['motion']}, {steps} steps"]
    for name, v in result["summary"].items():
        lines.append(f"{name:<16} body NRMSE median {v['body_nrmse_median']:.4f} (mean {v['body_nrmse_mean']:.4f})"
                     f"  GTV SUVmean |error| median {v['gtv_suvmean_abs_error_pct_median']} %"
                     f"  muscle SUVmean |error| median {v['muscle_suvmean_abs_error_pct_median']} %"
                     + (f"  NRMSE / scaled NAC {v['nrmse_over_scaled_nac_median']}, "
                        f"{v['cases_at_most_half_of_scaled_nac']} cases <= 0.5" if name != "nac_scaled" else ""))
    if "wholebody" in result:
        wb = result["wholebody"]
        lines.append(f"whole body (petwb_sts001, body-outline CT): body NRMSE {wb['body_nrmse']}, "
                     f"/ scaled NAC {wb['nrmse_over_scaled_nac']}, body mean error % {wb['body_mean_error_pct']}, "
                     f"registration {wb['registration']}")
    lines.append(f"results: {out / 'real_crops.json'}")
    return "\n".join(lines)


def merged_evaluation(old: dict, result: dict) -> dict:
    """The card's new ``evaluation``: this run's figures; the table and organ rows of methods this run
    did not score (baselines not found) are kept from the earlier run, and ``method_runs`` says which
    run every row comes from."""
    new = {k: v for k, v in result.items() if k != "per_case"}
    stamp = time.strftime("%Y-%m-%d")
    runs = dict(old.get("method_runs", {}))
    for m in result["table"]:
        runs[m] = {"date": stamp, "command": result["command"]}
    for key in ("table", "organ_agreement"):
        for m, v in old.get(key, {}).items():
            if m not in new[key]:
                new[key][m] = v
                runs.setdefault(m, {"date": "earlier", "command": old.get("command")})
    new["method_runs"] = runs
    return new


def evaluate(args) -> str:
    torch.set_num_threads(int(args.threads))
    if args.real_crops:
        return evaluate_real_crops(args)
    if not args.cohort:
        raise InputError("give --cohort (held-out simulated cohort) or --real-crops (real PET/CT crops)")
    cases = list_cases(Path(args.cohort), require=tuple(f"{f}.nii.gz" for f in FILES))
    if args.max_cases:
        cases = cases[:args.max_cases]
    if not cases:
        raise InputError("no cases with delayed images (pet_delayed_nac, pet_delayed_ac)", args.cohort)
    nets, card, methods = load_methods(args)
    steps = args.steps or int(card["diffusion"].get("default_steps", DEFAULT_STEPS))
    spacing = tuple(card["preprocessing"]["working_spacing_mm"])
    t0 = time.monotonic()
    rows: dict[str, list[dict]] = {m: [] for m in ["nac", "nac_scaled", *methods]}
    truth_organs, retr, checks, curve, ri_pairs, studies = [], [], [], {}, [], []
    curve_steps = [int(s) for s in args.curve.split(",") if s.strip()]
    voxels: dict[str, dict[str, list]] = {m: {o: [] for o in ORGANS}
                                          for m in ["reference", "nac_scaled", *methods]}
    vrng = np.random.default_rng(args.seed)
    for ci, case in enumerate(cases):
        c = read_case(case)
        ref = sitk.GetArrayFromImage(c["pet_delayed_ac"]).astype(np.float32)
        nac = sitk.GetArrayFromImage(c["pet_delayed_nac"]).astype(np.float32)
        body = c["organs"] > 0
        truth_organs.append(score(ref, ref, body, c))
        rows["nac"].append(score(nac, ref, body, c) | {"case": c["name"]})
        rows["nac_scaled"].append(score(nac * NAC_GAIN, ref, body, c) | {"case": c["name"]})
        for m, arr in (("reference", ref), ("nac_scaled", nac * NAC_GAIN)):
            for o, v in organ_voxels(arr, c, vrng).items():
                voxels[m][o].append(v)
        for name, (mn, mc) in methods.items():
            res = run_method(name, c["pet_delayed_nac"], c["ct"], mn, mc, steps, args.seed)
            pred = sitk.GetArrayFromImage(res["pet"]).astype(np.float32)
            rows[name].append(score(pred, ref, body, c) | {"case": c["name"], "shift_mm": res["shift_mm"]})
            for o, v in organ_voxels(pred, c, vrng).items():
                voxels[name][o].append(v)
            if name == PHYSICS and (case / "pet_ac.nii.gz").is_file():
                # retention index per hot region of the first AC PET: the task's default vs the simulated delayed AC's
                first = read_image(case / "pet_ac.nii.gz")
                got = retention_rows(first, res["pet"], LESION_SUV_THRESHOLD)
                want = retention_rows(first, c["pet_delayed_ac"], LESION_SUV_THRESHOLD)
                ri_pairs += [(w["retention_index_percent"], g["retention_index_percent"])
                             for w, g in zip(want, got)]
        if ci < args.curve_cases:
            for s in curve_steps:
                res = correct_volume(c["pet_delayed_nac"], c["ct"], nets, card, k=int(card["preprocessing"]["k"]),
                                     steps=s, seed=args.seed)
                pred = sitk.GetArrayFromImage(res["pet"]).astype(np.float32)
                curve.setdefault(s, []).append(rmse(ref, pred, body))
        studies.append((c["pet_delayed_nac"], c["ct"]))
        r = retrieval(nets, c, spacing)
        retr.append(r | {"case": c["name"], "motion_mm": round(c["motion"].magnitude_mm, 1),
                         "shift_mm_xyz": [round(v, 1) for v in c["motion"].shift_mm_xyz],
                         "rotation_deg_xyz": [round(v, 2) for v in c["motion"].rotation_deg_xyz]})
        nw = working_nac(c["pet_delayed_nac"], spacing)
        aw = working_nac(c["pet_delayed_ac"], spacing)
        checks.append({"nac": nac_profile(sitk.GetArrayFromImage(nw)),
                       "ac": nac_profile(sitk.GetArrayFromImage(aw))})
        log.info("case %s done (%.0f s)", c["name"], time.monotonic() - t0)
    table = {m: {key: _mean_sd(rs, key) for key in ("psnr", "ssim", "rmse")} for m, rs in rows.items()}
    organ_agreement = {}
    for m, rs in rows.items():
        organ_agreement[m] = {}
        for organ in ORGANS:
            key = f"{organ}_suvmean"
            t = [o[key] for o in truth_organs]
            p = [r[key] for r in rs]
            organ_agreement[m][organ] = {
                "pcc": _pcc(t, p),
                "mean_abs_rel_error": round(float(np.mean(np.abs(np.array(p) - np.array(t)) / np.array(t))), 3)}
    curve_rmse = {s: round(float(np.mean(v)), 4) for s, v in sorted(curve.items())}
    best = min(curve_rmse.values()) if curve_rmse else None
    chosen = min((s for s, v in curve_rmse.items() if v <= 1.02 * best), default=None) if best else None
    motion_bins = {}
    for lo, hi in ((0, 10), (10, 20), (20, 100)):
        sel = [r for r in retr if lo <= r["motion_mm"] < hi]
        if sel:
            motion_bins[f"{lo}-{hi} mm"] = {"cases": len(sel), **{f"top{k}": round(float(np.mean(
                [r[f"top{k}"] for r in sel])), 3) for k in (1, 2, 3)}, "top1_pm1": round(float(np.mean(
                [r["top1_pm1"] for r in sel])), 3)}
    pcheck = patient_check(match_matrix(nets, studies, spacing))
    result = {
        "cohort": str(args.cohort), "cases": [c.name for c in cases], "steps": steps, "seed": args.seed,
        "samples": 1, "reference": "pet_delayed_ac.nii.gz (simulated delayed AC PET)",
        "metrics_region": "delayed body (organ labels moved by the recorded motion)",
        "table": table, "organ_agreement": organ_agreement,
        "retrieval": {"per_case": retr, "by_motion": motion_bins,
                      "mean": {k: round(float(np.mean([r[k] for r in retr])), 3)
                               for k in retr[0] if k.startswith("top")}},
        "steps_curve": {"rmse_suv": curve_rmse, "cases": min(args.curve_cases, len(cases)),
                        "chosen": chosen, "rule": "fewest steps within 2 % of the best RMSE"},
        "input_checks": {
            "nac_core_rim_ratio": [round(min(x["nac"]["core_rim_ratio"] for x in checks), 3),
                                   round(max(x["nac"]["core_rim_ratio"] for x in checks), 3)],
            "ac_core_rim_ratio": [round(min(x["ac"]["core_rim_ratio"] for x in checks), 3),
                                  round(max(x["ac"]["core_rim_ratio"] for x in checks), 3)],
            "nac_body_mean": [round(min(x["nac"]["body_mean"] for x in checks), 3),
                              round(max(x["nac"]["body_mean"] for x in checks), 3)],
            "ac_body_mean": [round(min(x["ac"]["body_mean"] for x in checks), 3),
                             round(max(x["ac"]["body_mean"] for x in checks), 3)]},
        "retention_index": None if not ri_pairs else {
            "regions": len(ri_pairs), "threshold_suv": LESION_SUV_THRESHOLD,
            "mean_abs_difference_points": round(float(np.mean([abs(a - b) for a, b in ri_pairs])), 2),
            "pcc": _pcc([a for a, _ in ri_pairs], [b for _, b in ri_pairs]),
            "how": "hot regions of the first AC PET (pet_ac.nii.gz); RI from the default method's (physics) delayed AC vs from "
                   "the simulated delayed AC (percentage points)"},
        "patient_check": pcheck,
        "per_case": rows, "seconds": round(time.monotonic() - t0, 1),
        "command": f"petdiffusion evaluate dual-timepoint-ac --cohort {args.cohort}",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(result, indent=1, default=str))
    if args.figures:
        result["figures"] = write_figures(out, voxels, retr)
        atomic_write_text(out / "results.json", json.dumps(result, indent=1, default=str))
    if args.record_into:
        cp = Path(args.record_into) / "card.json"
        card_json = json.loads(cp.read_text())
        card_json["evaluation"] = merged_evaluation(card_json.get("evaluation", {}), result)
        card_json.setdefault("matching", {})["same_patient_min_similarity"] = pcheck["floor"]
        atomic_write_text(cp, json.dumps(card_json, indent=2, default=str))
    lines = [f"{'method':<16} {'PSNR dB':>14} {'SSIM':>14} {'RMSE SUV':>14} {'liver PCC':>9} {'kidney PCC':>10}"]
    for m, t in table.items():
        oa = organ_agreement[m]
        lines.append(f"{m:<16} {t['psnr'][0]:7.2f}±{t['psnr'][1]:<5.2f} {t['ssim'][0]:7.3f}±{t['ssim'][1]:<5.3f} "
                     f"{t['rmse'][0]:7.3f}±{t['rmse'][1]:<5.3f} {str(oa['liver']['pcc']):>9} {str(oa['kidneys']['pcc']):>10}")
    lines.append(f"retrieval (mean over cases): {result['retrieval']['mean']}")
    lines.append(f"retrieval by motion: {motion_bins}")
    lines.append(f"steps curve RMSE: {curve_rmse} -> {chosen}")
    lines.append(f"retention index: {result['retention_index']}")
    lines.append(f"patient check: {pcheck}")
    lines.append(f"results: {out / 'results.json'}")
    return "\n".join(lines)
